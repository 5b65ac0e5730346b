// Minimal ACPI tables: RSDP → RSDT/XSDT → FADT (→ DSDT) and MADT. The FADT is hardware-reduced
// (ACPI 5+, as Firecracker and cloud-hypervisor use): no PM1 register blocks, no SCI, no PIT or
// 8259 for Linux to set up; power-off is a write of SLP_TYP|SLP_EN to the sleep control register
// (hw/acpi-pm.ts), reboot a write of 6 to the reset register 0xCF9 (hw/pci-host.ts). The MADT
// lists the local APICs and the IOAPIC. The DSDT, in hand-assembled AML, has the PCI root bridge
// (PNP0A03, conf1, its bus/IO/MMIO windows in _CRS, INTx → IOAPIC GSI in _PRT), COM1 and \_S5_.
// (Linux ignores the MP table when ACPI is on; the MP table is for `acpi=off` guests.) With a
// vIOMMU the VIOT names the virtio-iommu and the PCI endpoints behind it (Linux's ACPI_VIOT).
import {
  amlBuffer,
  amlCall,
  amlDevice,
  amlInteger,
  amlName,
  amlPackage,
  amlScope,
  cat,
  dwordMemory,
  eisaId,
  endTag,
  ioPort,
  irqNoFlags,
  le16,
  le32,
  wordSpace,
} from './aml.js';
import { gedAml, GED_EVENT_PCI_HOTPLUG, GED_PORT, GED_PORT_LEN } from './ged.js';
import { pciHotplugAml, pciSlotsAml, PCI_HOTPLUG_PORT, PCI_HOTPLUG_PORT_LEN } from './pci-hotplug.js';
export { amlBuffer, amlInteger, amlName, amlPackage, amlPkgLength, eisaId } from './aml.js';

export const ACPI_TABLES_ADDR = 0xe0000;
export const ACPI_SLEEP_CONTROL_PORT = 0x600,
  ACPI_SLEEP_STATUS_PORT = 0x601;
export const ACPI_RESET_PORT = 0xcf9,
  ACPI_RESET_VALUE = 0x06;
/** SLP_TYP of \_S5_ in the DSDT; the sleep control register sees it in bits 2-4. */
export const ACPI_S5_SLP_TYP = 5;
export const ACPI_SLP_EN = 0x20;

const OEM_ID = 'TSVMM ',
  OEM_TABLE_ID = 'TSVMMVM ',
  CREATOR = 'TSVM';
const FADT_LEN = 276,
  HEADER_LEN = 36;
const FADT_F_PWR_BUTTON = 1 << 4,
  FADT_F_SLP_BUTTON = 1 << 5,
  FADT_F_RESET_REG_SUP = 1 << 10,
  FADT_F_HW_REDUCED = 1 << 20;
/** IAPC_BOOT_ARCH: bit 2 no VGA, bit 5 no CMOS RTC (no 8042 either: bit 1 clear keeps Linux from probing one). */
const IAPC_NO_VGA = 1 << 2,
  IAPC_NO_CMOS_RTC = 1 << 5;

function sum(b: Uint8Array): number {
  let s = 0;
  for (const x of b) s = (s + x) & 0xff;
  return s;
}

function ascii(buf: Uint8Array, at: number, s: string): void {
  for (let i = 0; i < s.length; i++) buf[at + i] = s.charCodeAt(i);
}

/** A table with its standard 36-byte header filled in and the checksum fixed. */
function table(sig: string, revision: number, body: Uint8Array): Uint8Array {
  const t = new Uint8Array(HEADER_LEN + body.length);
  const v = new DataView(t.buffer);
  ascii(t, 0, sig);
  v.setUint32(4, t.length, true);
  t[8] = revision;
  ascii(t, 10, OEM_ID);
  ascii(t, 16, OEM_TABLE_ID);
  v.setUint32(24, 1, true);
  ascii(t, 28, CREATOR);
  v.setUint32(32, 1, true);
  t.set(body, HEADER_LEN);
  t[9] = (0x100 - sum(t)) & 0xff;
  return t;
}

