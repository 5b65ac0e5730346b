import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import type { SerialLine } from '../../bench/linux.js';
import type { Snapshot } from '../../bench/vmm.js';
import {
  cpuUsBetween,
  modeCmdline,
  parseViommuRun,
  pick,
  renderViommu,
  viommuCounts,
  viommuScript,
  type ViommuResults,
  type ViommuSample,
} from '../../bench/viommu.js';

const line = (t: number, text: string): SerialLine => ({ t, text, bytes: text.length + 2 });

function run(o: { seq?: boolean; rand?: boolean; second?: 'both' | 'seq' } = {}): SerialLine[] {
  return [
    line(800, '[    0.4] a kernel line'),
    line(1200, 'bench-linux: init'),
    line(1210, 'bench-linux: uptime 0.85 0.70'),
    line(3000, 'bench-viommu: iommu Default domain type: Translated  invalidation policy: strict mode '),
    ...(o.seq === false ? [line(3100, 'nvme-read error read: Input/output error')] : []),
    ...(o.seq === false ? [] : [line(6000, 'nvme-read seq bytes=314572800 usec=3000000 MBps=104.9')]),
    line(6010, 'bench-viommu: rand start'),
    ...(o.rand === false ? [] : [line(10000, 'nvme-read rand ios=6000 usec=3000100 iops=1999 jobs=1')]),
    ...(o.second ? [line(11000, 'bench-viommu: second pass')] : []),
    ...(o.second ? [line(14000, 'nvme-read seq bytes=629145600 usec=3000000 MBps=209.7')] : []),
    ...(o.second === 'both' ? [line(17000, 'nvme-read rand ios=9000 usec=3000000 iops=3000 jobs=1')] : []),
    line(18000, 'bench-viommu: done'),
  ];
}

test('parseViommuRun reads the boot, the guest domain and both nvme-read results', () => {
  const p = parseViommuRun(run());
  assert.deepEqual(p.problems, []);
  assert.equal(p.userspaceMs, 1200);
  assert.equal(p.guestUptimeMs, 850);
  assert.equal(p.seqMBps, 104.9);
  assert.equal(p.iops, 1999);
  assert.equal(p.randIos, 6000);
  assert.equal(p.randUs, 3000100);
  assert.equal(p.guestIommu, 'Default domain type: Translated  invalidation policy: strict mode');
});

test('parseViommuRun reads the second pass after its marker, and names what it lacks', () => {
  const none = parseViommuRun(run());
  assert.equal(none.seq2MBps, undefined, 'a run without a second pass has none');
  assert.equal(none.iops2, undefined);
  const p = parseViommuRun(run({ second: 'both' }));
  assert.deepEqual(p.problems, []);
  assert.equal(p.seqMBps, 104.9, 'the first pass stays the first');
  assert.equal(p.iops, 1999);
  assert.equal(p.seq2MBps, 209.7);
  assert.equal(p.iops2, 3000);
  const cut = parseViommuRun(run({ second: 'seq' }));
  assert.equal(cut.seq2MBps, 209.7);
  assert.equal(cut.iops2, undefined, "the first pass's rand result is not taken for the second's");
  assert.deepEqual(cut.problems, ['no second rand result']);
});

test('parseViommuRun names what is missing, with nvme-read error text', () => {
  const p = parseViommuRun(run({ seq: false, rand: false }).filter((l) => l.text !== 'bench-linux: init'));
  assert.equal(p.seqMBps, undefined);
  assert.equal(p.iops, undefined);
  assert.deepEqual(p.problems, [
    'no "bench-linux: init" line (did /init run?)',
    'no seq result: read: Input/output error',
    'no rand result',
  ]);
});

test('viommuCounts takes host.stats maps/unmaps and nothing else', () => {
  assert.deepEqual(viommuCounts({ host: { stats: { maps: 7, unmaps: 5, refused: 0 } } }), { maps: 7, unmaps: 5 });
  assert.equal(viommuCounts(null), undefined);
  assert.equal(viommuCounts({ host: { stats: { maps: '7', unmaps: 5 } } }), undefined);
  assert.equal(viommuCounts({ stats: { maps: 7, unmaps: 5 } }), undefined);
});

test('cpuUsBetween sums user (less guest) and system ticks over threads present in both snapshots', () => {
  const snap = (cpu: Record<string, [number, number, number]>) => ({ threadCpu: cpu }) as unknown as Snapshot;
  const a = snap({ '10 node': [100, 20, 60], '11 worker': [5, 1, 0] });
  const b = snap({ '10 node': [150, 30, 90], '11 worker': [7, 1, 0], '12 new': [50, 50, 0] });
  // main: (150-90) - (100-60) + (30-20) = 30 ticks; worker: 2; the new thread is not counted
  assert.equal(cpuUsBetween(a, b), 32 * 1e4);
});

