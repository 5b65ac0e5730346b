// PCI devices and the bus: a 256-byte configuration space with write masks (what the guest may
// change), BARs that the guest sizes and places, and BAR decoding that maps each BAR's memory
// region into the bus's memory or I/O space when the command register enables it (QEMU's
// pci_update_mappings). Device models (emulated or vfio-pci) subclass PciDevice.
import { MemoryRegion, memoryTransaction, inMemoryTransaction } from '../core/memory/index.js';
import type { CpuidEntry } from '../core/native.js';
import type { StateReader, StateWriter } from '../core/state.js';

export const PCI_VENDOR_ID = 0x00,
  PCI_DEVICE_ID = 0x02,
  PCI_COMMAND = 0x04,
  PCI_STATUS = 0x06;
export const PCI_REVISION_ID = 0x08,
  PCI_CLASS_PROG = 0x09,
  PCI_HEADER_TYPE = 0x0e;
export const PCI_BASE_ADDRESS_0 = 0x10,
  PCI_SUBSYSTEM_VENDOR_ID = 0x2c,
  PCI_ROM_ADDRESS = 0x30;
export const PCI_CAPABILITY_LIST = 0x34,
  PCI_INTERRUPT_LINE = 0x3c,
  PCI_INTERRUPT_PIN = 0x3d;
export const PCI_COMMAND_IO = 0x1,
  PCI_COMMAND_MEMORY = 0x2,
  PCI_COMMAND_MASTER = 0x4,
  PCI_COMMAND_INTX_DISABLE = 0x400;
export const PCI_STATUS_CAP_LIST = 0x10,
  PCI_STATUS_INTERRUPT = 0x08;
export const PCI_CONFIG_SIZE = 256;

export type BarType = 'mem32' | 'mem64' | 'io' | 'rom';
/** The expansion ROM BAR's enable bit; its address bits start at bit 11 (2 KiB granularity). */
export const PCI_ROM_ADDRESS_ENABLE = 0x1,
  PCI_ROM_ADDRESS_MASK = 0xfffff800;
/** `bars` index of the expansion ROM (config offset 0x30): after BAR0-5. */
export const PCI_ROM_SLOT = 6;

export interface PciBar {
  index: number;
  size: number; // power of two; io ≥ 4, memory ≥ 16 (the model grows sub-page BARs itself)
  type: BarType;
  prefetchable: boolean;
  region: MemoryRegion; // what the BAR shows; placed at the guest-programmed address
  mappedAt?: number; // current address in the bus space, undefined when not decoded
}

/**
 * What a guest does wrong (or oddly) is the VMM's problem to contain, not to crash on or to
 * flood the log with: each kind of event is printed once (then only counted). Debug events are
 * printed only with TSVMM_DEBUG set.
 */
export const guestEvents = {
  counts: new Map<string, number>(),
  sink: (line: string): void => {
    console.error(line);
  },
  report(level: 'error' | 'debug', key: string, message: () => string): void {
    const n = (this.counts.get(key) ?? 0) + 1;
    this.counts.set(key, n);
    if (n === 1 && (level === 'error' || process.env.TSVMM_DEBUG))
      this.sink(`tsvmm: ${message()}${level === 'error' ? ' (logged once)' : ''}`);
  },
};

/** A range of guest-physical memory (or ports) where no BAR may decode: [start, end). */
export interface DecodeHole {
  start: number;
  end: number;
  what: string;
}

/**
 * Where a PC never lets a PCI BAR win (the chipset routes these elsewhere first): the legacy
 * first MiB (RAM, VGA, option ROMs, BIOS), the IOAPIC page and the LAPIC/MSI window. Ports:
 * the ISA range below 0x1000 (conf1 at 0xcf8 lives there: a BAR over it would cut the guest
 * off from config space for good).
 */
export const PC_MEM_HOLES: readonly DecodeHole[] = [
  { start: 0, end: 0x100000, what: 'the legacy first MiB' },
  { start: 0xfec00000, end: 0xfec01000, what: 'the IOAPIC' },
  { start: 0xfee00000, end: 0xfef00000, what: 'the LAPIC/MSI window' },
];
export const PC_IO_HOLES: readonly DecodeHole[] = [{ start: 0, end: 0x1000, what: 'the ISA port range' }];