/** Generic Address Structure for an 8-bit System I/O register. */
function gasIo8(v: DataView, at: number, port: number): void {
  v.setUint8(at, 1); // System I/O
  v.setUint8(at + 1, 8); // bit width
  v.setUint8(at + 2, 0); // bit offset
  v.setUint8(at + 3, 1); // byte access
  v.setBigUint64(at + 4, BigInt(port), true);
}

/** AML for `Name (_S5_, Package (4) { 5, 0, 0, 0 })`. */
export function s5Aml(slpTyp = ACPI_S5_SLP_TYP): Uint8Array {
  // NameOp '_S5_' PackageOp PkgLength(7) NumElements(4) BytePrefix(slpTyp) Zero Zero Zero
  return Uint8Array.from([0x08, 0x5f, 0x53, 0x35, 0x5f, 0x12, 0x07, 0x04, 0x0a, slpTyp, 0x00, 0x00, 0x00]);
}

export interface AcpiPciIrq {
  slot: number;
  /** 1 = INTA# ... 4 = INTD# */ pin: number;
  gsi: number;
}

export interface AcpiOptions {
  cpus: number;
  /** PCI memory window below 4 GiB (where BARs are placed). */
  pciMmio32: { base: number; end: number };
  pciIrqs: AcpiPciIrq[];
  /**
   * Root-bus slots the guest is told about through ACPI hot-plug (hw/pci-hotplug.ts), with the
   * Generic Event Device and power button (hw/ged.ts). Absent: no hot-plug, no power button.
   */
  hotplugSlots?: number[];
  /** A virtio-iommu and the PCI endpoints it translates (the VIOT table); absent: no VIOT. */
  viot?: ViotOptions;
}

/** VIOT (ACPI 6.4+, Virtual I/O Translation Table): which paravirtual IOMMU translates which endpoints. */
export interface ViotOptions {
  /** The virtio-pci IOMMU's PCI segment and BDF (bus << 8 | devfn). */
  iommu: { segment: number; bdf: number };
  /**
   * PCI endpoints behind it: an inclusive BDF range per node (one segment each); an endpoint's
   * ID in the virtio-iommu's requests is endpointStart + (its BDF - bdfStart).
   */
  ranges: { segment: number; bdfStart: number; bdfEnd: number; endpointStart: number }[];
}

export const VIOT_NODE_OFFSET = 48,
  VIOT_NODE_PCI_RANGE = 1,
  VIOT_NODE_VIRTIO_PCI_IOMMU = 3;

/**
 * The VIOT's body (after the header): node count and offset, then the virtio-pci IOMMU node
 * (type 3, 16 bytes) and one PCI range node (type 1, 24 bytes) per range, whose output node is
 * the IOMMU node's offset from the start of the table.
 */
export function viotBody(o: ViotOptions): Uint8Array {
  const count = 1 + o.ranges.length;
  const b = new Uint8Array(VIOT_NODE_OFFSET - HEADER_LEN + 16 + 24 * o.ranges.length);
  const v = new DataView(b.buffer);
  v.setUint16(0, count, true);
  v.setUint16(2, VIOT_NODE_OFFSET, true);
  let at = VIOT_NODE_OFFSET - HEADER_LEN;
  b[at] = VIOT_NODE_VIRTIO_PCI_IOMMU;
  v.setUint16(at + 2, 16, true);
  v.setUint16(at + 4, o.iommu.segment, true);
  v.setUint16(at + 6, o.iommu.bdf, true);
  at += 16;
  for (const r of o.ranges) {
    if (r.bdfStart > r.bdfEnd || r.bdfEnd > 0xffff)
      throw new RangeError(`VIOT: bad BDF range ${r.bdfStart}-${r.bdfEnd}`);
    b[at] = VIOT_NODE_PCI_RANGE;
    v.setUint16(at + 2, 24, true);
    v.setUint32(at + 4, r.endpointStart, true);
    v.setUint16(at + 8, r.segment, true);
    v.setUint16(at + 10, r.segment, true);
    v.setUint16(at + 12, r.bdfStart, true);
    v.setUint16(at + 14, r.bdfEnd, true);
    v.setUint16(at + 16, VIOT_NODE_OFFSET, true);
    at += 24;
  }
  return b;
}

