import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ACPI_TABLES_ADDR, buildAcpiTables, viotPciRanges, viotTable, type AcpiOptions } from '../../hw/acpi.js';

const sum = (b: Uint8Array) => b.reduce((s, x) => (s + x) & 0xff, 0);
const BASE: AcpiOptions = { cpus: 1, pciMmio32: { base: 0xc0000000, end: 0xfec00000 }, pciIrqs: [] };

test('VIOT: header, virtio-pci IOMMU node and PCI range nodes as ACPI 6.4 lays them out', () => {
  const t = viotTable({
    iommu: { segment: 0, bdf: 0x0018 },
    ranges: [
      { segment: 0, bdfStart: 0x0008, bdfEnd: 0x0008, endpointStart: 0x0008 },
      { segment: 0, bdfStart: 0x0100, bdfEnd: 0x01ff, endpointStart: 0x0100 },
    ],
  });
  const v = new DataView(t.buffer);
  assert.equal(String.fromCharCode(...t.subarray(0, 4)), 'VIOT');
  assert.equal(v.getUint32(4, true), t.length);
  assert.equal(t.length, 36 + 12 + 16 + 2 * 24);
  assert.equal(t[8], 0, 'revision 0');
  assert.equal(sum(t), 0, 'checksum');
  assert.equal(v.getUint16(36, true), 3, 'node count');
  assert.equal(v.getUint16(38, true), 48, 'node offset');
  assert.deepEqual([...t.subarray(40, 48)], [0, 0, 0, 0, 0, 0, 0, 0], 'reserved');
  // Virtio-pci IOMMU node: type 3, length 16, segment, BDF, 8 reserved bytes.
  assert.deepEqual([...t.subarray(48, 64)], [3, 0, 16, 0, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  // PCI range nodes: type 1, length 24, endpoint start, segment start/end, BDF start/end, output node, 6 reserved.
  assert.deepEqual([...t.subarray(64, 88)], [1, 0, 24, 0, 8, 0, 0, 0, 0, 0, 0, 0, 8, 0, 8, 0, 48, 0, 0, 0, 0, 0, 0, 0]);
  assert.equal(v.getUint32(88 + 4, true), 0x100);
  assert.equal(v.getUint16(88 + 12, true), 0x100);
  assert.equal(v.getUint16(88 + 14, true), 0x1ff);
  assert.equal(v.getUint16(88 + 16, true), 48);
  assert.throws(() =>
    viotTable({ iommu: { segment: 0, bdf: 8 }, ranges: [{ segment: 0, bdfStart: 9, bdfEnd: 8, endpointStart: 0 }] }),
  );
});

test('VIOT: listed in the RSDT and XSDT only when a vIOMMU is configured', () => {
  const plain = buildAcpiTables(BASE);
  assert.equal(plain.tables.VIOT, undefined);
  const withViot = buildAcpiTables({
    ...BASE,
    viot: { iommu: { segment: 0, bdf: 0x10 }, ranges: [{ segment: 0, bdfStart: 8, bdfEnd: 8, endpointStart: 8 }] },
  });
  const at = (addr: number) => addr - ACPI_TABLES_ADDR;
  const b = withViot.bytes;
  const v = new DataView(b.buffer, b.byteOffset);
  const viotAt = withViot.tables.VIOT!;
  assert.ok(viotAt);
  assert.equal(String.fromCharCode(...b.subarray(at(viotAt), at(viotAt) + 4)), 'VIOT');
  const len = v.getUint32(at(viotAt) + 4, true);
  assert.equal(sum(b.subarray(at(viotAt), at(viotAt) + len)), 0);
  for (const [sig, width] of [
    ['RSDT', 4],
    ['XSDT', 8],
  ] as const) {
    const t = withViot.tables[sig]!;
    const tl = v.getUint32(at(t) + 4, true);
    assert.equal(sum(b.subarray(at(t), at(t) + tl)), 0, `${sig} checksum`);
    const entries: number[] = [];
    for (let o = 36; o < tl; o += width)
      entries.push(width === 4 ? v.getUint32(at(t) + o, true) : Number(v.getBigUint64(at(t) + o, true)));
    assert.deepEqual(entries, [withViot.tables.FACP, withViot.tables.APIC, viotAt], `${sig} lists the VIOT`);
  }
  // The FADT still points at the DSDT, which moved up past the VIOT.
  const fadt = at(withViot.tables.FACP!);
  assert.equal(v.getUint32(fadt + 40, true), withViot.tables.DSDT);
  assert.ok(withViot.tables.DSDT! > viotAt);
  assert.equal(String.fromCharCode(...b.subarray(at(withViot.tables.DSDT!), at(withViot.tables.DSDT!) + 4)), 'DSDT');
});

test('VIOT: endpoints become PCI range nodes, one per run of consecutive BDFs', () => {
  assert.deepEqual(viotPciRanges([]), []);
  assert.deepEqual(viotPciRanges([0x11, 0x08, 0x10, 0x10, 0x20]), [
    { segment: 0, bdfStart: 0x08, bdfEnd: 0x08, endpointStart: 0x08 },
    { segment: 0, bdfStart: 0x10, bdfEnd: 0x11, endpointStart: 0x10 },
    { segment: 0, bdfStart: 0x20, bdfEnd: 0x20, endpointStart: 0x20 },
  ]);
});
