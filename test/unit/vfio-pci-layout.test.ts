import { test } from 'node:test';
import assert from 'node:assert/strict';
import { barMmapRanges, msixHole } from '../../hw/vfio-pci.js';

const nvme = { capOffset: 0x40, vectors: 65, tableBar: 0, tableOffset: 0x2000, pbaBar: 0, pbaOffset: 0x3000 };

test("QEMU's MSI-X hole: table start rounded down, table end rounded up, to pages", () => {
  assert.deepEqual(msixHole(nvme), { start: 0x2000, end: 0x3000 });
  assert.deepEqual(msixHole({ ...nvme, tableOffset: 0x2800, vectors: 200 }), { start: 0x2000, end: 0x4000 });
  assert.deepEqual(msixHole({ ...nvme, tableOffset: 0, vectors: 5 }), { start: 0, end: 0x1000 });
});

test('BAR mmaps: 0, 1 or 2 pieces around the hole; whole BAR without one', () => {
  assert.deepEqual(barMmapRanges(0x4000, undefined, msixHole(nvme)), [
    { offset: 0, size: 0x2000 },
    { offset: 0x3000, size: 0x1000 },
  ]);
  assert.deepEqual(barMmapRanges(0x4000, undefined, { start: 0, end: 0x1000 }), [{ offset: 0x1000, size: 0x3000 }]);
  assert.deepEqual(barMmapRanges(0x4000, undefined, { start: 0, end: 0x4000 }), []);
  assert.deepEqual(barMmapRanges(0x100000, undefined, undefined), [{ offset: 0, size: 0x100000 }]);
});

test('sparse mmap areas are respected and trimmed to whole pages', () => {
  const sparse = [
    { offset: 0, size: 0x1800 },
    { offset: 0x3000, size: 0x1000 },
  ];
  assert.deepEqual(barMmapRanges(0x4000, sparse, undefined), [
    { offset: 0, size: 0x1000 },
    { offset: 0x3000, size: 0x1000 },
  ]);
  assert.deepEqual(barMmapRanges(0x4000, sparse, { start: 0x3000, end: 0x4000 }), [{ offset: 0, size: 0x1000 }]);
});

test('a sub-page BAR (grown to a page) maps its one page', () => {
  assert.deepEqual(barMmapRanges(0x1000, [{ offset: 0, size: 0x100 }], undefined), []);
  assert.deepEqual(barMmapRanges(0x1000, undefined, undefined), [{ offset: 0, size: 0x1000 }]);
});