/** PCI range nodes for a set of endpoints on segment 0 (BDFs): one per run of consecutive BDFs, IDs = BDFs. */
export function viotPciRanges(bdfs: Iterable<number>): ViotOptions['ranges'] {
  const sorted = [...new Set(bdfs)].sort((a, b) => a - b);
  const out: ViotOptions['ranges'] = [];
  for (const b of sorted) {
    const last = out.at(-1);
    if (last && last.bdfEnd + 1 === b) last.bdfEnd = b;
    else out.push({ segment: 0, bdfStart: b, bdfEnd: b, endpointStart: b });
  }
  return out;
}

/** The whole VIOT table (header and checksum). */
export function viotTable(o: ViotOptions): Uint8Array {
  return table('VIOT', 0, viotBody(o));
}

/** The DSDT's AML: \_SB.PCI0 (PNP0A03 with _CRS and _PRT) and \_S5_. */
export function dsdtAml(o: AcpiOptions): Uint8Array {
  const crs = cat(
    wordSpace(2, 0, 0, 0xff), // buses 0-255
    ioPort(0xcf8, 8), // conf1, consumed by the bridge itself
    wordSpace(1, 0x3, 0x0000, 0x0cf7), // I/O windows around it
    wordSpace(1, 0x3, 0x0d00, 0xffff),
    dwordMemory(o.pciMmio32.base, o.pciMmio32.end - 1),
    endTag(),
  );
  const prt = amlPackage(
    o.pciIrqs.map((d) =>
      amlPackage([
        amlInteger(((d.slot << 16) | 0xffff) >>> 0),
        amlInteger(d.pin - 1),
        amlInteger(0),
        amlInteger(d.gsi),
      ]),
    ),
  );
  const pci0 = amlDevice(
    'PCI0',
    cat(
      amlName('_HID', amlInteger(eisaId('PNP0A03'))),
      amlName('_UID', amlInteger(0)),
      amlName('_BBN', amlInteger(0)),
      amlName('_CRS', amlBuffer(crs)),
      amlName('_PRT', prt),
      ...(o.hotplugSlots ? [pciSlotsAml(o.hotplugSlots)] : []),
    ),
  );
  // COM1 as a PNP device: with a hardware-reduced FADT Linux sets up no legacy (ISA) IRQs by
  // itself, so the 8250 gets IRQ 4 mapped to its IOAPIC pin from this _CRS (as Firecracker does).
  const com1 = amlDevice(
    'COM1',
    cat(
      amlName('_HID', amlInteger(eisaId('PNP0501'))),
      amlName('_UID', amlInteger(1)),
      amlName('_CRS', amlBuffer(cat(ioPort(0x3f8, 8), irqNoFlags(4), endTag()))),
    ),
  );
  const events = o.hotplugSlots
    ? [
        pciHotplugAml(o.hotplugSlots),
        gedAml([{ bit: GED_EVENT_PCI_HOTPLUG, body: amlCall('\\_SB.PHPR.PSCN') }]),
        // The event registers are motherboard resources: keep the OS from placing I/O BARs on them.
        amlDevice(
          'MBRS',
          amlName('_HID', amlInteger(eisaId('PNP0C02'))),
          amlName('_UID', amlInteger(1)),
          amlName(
            '_CRS',
            amlBuffer(cat(ioPort(PCI_HOTPLUG_PORT, PCI_HOTPLUG_PORT_LEN), ioPort(GED_PORT, GED_PORT_LEN), endTag())),
          ),
        ),
      ]
    : [];
  return cat(amlScope('\\_SB', pci0, com1, ...events), s5Aml());
}

/** MADT: local APIC per vCPU, the IOAPIC (ID 0, GSIs from 0), IRQ 0 → GSI 2, LINT1 = NMI. */
export function madtBody(cpus: number): Uint8Array {
  const entries: number[][] = [];
  for (let i = 0; i < cpus; i++) entries.push([0, 8, i, i, ...le32(1)]);
  entries.push([1, 12, 0, 0, ...le32(0xfec00000), ...le32(0)]);
  entries.push([2, 10, 0, 0, ...le32(2), ...le16(0)]);
  entries.push([4, 6, 0xff, ...le16(0), 1]);
  return cat(le32(0xfee00000), le32(0), ...entries);
}

export interface AcpiTables {
  /** Bytes to copy at `base`. */
  bytes: Uint8Array;
  rsdp: number;
  tables: Record<string, number>;
}

