import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stracePrefaultSpan, renderMemory, type MemoryResults } from '../../bench/memory.js';

test("bench memory: the prefault span runs from the first MADV_POPULATE_WRITE to the last one's end, across threads", () => {
  const log = [
    '12 10:00:00.000000 madvise(0x7f0000000000, 134217728, MADV_HUGEPAGE) = 0 <0.000010>',
    '12 10:00:01.000000 madvise(0x7f0000000000, 134217728, MADV_POPULATE_WRITE <unfinished ...>',
    '13 10:00:01.100000 madvise(0x7f0008000000, 134217728, MADV_POPULATE_WRITE) = 0 <0.200000>',
    '12 10:00:01.500000 <... madvise resumed>) = 0 <0.500000>',
    '12 10:00:02.000000 ioctl(20, VFIO_IOMMU_MAP_DMA, 0x7ffd) = 0 <0.300000>',
  ].join('\n');
  assert.equal(Math.round(stracePrefaultSpan(log)), 500);
  assert.equal(stracePrefaultSpan('12 10:00:02.000000 ioctl(20, VFIO_IOMMU_MAP_DMA, 0x7ffd) = 0 <0.300000>'), 0);
});

test("bench memory: rows per backing, per GiB, tsvmm's prefault counted in its ratio", () => {
  const r: MemoryResults = {
    date: '2026-11-27',
    mib: 512,
    rounds: 1,
    host: { thp: 'always [madvise] never', shmem: '[never]' },
    samples: [
      { backing: 'anonymous', vmm: 'tsvmm', round: 0, mapDmaMs: 100, prefaultMs: 50 },
      { backing: 'anonymous', vmm: 'qemu', round: 0, mapDmaMs: 100 },
      { backing: 'anonymous', vmm: 'null', round: 0, mapDmaMs: 150 },
    ],
  };
  const md = renderMemory(r);
  assert.match(md, /\| anonymous \| 300 \| 200 \| 200 \| 300 \| \*\*1\.50×\*\* \| 1\.00× \|/);
  assert.match(md, /\| memfd \| n\/a \| n\/a \| n\/a \| n\/a \| — \| — \|/);
});