/**
 * The first guest-physical address beyond the vCPU's physical address width (CPUID
 * 0x80000008 EAX[7:0]); 36 bits when the leaf is absent (the architectural default).
 */
export function physAddrLimit(cpuid: readonly CpuidEntry[]): number {
  const bits = (cpuid.find((e) => e.function === 0x80000008)?.eax ?? 36) & 0xff;
  return 2 ** Math.min(Math.max(bits || 36, 32), 52);
}

export class PciDevice {
  readonly config = new Uint8Array(PCI_CONFIG_SIZE);
  /** Bits the guest may write. */
  readonly wmask = new Uint8Array(PCI_CONFIG_SIZE);
  /** Bits the guest clears by writing 1 (status register error bits). */
  readonly w1cmask = new Uint8Array(PCI_CONFIG_SIZE);
  readonly bars: (PciBar | undefined)[] = [];
  bus: PciBus | undefined;
  devfn = -1;
  /** No BAR decodes while set (a device in D3hot). */
  protected decodeBlocked = false;
  /** Called after a BAR moved or appeared/disappeared (vfio-pci re-checks its mmaps here). */
  protected onBarMapped?(bar: PciBar, addr: number | undefined): void;

  constructor(
    readonly name: string,
    ids: {
      vendor: number;
      device: number;
      classCode: number;
      revision?: number;
      subsystemVendor?: number;
      subsystem?: number;
    },
  ) {
    const v = new DataView(this.config.buffer);
    v.setUint16(PCI_VENDOR_ID, ids.vendor, true);
    v.setUint16(PCI_DEVICE_ID, ids.device, true);
    this.config[PCI_REVISION_ID] = ids.revision ?? 0;
    this.config[PCI_CLASS_PROG] = ids.classCode & 0xff;
    this.config[0x0a] = (ids.classCode >> 8) & 0xff;
    this.config[0x0b] = (ids.classCode >> 16) & 0xff;
    v.setUint16(PCI_SUBSYSTEM_VENDOR_ID, ids.subsystemVendor ?? 0, true);
    v.setUint16(PCI_SUBSYSTEM_VENDOR_ID + 2, ids.subsystem ?? 0, true);
    // Command: I/O, memory, bus master, INTx disable are guest-controlled; status errors are W1C.
    this.setWmask(
      PCI_COMMAND,
      2,
      PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE | 0x40 | 0x100,
    );
    this.w1cmask[PCI_STATUS + 1] = 0xf9;
    this.wmask[PCI_INTERRUPT_LINE] = 0xff;
    this.wmask[0x0c] = 0xff; // cache line size
    this.wmask[0x0d] = 0xff; // latency timer
  }

  get slot(): number {
    return this.devfn >> 3;
  }
  get bdf(): string {
    return `00:${this.slot.toString(16).padStart(2, '0')}.${this.devfn & 7}`;
  }
  get command(): number {
    return this.config[PCI_COMMAND]! | (this.config[PCI_COMMAND + 1]! << 8);
  }

  protected setWmask(off: number, size: number, mask: number): void {
    for (let i = 0; i < size; i++) this.wmask[off + i] = (mask >>> (8 * i)) & 0xff;
  }

  /** Declares BAR `index` (a 64-bit BAR takes index+1 too). */
  registerBar(index: number, type: BarType, size: number, region: MemoryRegion, prefetchable = false): PciBar {
    if (index < 0 || index > 5 || (type === 'mem64' && index === 5))
      throw new RangeError(`${this.name}: BAR index ${index} invalid for ${type}`);
    if (
      this.bars[index] ||
      (index > 0 && this.bars[index - 1]?.type === 'mem64') ||
      (type === 'mem64' && this.bars[index + 1])
    )
      throw new Error(`${this.name}: BAR${index} overlaps another BAR`);
    if (size & (size - 1) || size < (type === 'io' ? 4 : 16))
      throw new RangeError(
        `${this.name}: BAR${index} size 0x${size.toString(16)} must be a power of two ≥ ${type === 'io' ? 4 : 16}`,
      );
    const bar: PciBar = { index, size, type, prefetchable, region };
    this.bars[index] = bar;
    const off = PCI_BASE_ADDRESS_0 + 4 * index;
    const low = type === 'io' ? 0x1 : (type === 'mem64' ? 0x4 : 0) | (prefetchable ? 0x8 : 0);
    new DataView(this.config.buffer).setUint32(off, low, true);
    // Size is encoded by which address bits are writable (the sizing protocol).
    const mask = type === 'io' ? ~(size - 1) & 0xfffc : size >= 2 ** 32 ? 0 : (~(size - 1) >>> 0) & 0xfffffff0;
    this.setWmask(off, 4, mask);
    if (type === 'mem64') {
      const hi = size > 2 ** 32 ? ~(size / 2 ** 32 - 1) >>> 0 : 0xffffffff;
      this.setWmask(off + 4, 4, hi);
    }
    return bar;
  }