export function buildAcpiTables(o: AcpiOptions, base = ACPI_TABLES_ADDR): AcpiTables {
  const dsdt = table('DSDT', 2, dsdtAml(o));
  const madt = table('APIC', 4, madtBody(o.cpus));

  const fb = new Uint8Array(FADT_LEN - HEADER_LEN);
  const f = new DataView(fb.buffer);
  const o2 = (off: number) => off - HEADER_LEN; // FADT offsets are from the table start
  // The DSDT address is filled in below, once the layout is known.
  f.setUint16(o2(46), 9, true); // SCI_INT: unused when hardware-reduced, but keep Linux off IRQ 0
  f.setUint16(o2(109), IAPC_NO_VGA | IAPC_NO_CMOS_RTC, true);
  f.setUint32(o2(112), FADT_F_HW_REDUCED | FADT_F_RESET_REG_SUP | FADT_F_PWR_BUTTON | FADT_F_SLP_BUTTON, true);
  gasIo8(f, o2(116), ACPI_RESET_PORT);
  f.setUint8(o2(128), ACPI_RESET_VALUE);
  f.setUint8(o2(131), 5); // FADT minor version: 6.5
  gasIo8(f, o2(244), ACPI_SLEEP_CONTROL_PORT);
  gasIo8(f, o2(256), ACPI_SLEEP_STATUS_PORT);
  ascii(fb, o2(268), 'TSVMM\0\0\0');

  // Layout: RSDP (36, padded to 48) | RSDT | XSDT | FADT | MADT | [VIOT] | DSDT, each 16-byte aligned.
  const viot = o.viot ? viotTable(o.viot) : undefined;
  const listed = 2 + (viot ? 1 : 0);
  const align = (n: number) => Math.ceil(n / 16) * 16;
  const rsdtAt = base + 48;
  const rsdtLen = HEADER_LEN + 4 * listed;
  const xsdtAt = align(rsdtAt + rsdtLen);
  const xsdtLen = HEADER_LEN + 8 * listed;
  const fadtAt = align(xsdtAt + xsdtLen);
  const madtAt = align(fadtAt + FADT_LEN);
  const viotAt = align(madtAt + madt.length);
  const dsdtAt = viot ? align(viotAt + viot.length) : viotAt;
  f.setUint32(o2(40), dsdtAt, true); // DSDT
  f.setBigUint64(o2(140), BigInt(dsdtAt), true); // X_DSDT
  const fadt = table('FACP', 6, fb);
  const entries = [fadtAt, madtAt, ...(viot ? [viotAt] : [])];
  const rb = new Uint8Array(4 * listed);
  const xb = new Uint8Array(8 * listed);
  entries.forEach((at, i) => {
    new DataView(rb.buffer).setUint32(4 * i, at, true);
    new DataView(xb.buffer).setBigUint64(8 * i, BigInt(at), true);
  });
  const rsdt = table('RSDT', 1, rb);
  const xsdt = table('XSDT', 1, xb);

  const rsdp = new Uint8Array(36);
  const rv = new DataView(rsdp.buffer);
  ascii(rsdp, 0, 'RSD PTR ');
  ascii(rsdp, 9, OEM_ID);
  rsdp[15] = 2; // ACPI 2.0+
  rv.setUint32(16, rsdtAt, true);
  rv.setUint32(20, 36, true);
  rv.setBigUint64(24, BigInt(xsdtAt), true);
  rsdp[8] = (0x100 - sum(rsdp.subarray(0, 20))) & 0xff;
  rsdp[32] = (0x100 - sum(rsdp)) & 0xff;

  const bytes = new Uint8Array(dsdtAt + dsdt.length - base);
  bytes.set(rsdp, 0);
  bytes.set(rsdt, rsdtAt - base);
  bytes.set(xsdt, xsdtAt - base);
  bytes.set(fadt, fadtAt - base);
  bytes.set(madt, madtAt - base);
  if (viot) bytes.set(viot, viotAt - base);
  bytes.set(dsdt, dsdtAt - base);
  return {
    bytes,
    rsdp: base,
    tables: { RSDT: rsdtAt, XSDT: xsdtAt, FACP: fadtAt, APIC: madtAt, ...(viot ? { VIOT: viotAt } : {}), DSDT: dsdtAt },
  };
}
