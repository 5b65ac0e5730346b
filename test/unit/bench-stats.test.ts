// The benchmark report's pure logic: summaries, ratios, the markdown table, and the parsers of
// what the guest and strace print. (The benchmarks themselves run with `npm run bench`, not here.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { summarize, ratio, isWorse, renderMarkdown, toRow, type MetricResult } from '../../bench/stats.js';
import { parseDone, straceMapDma, guestStatus } from '../../bench/vmm.js';
import { order } from '../../bench/run.js';
import { withinRounds, type BenchResults, type LaunchRecord } from '../../bench/metrics.js';

test('summarize: median of odd and even counts, min, max; non-finite samples are dropped', () => {
  assert.deepEqual(summarize([3, 1, 2]), { median: 2, min: 1, max: 3, n: 3 });
  assert.deepEqual(summarize([4, 1, 3, 2]), { median: 2.5, min: 1, max: 4, n: 4 });
  assert.deepEqual(summarize([5, NaN, Infinity]), { median: 5, min: 5, max: 5, n: 1 });
  assert.equal(summarize([]), undefined);
});

test('ratio and direction: 0/0 is equal, x/0 infinite, worse means past 5 % in the bad direction', () => {
  assert.equal(ratio(0, 0), 1);
  assert.equal(ratio(1, 0), Infinity);
  assert.equal(ratio(undefined, 2), undefined);
  assert.equal(ratio(3, 2), 1.5);
  assert.equal(isWorse(1.5, 'lower'), true);
  assert.equal(isWorse(1.5, 'higher'), false);
  assert.equal(isWorse(0.5, 'higher'), true);
  assert.equal(isWorse(1.04, 'lower'), false);
  assert.equal(isWorse(undefined, 'lower'), false);
});

test('rows and markdown: medians with ranges, ratios, bold when worse, n/a footnotes, notes for worse rows only', () => {
  const results: MetricResult[] = [
    {
      def: { id: 'a', label: 'launch', unit: 'ms', better: 'lower', digits: 0, whyWorse: 'node starts slowly' },
      samples: { tsvmm: [300, 100, 200], qemu: [100, 100, 100], null: [10] },
    },
    {
      def: { id: 'b', label: 'rate', unit: '1/s', better: 'higher', digits: 0, whyWorse: 'never shown' },
      samples: { tsvmm: [2000], qemu: [1000], null: [4000] },
    },
    {
      def: { id: 'c', label: 'wake-ups', unit: 'per irq', better: 'lower', digits: 2, na: { null: 'one thread' } },
      samples: { tsvmm: [0, 0], qemu: [0], null: [] },
    },
    {
      def: { id: 'd', label: 'failed one', unit: 'x', better: 'lower', digits: 0 },
      samples: { tsvmm: [], qemu: [1], null: [1] },
    },
  ];
  const row = toRow(results[0]!);
  assert.equal(row.tsvmm!.median, 200);
  assert.equal(row.ratioQemu, 2);
  assert.equal(row.ratioNull, 20);
  assert.equal(row.worseThanQemu, true);
  assert.equal(toRow(results[1]!).worseThanQemu, false);
  assert.equal(toRow(results[2]!).ratioQemu, 1);
  const md = renderMarkdown(results, { rounds: '3 rounds' });
  assert.match(md, /\| launch \| ms \| lower \| 200 \(100–300\) \| 100 \| 10 \| \*\*2\.00×\*\* \| \*\*20\.0×\*\* \|/);
  assert.match(md, /\| rate \| 1\/s \| higher \| 2,000 \| 1,000 \| 4,000 \| 2\.00× \| \*\*0\.50×\*\* \|/);
  assert.match(md, /\| wake-ups \| per irq \| lower \| 0\.00 \| 0\.00 \| n\/a\[\^1\] \| 1\.00× \| — \|/);
  assert.match(md, /\| failed one \| x \| lower \| failed \| 1 \| 1 \| — \| — \|/);
  assert.match(md, /\[\^1\]: one thread/);
  assert.match(md, /Medians over 3 rounds/);
  assert.match(md, /- \*\*launch\*\* \(2\.00×\): node starts slowly/);
  assert.doesNotMatch(md, /never shown/);
});