  /**
   * Declares the expansion ROM BAR (config 0x30): read-only memory the guest sizes and places
   * like a 32-bit BAR, decoded only while its enable bit and memory decoding are both on.
   */
  registerRom(size: number, region: MemoryRegion): PciBar {
    if (size & (size - 1) || size < 0x800)
      throw new RangeError(`${this.name}: ROM size 0x${size.toString(16)} must be a power of two ≥ 2 KiB`);
    const bar: PciBar = { index: PCI_ROM_SLOT, size, type: 'rom', prefetchable: false, region };
    this.bars[PCI_ROM_SLOT] = bar;
    new DataView(this.config.buffer).setUint32(PCI_ROM_ADDRESS, 0, true);
    this.setWmask(PCI_ROM_ADDRESS, 4, ((~(size - 1) & PCI_ROM_ADDRESS_MASK) | PCI_ROM_ADDRESS_ENABLE) >>> 0);
    return bar;
  }

  /** The address the guest programmed into a BAR (ignoring decode enables). */
  barAddress(bar: PciBar): number {
    const v = new DataView(this.config.buffer);
    if (bar.type === 'rom') return (v.getUint32(PCI_ROM_ADDRESS, true) & PCI_ROM_ADDRESS_MASK) >>> 0;
    const off = PCI_BASE_ADDRESS_0 + 4 * bar.index;
    const lo = v.getUint32(off, true);
    if (bar.type === 'io') return lo & ~3 & 0xffff;
    const base = (lo & 0xfffffff0) >>> 0;
    return bar.type === 'mem64' ? base + v.getUint32(off + 4, true) * 2 ** 32 : base;
  }

  // --- configuration space access (what conf1/ECAM call) -------------------------------------
  configRead(off: number, size: number): number {
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = (v << 8) | this.config[off + i]!;
    return v >>> 0;
  }

  configWrite(off: number, size: number, value: number): void {
    let touchesBars = false;
    for (let i = 0; i < size; i++) {
      const a = off + i;
      const b = (value >>> (8 * i)) & 0xff;
      const w = this.wmask[a]!,
        c = this.w1cmask[a]!;
      this.config[a] = (this.config[a]! & ~w) | (b & w);
      this.config[a] = this.config[a]! & ~(b & c);
      if ((a >= PCI_BASE_ADDRESS_0 && a < PCI_BASE_ADDRESS_0 + 24) || a === PCI_COMMAND || a === PCI_ROM_ADDRESS)
        touchesBars = true;
    }
    if (touchesBars) this.updateMappings();
  }

  /** Where a BAR decodes now: undefined when decoding is off or the address is not one it may take. */
  private decodeAddress(bar: PciBar, bus: PciBus): number | undefined {
    const cmd = this.command;
    if (this.decodeBlocked || !(bar.type === 'io' ? cmd & PCI_COMMAND_IO : cmd & PCI_COMMAND_MEMORY)) return undefined;
    if (bar.type === 'rom' && !(this.config[PCI_ROM_ADDRESS]! & PCI_ROM_ADDRESS_ENABLE)) return undefined;
    const addr = this.barAddress(bar);
    // As QEMU's pci_bar_address: unprogrammed (0), a 32-bit BAR reaching the top of its
    // space (mid-sizing: all ones), or beyond the bus's space is not decoded.
    const limit = bar.type === 'io' ? 0xffff : bar.type === 'mem64' ? bus.memLimit : 0xffffffff;
    if (addr === 0 || addr + bar.size - 1 >= limit) {
      if (addr !== 0 && bar.type === 'mem64')
        guestEvents.report(
          'debug',
          `${this.name}:bar${bar.index}:limit`,
          () =>
            `${this.name}: BAR${bar.index} at 0x${addr.toString(16)} lies beyond the guest's physical address width (limit 0x${bus.memLimit.toString(16)}): not decoded`,
        );
      return undefined;
    }
    const hole = (bar.type === 'io' ? bus.ioHoles : bus.memHoles).find(
      (h) => addr < h.end && h.start < addr + bar.size,
    );
    if (hole) {
      guestEvents.report(
        'debug',
        `${this.name}:bar${bar.index}:hole:${hole.what}`,
        () => `${this.name}: BAR${bar.index} at 0x${addr.toString(16)} overlaps ${hole.what}: not decoded there`,
      );
      return undefined;
    }
    return addr;
  }

