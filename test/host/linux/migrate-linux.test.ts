// Runs INSIDE the test host (debian kernel): live migration of a Linux guest (the test host's Debian kernel) between
// two tsvmm processes, over a unix socket and over TCP on the loopback, while the guest's dirty-checksum rewrites
// a 64 MiB buffer pass after pass and checks each pass still holds the previous one's words. Every pass line the
// source and the destination printed together is the chain recomputed here, consecutive from pass 1: a page the
// copy missed, a pass lost or run twice would show. The source stays (postmigrate) until the destination runs.
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  freeTcpPort,
  handOver,
  killChildren,
  linuxConfig,
  migrationEnd,
  qmp,
  show,
  startLivePair,
  stop,
  until,
  TEST_MS,
} from '../../helpers/linux-migration.js';
import { checkDirtyChecksum, dirtyChecksumChainNative, parseDirtyChecksum } from '../../helpers/guest-programs.js';

const MiB = 2 ** 20;
const BUFFER = 64 * MiB;
const dir = mkdtempSync(join(tmpdir(), 'tsvmm-mig-linux-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
afterEach(killChildren);

const passes = (s: string) => parseDirtyChecksum(s).passes;

async function liveMigration(kind: 'unix' | 'tcp'): Promise<void> {
  const config = linuxConfig(`mig-linux-${kind}`, {
    memory: '256M',
    programs: ['dirty-checksum'],
    script: `dirty-checksum -p 0 ${BUFFER}`,
  });
  const uri = kind === 'unix' ? `unix:${join(dir, 'mig.sock')}` : `tcp:127.0.0.1:${await freeTcpPort()}`;
  const dstQmp = join(dir, `${kind}-dst.qmp`),
    srcQmp = join(dir, `${kind}-src.qmp`);
  const { src, dst, both } = await startLivePair({ uri, src: config, dst: config, srcQmp, dstQmp });
  try {
    await until('the source guest to print 3 passes', () => passes(src.out()).length >= 3, both);
    const q = await qmp(srcQmp);
    const before = passes(src.out()).length;
    assert.deepEqual(await q.call('migrate', { uri }), { return: {} }, show('source', src));
    const end = await migrationEnd(q);
    const info = (await q.call('query-migrate')).return as Record<string, any>;
    assert.equal(end, 'completed', `${JSON.stringify(info)}\n${show('source', src)}\n${show('destination', dst)}`);
    // Pre-copy: RAM went in passes while the guest ran (and rewrote the buffer), then the rest after the stop.
    assert.ok(info.ram['dirty-sync-count'] >= 2, JSON.stringify(info));
    assert.ok(passes(src.out()).length > before, 'the guest ran on (and dirtied its buffer) while its RAM went');
    assert.equal(info.ram.total, 256 * MiB);
    assert.doesNotMatch(src.err(), /no dirty log/, show('source', src));

    // The source waits, stopped, until the destination runs; the destination goes on with the next pass.
    const srcLast = passes(src.out()).at(-1)!.n;
    await until(
      'the destination to print 3 passes after the source',
      () => passes(dst.out()).filter((p) => p.n > srcLast).length >= 3,
      both,
    );
    const d = await handOver(src, q, dstQmp);

    assert.doesNotMatch(dst.out(), /tsvmm-init: running/, 'the destination did not boot the guest again');
    const all = src.out() + dst.out();
    const seen = checkDirtyChecksum(all, {
      from: 1,
      expect: dirtyChecksumChainNative(BUFFER, passes(all).at(-1)!.n),
    });
    console.log(
      `# ${kind}: ${seen} passes (source 1..${srcLast}), ${info.ram['dirty-sync-count']} RAM passes, ` +
        `${(info.ram.transferred / MiB).toFixed(0)} MiB sent, downtime ${info.downtime} ms, total ${info['total-time']} ms`,
    );
    await stop(dst, d);
  } finally {
    await killChildren();
  }
}

test(
  'live migration of a Linux guest over a unix socket while dirty-checksum rewrites 64 MiB: the chained sums continue on the destination, none lost or repeated',
  { timeout: TEST_MS },
  () => liveMigration('unix'),
);

test('the same over TCP on the loopback', { timeout: TEST_MS }, () => liveMigration('tcp'));
