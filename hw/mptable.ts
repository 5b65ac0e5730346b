// Intel MultiProcessor Specification 1.4 tables (as kvmtool's x86/mptable.c and Firecracker
// write them): how a Linux guest finds its CPUs, the IOAPIC, and which IOAPIC pin each ISA IRQ
// and each PCI device's INTx arrives on. The floating pointer must sit where Linux scans for it
// (here the BIOS area at 0xF0000, which the e820 map reserves); the config table follows it.
export const MP_TABLE_ADDR = 0xf0000;
export const APIC_DEFAULT_PHYS_BASE = 0xfee00000;
export const IO_APIC_DEFAULT_PHYS_BASE = 0xfec00000;
export const MP_LAPIC_VERSION = 0x14,
  MP_IOAPIC_VERSION = 0x11;
export const MP_BUS_PCI = 0,
  MP_BUS_ISA = 1;

const MP_PROCESSOR = 0,
  MP_BUS = 1,
  MP_IOAPIC = 2,
  MP_INTSRC = 3,
  MP_LINTSRC = 4;
const MP_INT = 0,
  MP_NMI = 1,
  MP_EXTINT = 3;
/** irqflag: polarity bits 0-1 (1 high, 3 low), trigger bits 2-3 (1 edge, 3 level); 0 = bus default. */
export const MP_IRQ_DEFAULT = 0x0;
/** PCI INTx: level-triggered. KVM's IOAPIC ignores polarity; active-high as QEMU's q35 declares its GSIs 16-23. */
export const MP_IRQ_PCI = 0x1 | (0x3 << 2);

export interface MpPciIrq {
  slot: number;
  /** 1 = INTA# ... 4 = INTD# */ pin: number;
  /** IOAPIC input */ ioapicPin: number;
}

export interface MpTableOptions {
  cpus: number;
  /** CPUID 1 EAX (family/model/stepping) and EDX (features), as a BIOS copies them. */
  cpuSignature: number;
  cpuFeatures: number;
  /** ISA IRQ → IOAPIC pin (default identity except IRQ 0 → pin 2, the PC's override; IRQ 2 is the cascade). */
  isaIrqs?: { irq: number; pin: number }[];
  pciIrqs: MpPciIrq[];
}

export function defaultIsaIrqs(): { irq: number; pin: number }[] {
  const out: { irq: number; pin: number }[] = [];
  for (let irq = 0; irq < 16; irq++) if (irq !== 2) out.push({ irq, pin: irq === 0 ? 2 : irq });
  return out;
}

export function checksum(bytes: Uint8Array): number {
  let s = 0;
  for (const b of bytes) s = (s + b) & 0xff;
  return s;
}

/** The floating pointer and the configuration table, laid out for address `base` (16-byte aligned). */
export function buildMpTable(base: number, o: MpTableOptions): Uint8Array {
  if (base % 16) throw new RangeError('the MP floating pointer must be 16-byte aligned');
  if (o.cpus < 1 || o.cpus > 254) throw new RangeError(`MP table: ${o.cpus} CPUs (1-254)`);
  const isa = o.isaIrqs ?? defaultIsaIrqs();
  const entries = o.cpus * 20 + 2 * 8 + 8 + (isa.length + o.pciIrqs.length + 2) * 8;
  const tableLen = 44 + entries;
  const buf = new Uint8Array(16 + tableLen);
  const v = new DataView(buf.buffer);
  const ascii = (at: number, s: string) => {
    for (let i = 0; i < s.length; i++) buf[at + i] = s.charCodeAt(i);
  };

  // Floating pointer: "_MP_", physical address of the table, length in 16-byte units, spec 1.4.
  ascii(0, '_MP_');
  v.setUint32(4, base + 16, true);
  buf[8] = 1;
  buf[9] = 4;
  // features 1 = 0 (a table follows), feature 2 bit 7 = 0 (virtual wire mode, no IMCR)
  buf[10] = (0x100 - checksum(buf.subarray(0, 16))) & 0xff;

  const t = 16;
  ascii(t, 'PCMP');
  v.setUint16(t + 4, tableLen, true);
  buf[t + 6] = 4;
  ascii(t + 8, 'TSVMM   ');
  ascii(t + 16, '000000000000');
  v.setUint32(t + 36, APIC_DEFAULT_PHYS_BASE, true);
  let p = t + 44,
    count = 0;
  const ioapicId = o.cpus;

  for (let cpu = 0; cpu < o.cpus; cpu++, count++, p += 20) {
    buf[p] = MP_PROCESSOR;
    buf[p + 1] = cpu; // local APIC ID = vCPU index
    buf[p + 2] = MP_LAPIC_VERSION;
    buf[p + 3] = 0x1 | (cpu === 0 ? 0x2 : 0); // enabled, BSP
    v.setUint32(p + 4, o.cpuSignature >>> 0, true);
    v.setUint32(p + 8, o.cpuFeatures >>> 0, true);
  }
  for (const [id, name] of [
    [MP_BUS_PCI, 'PCI   '],
    [MP_BUS_ISA, 'ISA   '],
  ] as const) {
    buf[p] = MP_BUS;
    buf[p + 1] = id;
    ascii(p + 2, name);
    p += 8;
    count++;
  }
  buf[p] = MP_IOAPIC;
  buf[p + 1] = ioapicId;
  buf[p + 2] = MP_IOAPIC_VERSION;
  buf[p + 3] = 1; // usable
  v.setUint32(p + 4, IO_APIC_DEFAULT_PHYS_BASE, true);
  p += 8;
  count++;
  const intsrc = (
    type: number,
    irqType: number,
    flags: number,
    bus: number,
    busIrq: number,
    dstApic: number,
    dstPin: number,
  ) => {
    buf[p] = type;
    buf[p + 1] = irqType;
    v.setUint16(p + 2, flags, true);
    buf[p + 4] = bus;
    buf[p + 5] = busIrq;
    buf[p + 6] = dstApic;
    buf[p + 7] = dstPin;
    p += 8;
    count++;
  };
  for (const { irq, pin } of isa) intsrc(MP_INTSRC, MP_INT, MP_IRQ_DEFAULT, MP_BUS_ISA, irq, ioapicId, pin);
  for (const d of o.pciIrqs) {
    if (d.pin < 1 || d.pin > 4) throw new RangeError(`MP table: PCI slot ${d.slot}: interrupt pin ${d.pin} (1-4)`);
    // PCI source bus IRQ: bits 2-6 the device number, bits 0-1 the pin (0 = INTA#).
    intsrc(MP_INTSRC, MP_INT, MP_IRQ_PCI, MP_BUS_PCI, (d.slot << 2) | (d.pin - 1), ioapicId, d.ioapicPin);
  }
  // Local interrupts: LINT0 = ExtINT (the 8259's output), LINT1 = NMI, on every local APIC.
  intsrc(MP_LINTSRC, MP_EXTINT, MP_IRQ_DEFAULT, MP_BUS_ISA, 0, 0xff, 0);
  intsrc(MP_LINTSRC, MP_NMI, MP_IRQ_DEFAULT, MP_BUS_ISA, 0, 0xff, 1);

  v.setUint16(t + 34, count, true);
  buf[t + 7] = (0x100 - checksum(buf.subarray(t, t + tableLen))) & 0xff;
  return buf;
}