test('modeCmdline and the guest script', () => {
  assert.match(modeCmdline('identity'), / iommu\.passthrough=1$/);
  assert.match(modeCmdline('strict'), / iommu\.strict=1$/);
  assert.doesNotMatch(modeCmdline('lazy'), /iommu\./);
  assert.equal(modeCmdline('none'), modeCmdline('lazy'));
  const s = viommuScript(5);
  assert.match(s, /^nvme-read seq \/dev\/nvme0n1 5$/m);
  assert.match(s, /^nvme-read rand \/dev\/nvme0n1 5$/m);
  assert.throws(() => viommuScript(0), /--seconds 0/);
  assert.throws(() => viommuScript(1.5), /--seconds 1.5/);
  const sh = spawnSync('sh', ['-n'], { input: s });
  assert.equal(sh.status, 0, sh.stderr.toString());
});

test('renderViommu: ratios per mode, bold where tsvmm is worse, request rate from the counters', () => {
  const base = { exitCode: 0, round: 0 };
  const s = (vmm: 'tsvmm' | 'qemu', mode: ViommuSample['mode'], x: Partial<ViommuSample>): ViommuSample => ({
    ...base,
    vmm,
    mode,
    ...x,
  });
  const r: ViommuResults = {
    date: '2026-12-05T00:00:00Z',
    where: 'a test',
    kernel: '6.12',
    qemu: 'QEMU version 7.2',
    seconds: 3,
    rounds: 1,
    samples: [
      s('tsvmm', 'none', { seqMBps: 100, iops: 2000, randIos: 6000, userspaceMs: 9000 }),
      s('qemu', 'none', { seqMBps: 100, iops: 2000, randIos: 6000, userspaceMs: 10000 }),
      s('tsvmm', 'strict', {
        seqMBps: 50,
        iops: 1000,
        randIos: 3000,
        randUs: 3_000_000,
        maps: 3000,
        unmaps: 3000,
        cpuUs: 600_000,
      }),
      s('qemu', 'strict', { seqMBps: 80, iops: 1000, randIos: 3000 }),
      s('qemu', 'lazy', { error: 'exit 1: virtio-iommu-pci: boom' }),
    ],
  };
  const md = renderViommu(r);
  assert.match(md, /\| nvme sequential read, none \| MB\/s \| higher \| 100\.0 \| 100\.0 \| 1\.00× \|/);
  assert.match(md, /\| nvme sequential read, strict \| MB\/s \| higher \| 50\.0 \| 80\.0 \| \*\*0\.63×\*\* \|/);
  assert.match(md, /\| Linux launch → userspace, no vIOMMU \| ms \| lower \| 9,000 \| 10,000 \| 0\.90× \|/);
  // 6000 requests over 3 s: 2000/s, 2 per read, 100 µs of CPU each
  assert.match(md, /\| strict \| 3,000 \| 3,000 \| 2,000 \| 2\.00 \| 100\.0 \| 1,000 \|/);
  assert.match(md, /- qemu lazy round 1: exit 1: virtio-iommu-pci: boom/);
  assert.equal(
    pick(r, 'qemu', 'lazy', (x) => x.seqMBps),
    undefined,
  );
});

test('renderViommu lists hand-written notes and nothing when there are none', () => {
  const r: ViommuResults = {
    date: '2026-12-05T00:00:00Z',
    where: 'w',
    kernel: 'k',
    qemu: 'q',
    seconds: 3,
    rounds: 0,
    samples: [],
  };
  assert.doesNotMatch(renderViommu(r), /Notes:/);
  assert.match(renderViommu({ ...r, notes: ['noisy machine'] }), /\nNotes:\n\n- noisy machine\n$/);
});

test('the in-process request bench drives the real request path: every request answered, nothing left mapped', async () => {
  const { runInProcess } = await import('../../bench/viommu-inprocess.js');
  const dist = new URL('../../', import.meta.url).pathname;
  const pairs = await runInProcess('pairs', 50, dist);
  assert.match(pairs[0]!, /^pairs: \d+\.\d+ µs per request \(100\)$/);
  assert.match(pairs[1]!, /^host calls 100; CPU: main thread \d+ ms, other threads \d+ ms$/, 'a map and an unmap each');
  const seq = await runInProcess('seq', 2, dist);
  assert.match(seq[0]!, /^seq: \d+\.\d+ µs per request \(258\)$/);
  assert.match(seq[1]!, /^host calls 258;/, '128 maps and one unmap of the run per round');
});