test("parsers: the guest's done line, strace MAP_DMA calls on container fds only, debug-exit statuses", () => {
  assert.deepEqual(parseDone('bench pio done n=14688 ticks=1:779020048'), {
    phase: 'pio',
    n: 14688,
    ticks: 2 ** 32 + 779020048,
  });
  assert.equal(parseDone('bench pio armed'), undefined);
  const log = [
    '186   ioctl(5, VFIO_SET_IOMMU, 0x3)     = 0 <0.000387>',
    '186   ioctl(5, VFIO_DEVICE_PCI_HOT_RESET or VFIO_IOMMU_MAP_DMA, 0x7fffaf203660) = 0 <0.035411>',
    '186   ioctl(5, VFIO_DEVICE_PCI_HOT_RESET or VFIO_IOMMU_MAP_DMA, 0x7fffaf203660) = -1 EBUSY (Device or resource busy) <0.000100>',
    '186   ioctl(7, VFIO_DEVICE_PCI_HOT_RESET or VFIO_IOMMU_MAP_DMA, 0x7fffaf203660) = 0 <1.0>',
    '186   ioctl(5, VFIO_DEVICE_QUERY_GFX_PLANE or VFIO_IOMMU_UNMAP_DMA, 0x7ffd058bd6d0) = 0 <0.156871>',
  ].join('\n');
  const m = straceMapDma(log);
  assert.equal(m.calls, 2);
  assert.equal(m.failed, 1);
  assert.ok(Math.abs(m.seconds - 0.035511) < 1e-9);
  assert.equal(guestStatus('qemu', 1), 0);
  assert.equal(guestStatus('qemu', 3), 1);
  assert.equal(guestStatus('tsvmm', 0), 0);
  assert.equal(guestStatus('null', null), null);
});

test('interleaving: every VMM runs in every position across rounds', () => {
  assert.deepEqual(order(0), ['tsvmm', 'qemu', 'null']);
  assert.deepEqual(order(1), ['qemu', 'null', 'tsvmm']);
  assert.deepEqual(order(2), ['null', 'tsvmm', 'qemu']);
});

test('withinRounds: tsvmm ÷ QEMU per round (main or DMA launches), over the rounds; a round missing either VMM is left out', () => {
  const rec = (vmm: 'tsvmm' | 'qemu' | 'null', round: number, launch?: number): LaunchRecord => ({
    kind: 'main',
    vmm,
    memMiB: 256,
    round,
    values: launch === undefined ? {} : { launch },
    info: {},
  });
  const r = {
    roundsDone: 4,
    dmaRoundsDone: 1,
    launches: [
      rec('tsvmm', 0, 900),
      rec('qemu', 0, 1000),
      rec('null', 0, 100),
      rec('qemu', 1, 1000),
      rec('tsvmm', 1, 1500),
      rec('tsvmm', 2, 1100),
      rec('qemu', 2, 1000),
      rec('tsvmm', 3, 800), // QEMU's launch failed this round
      rec('qemu', 3),
      { ...rec('tsvmm', 0), kind: 'dma', values: { dmaMs1024: 600 } },
      { ...rec('qemu', 0), kind: 'dma', values: { dmaMs256: 100 } },
      { ...rec('qemu', 0), kind: 'dma', values: { dmaMs1024: 500 } },
    ],
  } as unknown as BenchResults;
  const w = withinRounds(r, 'launch')!;
  assert.equal(w.n, 3);
  assert.ok(Math.abs(w.median - 1.1) < 1e-9);
  assert.ok(Math.abs(w.min - 0.9) < 1e-9 && Math.abs(w.max - 1.5) < 1e-9);
  assert.equal(withinRounds(r, 'private'), undefined);
  // DMA launches pair by round and size; the main launches' values are not theirs.
  assert.deepEqual(withinRounds(r, 'dmaMs1024'), { median: 1.2, min: 1.2, max: 1.2, n: 1 });
});