  /**
   * Re-evaluates every BAR against the command register; moves regions that changed. Never
   * throws: a move a memory listener refuses (KVM_SET_USER_MEMORY_REGION failing for an
   * address KVM cannot map, out of memslots) is undone, so that BAR does not decode there, as
   * on hardware where nothing answers at such an address; it is logged once.
   */
  updateMappings(): void {
    const bus = this.bus;
    if (!bus) return;
    // Inside a caller's transaction, listener errors surface at its end; nothing to undo here.
    const nested = inMemoryTransaction();
    for (const bar of this.bars) {
      if (!bar) continue;
      const addr = this.decodeAddress(bar, bus);
      if (addr === bar.mappedAt) continue;
      const space = bar.type === 'io' ? bus.ioSpace : bus.memSpace;
      const from = bar.mappedAt;
      try {
        memoryTransaction(() => {
          if (from !== undefined) space.removeSubregion(bar.region);
          bar.mappedAt = addr;
          if (addr !== undefined) space.addSubregion(addr, bar.region, 1);
        });
      } catch (e) {
        if (nested) throw e;
        guestEvents.report(
          'error',
          `${this.name}:bar${bar.index}:map`,
          () =>
            `${this.name}: BAR${bar.index} cannot decode at 0x${(addr ?? from ?? 0).toString(16)} (${(e as Error).message}); it does not decode there`,
        );
        // Out of the address space entirely: whatever the listeners managed is undone with it.
        try {
          if (bar.region.parent === space) memoryTransaction(() => space.removeSubregion(bar.region));
        } catch (e2) {
          guestEvents.report(
            'error',
            `${this.name}:bar${bar.index}:unmap`,
            () => `${this.name}: BAR${bar.index}: undoing a failed placement failed too (${(e2 as Error).message})`,
          );
        }
        bar.mappedAt = undefined;
      }
      this.onBarMapped?.(bar, bar.mappedAt);
    }
  }

  /** Unmaps every BAR (device removal). */
  unmapAll(): void {
    const bus = this.bus;
    if (!bus) return;
    memoryTransaction(() => {
      for (const bar of this.bars) {
        if (!bar || bar.mappedAt === undefined) continue;
        (bar.type === 'io' ? bus.ioSpace : bus.memSpace).removeSubregion(bar.region);
        bar.mappedAt = undefined;
      }
    });
  }

  /** Resets guest-visible state (system_reset). */
  reset(): void {
    this.config[PCI_COMMAND] = 0;
    this.config[PCI_COMMAND + 1] = 0;
    this.updateMappings();
  }

  // --- snapshot and migration (core/state.ts) ---------------------------------------------------
  /** A PCI function's section is its slot's: the destination has the same devices in the same slots. */
  get stateId(): string {
    return `pci/${this.bdf}`;
  }
  readonly stateVersion: number = 1;
  /**
   * Why this device cannot be migrated now (undefined: it can). A migration or snapshot fails at
   * once while any device has a blocker, naming the device and this reason; the VM runs on.
   */
  migrationBlocker(): string | undefined {
    return undefined;
  }
  /** Config space (what the guest wrote: command, BARs, capabilities' registers) and the decode block. */
  saveState(w: StateWriter): void {
    w.fixed(this.config).bool(this.decodeBlocked);
  }
  /** Config space back, then the BARs decode where it says (a model's own state follows in a subclass). */
  loadState(r: StateReader, _version: number): void {
    const config = r.fixed(PCI_CONFIG_SIZE, 'config space');
    const ro = [PCI_VENDOR_ID, PCI_VENDOR_ID + 1, PCI_DEVICE_ID, PCI_DEVICE_ID + 1, 0x0a, 0x0b];
    if (ro.some((o) => config[o] !== this.config[o]))
      throw r.bad(
        `the stream has a different device here (ids ${hexIds(config)}, this machine's ${hexIds(this.config)})`,
      );
    this.decodeBlocked = r.bool('the decode block');
    this.config.set(config);
    this.updateMappings();
  }
}

