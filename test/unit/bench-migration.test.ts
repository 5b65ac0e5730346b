import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  medianOf,
  migrateStats,
  parsePasses,
  renderMigration,
  renderMtty,
  valueOf,
  type MigrationResults,
  type MigrationSample,
} from '../../bench/migration.js';

test('parsePasses: whole pass lines (CR/LF from the tty) in order, partial lines and other text ignored', () => {
  const text =
    'dirty-checksum start words=8388608 passes=0\r\npass 1 sum 0x1f\r\npass 2 sum 0xab\r\nxpass 9 sum 0x1\npass 3 sum 0x';
  assert.deepEqual(parsePasses(text), { passes: [1, 2], errors: 0 });
  const bad =
    'pass 4 sum 0x2\ndirty-checksum error pass 5 word 3 got 0x1 want 0x2\ndirty-checksum error pass 5 bad=1\n';
  assert.deepEqual(parsePasses(bad), { passes: [4], errors: 2 });
});

test('migrateStats: QEMU-shaped query-migrate fields, missing ones undefined', () => {
  assert.deepEqual(
    migrateStats({
      status: 'completed',
      downtime: 42,
      'total-time': 1234,
      'setup-time': 3,
      ram: { transferred: 1000, 'dirty-sync-count': 4 },
    }),
    { status: 'completed', downtimeMs: 42, totalMs: 1234, setupMs: 3, ramBytes: 1000, syncs: 4 },
  );
  assert.deepEqual(migrateStats({ status: 'active' }), {
    status: 'active',
    downtimeMs: undefined,
    totalMs: undefined,
    setupMs: undefined,
    ramBytes: undefined,
    syncs: undefined,
  });
});

const sample = (vmm: 'tsvmm' | 'qemu', round: number, o: Partial<MigrationSample>): MigrationSample => ({
  vmm,
  round,
  errors: [],
  ...o,
});

const results: MigrationResults = {
  date: '2026-12-05T00:00:00Z',
  where: 'inside the test host',
  kernel: '6.12',
  qemu: 'QEMU version 7.2',
  memMiB: 512,
  dirtyMiB: 64,
  rounds: 2,
  samples: [
    sample('tsvmm', 0, { downtimeMs: 100, totalMs: 3000, saveMs: 400, restoreMs: 500, coldBootMs: 5000 }),
    sample('qemu', 0, { downtimeMs: 50, totalMs: 2000, saveMs: 1000, restoreMs: 800, coldBootMs: 4000 }),
    sample('tsvmm', 1, { downtimeMs: 300, totalMs: 5000, errors: ['restore: timed out'] }),
    sample('qemu', 1, { downtimeMs: 70, totalMs: 2200, saveMs: 1200 }),
  ],
};

test('valueOf and medianOf: save time scaled to a GiB of guest RAM, medians over the samples that have the value', () => {
  assert.equal(valueOf(results.samples[0]!, 'saveMsPerGiB', 512), 800);
  assert.equal(valueOf(results.samples[2]!, 'saveMsPerGiB', 512), undefined);
  assert.equal(medianOf(results, 'tsvmm', 'downtimeMs'), 200);
  assert.equal(medianOf(results, 'qemu', 'saveMsPerGiB'), 2200);
  assert.equal(medianOf(results, 'tsvmm', 'restoreMs'), 500);
});

test('renderMigration: ratios tsvmm ÷ QEMU, restore ÷ cold boot, problems listed, mtty row said missing', () => {
  const md = renderMigration(results);
  assert.match(md, /\| Live migration over unix: downtime \(ms\) \| 200 \| 60 \| 3\.33× \| ≤ 1\.0× \|/);
  assert.match(md, /\| Live migration over unix: total time \(ms\) \| 4000 \| 2100 \| 1\.90× \|/);
  assert.match(md, /ms per GiB of guest RAM \| 800 \| 2200 \| 0\.36× \|/);
  assert.match(md, /\| Restore ÷ cold boot, tsvmm \| 0\.10× \| 0\.20× \(QEMU's own\)/);
  assert.match(md, /tsvmm round 2: .*PROBLEMS: restore: timed out/);
  assert.match(md, /Not measured here: migration with mtty/);
  const none = renderMigration({ ...results, samples: [] });
  assert.match(none, /\| Live migration over unix: downtime \(ms\) \| — \| — \| — \|/);
});

test('renderMtty: the device share is the downtime with mtty less the one without; a failed sample says why', () => {
  const m = {
    date: '2026-12-05T00:00:00Z',
    where: 'inside the test host',
    memMiB: 32,
    samples: [
      { device: 'none' as const, downtimeMs: 20, totalMs: 300, ramBytes: 2 ** 21, continued: true },
      { device: 'mtty' as const, downtimeMs: 80, totalMs: 500, vfioBytes: 400, precopyBytes: 100, continued: true },
    ],
  };
  const md = renderMtty(m).join('\n');
  assert.match(md, /\| no device \| 20 \| 300 \| 2\.0 \| — \(—\) \| yes \|/);
  assert.match(md, /\| mtty assigned \| 80 \| 500 \| — \| 400 \(100\) \| yes \|/);
  assert.match(md, /with mtty − without\): 60 ms of 80 \(75 %\)/);
  const failed = renderMtty({ ...m, samples: [{ device: 'mtty', continued: false, error: 'migrate: failed' }] }).join(
    '\n',
  );
  assert.match(failed, /\| mtty assigned \| — \| — \| — \| — \(—\) \| no — migrate: failed \|/);
  assert.match(failed, /: —\. Not split further/);
  assert.match(renderMtty(undefined).join('\n'), /Not measured here/);
});