/** vendor:device class, as a message shows a device. */
function hexIds(c: Uint8Array): string {
  const h = (o: number, n: number) =>
    Array.from(c.subarray(o, o + n))
      .reverse()
      .map((b) => b.toString(16).padStart(2, '0'))
      .join('');
  return `${h(0, 2)}:${h(2, 2)} class ${h(0x0a, 2)}`;
}

export class PciBus {
  readonly devices = new Map<number, PciDevice>();

  /**
   * @param memSpace container where memory BARs are placed (guest-physical addresses)
   * @param ioSpace  container where I/O BARs are placed (ports)
   * @param memLimit memory BARs beyond this are not decoded (the guest's physical address width)
   * @param holes    ranges where no BAR decodes (a PC's by default)
   */
  constructor(
    readonly memSpace: MemoryRegion,
    readonly ioSpace: MemoryRegion,
    public memLimit: number,
    holes: { mem?: readonly DecodeHole[]; io?: readonly DecodeHole[] } = {},
  ) {
    this.memHoles = holes.mem ?? PC_MEM_HOLES;
    this.ioHoles = holes.io ?? PC_IO_HOLES;
  }
  readonly memHoles: readonly DecodeHole[];
  readonly ioHoles: readonly DecodeHole[];

  /** The lowest slot with nothing in it (32 when the bus is full). */
  firstFreeSlot(): number {
    let slot = 0;
    while (slot < 32 && this.devices.has(slot << 3)) slot++;
    return slot;
  }

  /**
   * Plugs a device at slot (or the first free one), function `fn` (0 unless it joins a device in
   * function 0 of that slot: a multi-function slot).
   */
  attach(dev: PciDevice, slot?: number, fn = 0): void {
    if (dev.bus) throw new Error(`${dev.name} is already on a bus`);
    slot ??= this.firstFreeSlot();
    if (slot < 0 || slot > 31) throw new RangeError(`no free PCI slot for ${dev.name} (slots 0-31)`);
    if (fn < 0 || fn > 7) throw new RangeError(`${dev.name}: function ${fn} (0-7)`);
    const devfn = (slot << 3) | fn;
    if (this.devices.has(devfn))
      throw new Error(`PCI ${fn ? `${slot}.${fn}` : `slot ${slot}`} is taken by ${this.devices.get(devfn)!.name}`);
    // A guest looks for functions 1-7 only behind a function 0 (and its multi-function bit).
    if (fn > 0 && !this.devices.has(slot << 3)) throw new Error(`${dev.name}: PCI slot ${slot} has no function 0`);
    dev.bus = this;
    dev.devfn = devfn;
    this.devices.set(dev.devfn, dev);
    dev.updateMappings();
  }

  detach(dev: PciDevice): void {
    if (dev.bus !== this) return;
    dev.unmapAll();
    this.devices.delete(dev.devfn);
    dev.bus = undefined;
  }

  configRead(devfn: number, off: number, size: number): number {
    const d = this.devices.get(devfn);
    if (!d) return size === 4 ? 0xffffffff : (1 << (8 * size)) - 1;
    const v = d.configRead(off, size);
    // Function 0 of a slot with more functions says so (header type bit 7), whatever the device's own header says.
    if ((devfn & 7) === 0 && off <= PCI_HEADER_TYPE && off + size > PCI_HEADER_TYPE && this.multiFunction(devfn >> 3))
      return (v | (0x80 << (8 * (PCI_HEADER_TYPE - off)))) >>> 0;
    return v;
  }

  /** Whether a slot has a function besides 0. */
  multiFunction(slot: number): boolean {
    for (let fn = 1; fn < 8; fn++) if (this.devices.has((slot << 3) | fn)) return true;
    return false;
  }

  configWrite(devfn: number, off: number, size: number, value: number): void {
    this.devices.get(devfn)?.configWrite(off, size, value);
  }
}
