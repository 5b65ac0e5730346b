// vfio-pci: a host PCI device assigned to the guest.
//
// Config space is virtualised over the real one: IDs, BARs, the ROM BAR, interrupt line and the
// MSI/MSI-X capabilities are emulated; every other byte is read from and written to the device.
// Each BAR is a container: a trapped region (pread/pwrite on the device fd) under mmap'd pieces
// of the BAR (RAM-like regions, so KVM memslots give the guest direct access with no exit), and
// on top the emulated MSI-X table and PBA. Interrupts are eventfds VFIO signals, handed to the
// machine's interrupt groups (hw/interrupts.ts: on KVM, irqfds); INTx uses a resample eventfd that
// VFIO unmasks from, so no interrupt wakes the VMM.
import { readFileSync, readSync } from 'node:fs';
import { native, isSyscallError } from '../core/native.js';
import { MemoryRegion, memoryTransaction } from '../core/memory/index.js';
import type { AssignedDevice } from '../core/vfio/vfio.js';
import { VfioIntx, VfioIrqVectors } from '../core/vfio/irq.js';
import type { InterruptLine, Interrupts, MsiInterruptGroup } from './interrupts.js';
import { MsixCap, type MsiMessage } from './msix.js';
import { MsiCap, msiCapSize, type MsiVectorCount } from './msi.js';
import {
  PciDevice,
  PCI_BASE_ADDRESS_0,
  PCI_CAPABILITY_LIST,
  PCI_COMMAND,
  PCI_INTERRUPT_LINE,
  PCI_INTERRUPT_PIN,
  PCI_ROM_ADDRESS,
  PCI_STATUS,
  PCI_STATUS_CAP_LIST,
  PCI_CONFIG_SIZE,
  guestEvents,
  type BarType,
} from './pci.js';

const PAGE = 4096;
const CAP_ID_PM = 0x01,
  CAP_ID_MSI = 0x05,
  CAP_ID_MSIX = 0x11;
const PCI_PM_CTRL = 4,
  PCI_PM_CTRL_STATE_MASK = 0x3;

export interface VfioPciOptions {
  id: string;
  gsi: number;
  /**
   * The expansion ROM (QEMU's rombar/romfile): `bar: false` hides it; `file` replaces the device's
   * ROM with a file's bytes. Default: the device's own ROM, when it has one.
   */
  rom?: { bar?: boolean; file?: string };
}

/** Largest ROM image taken from a romfile (PCI allows up to 16 MiB). */
export const ROM_MAX = 16 * 2 ** 20;

interface BarLayout {
  index: number;
  type: BarType;
  prefetchable: boolean;
  size: number;
  virtualSize: number;
  mmaps: { offset: number; size: number }[];
}

export interface MsixLayout {
  capOffset: number;
  vectors: number;
  tableBar: number;
  tableOffset: number;
  pbaBar: number;
  pbaOffset: number;
}

/** Where the mmap'd pieces of a BAR go: sparse areas (or all), minus the MSI-X page hole. */
export function barMmapRanges(
  size: number,
  sparse: { offset: number; size: number }[] | undefined,
  hole: { start: number; end: number } | undefined,
): { offset: number; size: number }[] {
  const areas = sparse ?? [{ offset: 0, size }];
  const out: { offset: number; size: number }[] = [];
  for (const a of areas) {
    let pieces = [{ start: a.offset, end: a.offset + a.size }];
    if (hole)
      pieces = pieces.flatMap((p) => [
        { start: p.start, end: Math.min(p.end, hole.start) },
        { start: Math.max(p.start, hole.end), end: p.end },
      ]);
    for (const p of pieces) {
      const start = Math.ceil(p.start / PAGE) * PAGE,
        end = Math.min(Math.floor(p.end / PAGE) * PAGE, size);
      if (end > start) out.push({ offset: start, size: end - start });
    }
  }
  return out;
}

/** QEMU's MSI-X hole: [table start rounded down to a page, table end rounded up). */
export function msixHole(m: MsixLayout): { start: number; end: number } {
  return {
    start: Math.floor(m.tableOffset / PAGE) * PAGE,
    end: Math.ceil((m.tableOffset + m.vectors * 16) / PAGE) * PAGE,
  };
}

/** How many vectors of each kind a device's guest driver has enabled. */
export interface DeviceInterruptState {
  msi: number;
  msix: number;
  intx: number;
}

export class VfioPciDevice extends PciDevice {
  /** Bytes of config space whose guest view is emulated (1) rather than the device's (0). */
  readonly emulated = new Uint8Array(PCI_CONFIG_SIZE);
  readonly layouts: BarLayout[] = [];
  msix: MsixLayout | undefined;
  msiCapOffset: number | undefined;
  /** Power management capability: vfio-pci turns the BARs off (mmaps included) in D3hot. */
  pmCapOffset: number | undefined;
  /** Emulated capabilities, the VFIO vectors behind them and the interrupt groups they signal. */
  msixCap: MsixCap | undefined;
  msiCap: MsiCap | undefined;
  msixVectors: VfioIrqVectors | undefined;
  msiVectors: VfioIrqVectors | undefined;
  msixGroup: MsiInterruptGroup | undefined;
  msiGroup: MsiInterruptGroup | undefined;
  private msiCapSize = 0;
  private readonly intxLine: InterruptLine;
  private readonly intx: VfioIntx;
  private intxOn = false;
  private resampleWatch: { fd: number; timer: NodeJS.Timeout; unmasks: number } | undefined;
  private readonly resampleBuf = Buffer.alloc(8);
  private readonly cleanups: (() => void)[] = [];

  constructor(
    readonly interrupts: Interrupts,
    readonly assigned: AssignedDevice,
    readonly opts: VfioPciOptions,
  ) {
    super(opts.id, { vendor: 0, device: 0, classCode: 0 });
    const dev = assigned.device;
    this.intx = new VfioIntx(dev);
    this.intxLine = interrupts.line(opts.gsi);
    try {
      this.init();
    } catch (e) {
      // Whatever was set up (BAR mmaps, vectors, the INTx line and its resample poll) goes again,
      // so a failed device_add leaves the device free for the next try.
      try {
        this.destroy();
      } catch {
        /* keep the first error */
      }
      throw e;
    }
  }

  private init(): void {
    const dev = this.assigned.device;
    const assigned = this.assigned;
    if (!dev.isPci) throw new Error(`${assigned.host.name} is not a PCI device (VFIO_DEVICE_FLAGS_PCI not set)`);
    const c = native().constants;
    const cfg = dev.regions[c.VFIO_PCI_CONFIG_REGION_INDEX];
    if (!cfg || cfg.size < 64) throw new Error(`${assigned.host.name}: no usable config space region`);
    // The device's config space in one pread, as QEMU's vfio_realize (vfio-pci splits it itself):
    // 64 dword preads cost 64 syscalls at every launch. Past the region: 0; unreadable: all ones.
    const have = Math.min(PCI_CONFIG_SIZE, Number(cfg.size)) & ~3;
    const bytes = Buffer.alloc(have);
    const got = dev.readInto(c.VFIO_PCI_CONFIG_REGION_INDEX, 0, bytes) & ~3;
    bytes.fill(0xff, got);
    this.config.fill(0, 0, PCI_CONFIG_SIZE);
    this.config.set(bytes, 0);
    this.emulate(0x00, 4); // vendor, device: fixed
    this.emulate(0x08, 4); // revision, class: fixed
    this.emulate(PCI_BASE_ADDRESS_0, 24); // BARs: guest-programmed, never reach the device
    this.emulate(PCI_ROM_ADDRESS, 4); // ROM BAR: ours (setupRom), never the device's
    this.emulate(PCI_INTERRUPT_LINE, 2); // line: our GSI; pin: as the device says (copied)
    new DataView(this.config.buffer).setUint32(PCI_ROM_ADDRESS, 0, true);
    this.findCapabilities();
    if (dev.canReset) {
      try {
        dev.reset();
      } catch (e) {
        console.error(`tsvmm: ${assigned.host.name}: VFIO_DEVICE_RESET failed: ${(e as Error).message}`);
      }
    }
    this.setupBars();
    this.setupRom();
    this.setupMsix();
    this.setupMsi();
    this.config[PCI_INTERRUPT_LINE] = this.opts.gsi;
    this.enableIntx();
  }

  private emulate(off: number, len: number): void {
    this.emulated.fill(1, off, off + len);
  }

  /** A BAR access for the guest: beyond the real BAR (grown to a page) or refused by the device
   *  reads as all-ones and drops writes, as a master abort would. */
  private regionRead(index: number, off: number, size: number, regionSize: number): number | bigint {
    const ones = size === 8 ? 0xffffffffffffffffn : 2 ** (8 * size) - 1;
    if (off + size > regionSize) return ones;
    try {
      return this.assigned.device.read(index, off, size);
    } catch (e) {
      guestEvents.report(
        'error',
        `${this.name}:bar${index}:read`,
        () =>
          `${this.name}: BAR${index} read at +0x${off.toString(16)} failed (${(e as Error).message}); the guest reads all-ones`,
      );
      return ones;
    }
  }

  private regionWrite(index: number, off: number, size: number, value: number | bigint, regionSize: number): void {
    if (off + size > regionSize) return;
    try {
      this.assigned.device.write(index, off, size, value);
    } catch (e) {
      guestEvents.report(
        'error',
        `${this.name}:bar${index}:write`,
        () => `${this.name}: BAR${index} write at +0x${off.toString(16)} failed (${(e as Error).message}); dropped`,
      );
    }
  }

  /** Runs guest-triggered work (a config write, an MSI-X table write) so that no error of it
   *  reaches the vCPU exit loop: it is logged once per kind instead. */
  private contain(what: string, fn: () => void): void {
    try {
      fn();
    } catch (e) {
      guestEvents.report(
        'error',
        `${this.name}:${what}`,
        () => `${this.name}: ${what} failed (${(e as Error).message})`,
      );
    }
  }

  private findCapabilities(): void {
    if (!(this.config[PCI_STATUS]! & PCI_STATUS_CAP_LIST)) return;
    const seen = new Set<number>();
    for (let p = this.config[PCI_CAPABILITY_LIST]! & 0xfc; p >= 0x40 && !seen.has(p); p = this.config[p + 1]! & 0xfc) {
      seen.add(p);
      const id = this.config[p]!;
      const ctrl = this.config[p + 2]! | (this.config[p + 3]! << 8);
      if (id === CAP_ID_MSIX) {
        const v = new DataView(this.config.buffer);
        const table = v.getUint32(p + 4, true),
          pba = v.getUint32(p + 8, true);
        this.msix = {
          capOffset: p,
          vectors: (ctrl & 0x7ff) + 1,
          tableBar: table & 7,
          tableOffset: table & ~7,
          pbaBar: pba & 7,
          pbaOffset: pba & ~7,
        };
      } else if (id === CAP_ID_MSI) {
        this.msiCapOffset = p;
      } else if (id === CAP_ID_PM) {
        this.pmCapOffset = p;
      }
    }
  }

  private setupBars(): void {
    const dev = this.assigned.device;
    const c = native().constants;
    const v = new DataView(this.config.buffer);
    for (let i = 0; i <= 5; i++) {
      const r = dev.regions[i];
      if (!r || r.size === 0) continue;
      const raw = v.getUint32(PCI_BASE_ADDRESS_0 + 4 * i, true);
      const type: BarType = raw & 1 ? 'io' : (raw & 6) === 4 ? 'mem64' : 'mem32';
      const prefetchable = type !== 'io' && (raw & 8) !== 0;
      const size = r.size;
      // Sub-page memory BARs are grown to a page so a guest cannot pack two into one page.
      const virtualSize = type === 'io' ? size : Math.max(size, PAGE);
      const m = this.msix;
      const hole = m && m.tableBar === i && !r.msixMappable ? msixHole(m) : undefined;
      const canMmap = type !== 'io' && (r.flags & c.VFIO_REGION_INFO_FLAG_MMAP) !== 0;
      const layout: BarLayout = {
        index: i,
        type,
        prefetchable,
        size,
        virtualSize,
        mmaps: canMmap ? barMmapRanges(Math.max(size, PAGE), r.sparseMmap, hole) : [],
      };
      this.layouts.push(layout);
      const container = MemoryRegion.container(`${this.name}-bar${i}`, virtualSize);
      // Everything not mmap'd is trapped and forwarded to the device fd.
      // Trapped accesses (and emulated accesses to the mmap'd pieces) use pread/pwrite on the
      // region, never the mmap: vfio-pci answers a refused access (decode off, reset, D3) with
      // an error there, which reads as all-ones, where the mmap would raise SIGBUS.
      const index = i; // i moves on past a 64-bit BAR's upper half below: capture this BAR's
      const barIo = (base: number) => ({
        read: (off: number, sz: number) => {
          if (this.resampleWatch) this.pollResample();
          return this.regionRead(index, base + off, sz, size);
        },
        write: (off: number, sz: number, val: number | bigint) => {
          if (this.resampleWatch) this.pollResample();
          this.regionWrite(index, base + off, sz, val, size);
        },
      });
      container.addSubregion(0, MemoryRegion.io(`${this.name}-bar${i}-trap`, virtualSize, barIo(0)), 0);
      for (const piece of layout.mmaps) {
        let map;
        try {
          map = dev.mmap(i, piece.offset, piece.size);
        } catch (e) {
          // As kvmtool: a BAR that cannot be mmap'd still works, trapped.
          console.error(
            `tsvmm: ${this.name}: mmap of BAR${i} +0x${piece.offset.toString(16)} failed (${(e as Error).message}); trapping it`,
          );
          continue;
        }
        const region = MemoryRegion.ramDevice(
          `${this.name}-bar${i}@0x${piece.offset.toString(16)}`,
          piece.size,
          { hostAddr: map.addr, fd: dev.fd },
          { ops: barIo(piece.offset) },
        );
        container.addSubregion(piece.offset, region, 1);
        this.cleanups.push(() => dev.munmap(map.buffer));
      }
      this.registerBar(i, type, virtualSize, container, prefetchable);
      if (type === 'mem64') i++;
    }
    // The BARs' emulated registers start out as the type bits only (registerBar wrote them).
  }

  /**
   * The ROM BAR: read-only and trapped (a guest reads its ROM rarely: firmware, `rom` in sysfs),
   * served by pread from VFIO's ROM region or from a romfile padded with zeros to a power of two.
   */
  private setupRom(): void {
    const rom = this.opts.rom ?? {};
    if (rom.bar === false) return;
    const romIndex = native().constants.VFIO_PCI_ROM_REGION_INDEX;
    let size: number;
    let read: (off: number, sz: number) => number | bigint;
    if (rom.file !== undefined) {
      let bytes: Buffer;
      try {
        bytes = readFileSync(rom.file);
      } catch (e) {
        throw new Error(
          `${this.name}: romfile ${rom.file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}: give a readable file, or drop "romfile"`,
          { cause: e },
        );
      }
      if (bytes.length === 0 || bytes.length > ROM_MAX)
        throw new Error(`${this.name}: romfile ${rom.file} is ${bytes.length} bytes; a ROM holds 1 byte to 16 MiB`);
      size = Math.max(0x800, 2 ** Math.ceil(Math.log2(bytes.length)));
      const image = Buffer.alloc(size);
      bytes.copy(image);
      read = (off, sz) => (sz === 8 ? image.readBigUInt64LE(off) : image.readUIntLE(off, sz));
    } else {
      const r = this.assigned.device.regions[romIndex];
      if (!r || r.size === 0) return;
      size = r.size;
      // Read whole on first use and kept (as QEMU's vfio_pci_load_rom): every pread of the ROM
      // region has vfio-pci enable and map the device's ROM anew, far too slow per access.
      let image: Buffer | undefined;
      read = (off, sz) => {
        image ??= this.loadRom(romIndex, r.size);
        return sz === 8 ? image.readBigUInt64LE(off) : image.readUIntLE(off, sz);
      };
    }
    this.registerRom(
      size,
      MemoryRegion.io(`${this.name}-rom`, size, {
        read,
        write: () => {
          /* read-only */
        },
      }),
    );
  }

  /** The device's ROM, read in one pass; what cannot be read reads as all-ones (no ROM there). */
  private loadRom(index: number, size: number): Buffer {
    const image = Buffer.alloc(size, 0xff);
    try {
      this.assigned.device.readInto(index, 0, image);
    } catch (e) {
      guestEvents.report(
        'error',
        `${this.name}:rom`,
        () => `${this.name}: reading the device's ROM failed (${(e as Error).message}); the guest reads all-ones`,
      );
    }
    return image;
  }

  /** Adds the emulated MSI-X table/PBA (or any overlay) above a BAR's direct mappings. */
  overlayBar(index: number, offset: number, region: MemoryRegion): void {
    const bar = this.bars[index];
    if (!bar) throw new Error(`${this.name}: no BAR${index} to overlay`);
    memoryTransaction(() => bar.region.addSubregion(offset, region, 2));
  }

  /** INTx: the device's line triggers the interrupt line's eventfd; the guest's EOI signals the
   *  resample eventfd, from which VFIO unmasks the (auto-masked) line (QEMU's vfio_intx_enable_kvm). */
  protected enableIntx(): void {
    if (this.intxOn || !this.config[PCI_INTERRUPT_PIN] || !this.intx.available) return;
    const { trigger, resample } = this.intxLine.connect();
    this.intxOn = true;
    try {
      this.intx.trigger(trigger);
      this.intx.mask();
      try {
        this.intx.unmaskOn(resample);
      } catch (e) {
        // Some mdev drivers (mtty) cannot unmask from an eventfd (ENOTTY): the trigger still goes
        // straight to the line, and the VMM unmasks after each guest EOI instead (QEMU does the same).
        if (!isSyscallError(e, 'ENOTTY') && !isSyscallError(e, 'EINVAL')) throw e;
        this.watchResample(resample);
      }
      this.intx.unmask();
    } catch (e) {
      this.disableIntx();
      throw e;
    }
  }

  /** Userspace INTx unmask (for devices that cannot unmask from an eventfd): the guest's EOI
   *  signals the resample eventfd, and the VMM unmasks when it sees that. It looks before every
   *  trapped BAR access (the guest EOIs before it touches the device again, so an interrupt the
   *  access raises is never lost to a stale mask, as QEMU's vfio_eoi on BAR access) and on a
   *  slow timer for interrupts the device raises by itself. */
  private watchResample(fd: number): void {
    if (this.resampleWatch) return;
    const timer = setInterval(() => this.pollResample(), 5);
    timer.unref();
    this.resampleWatch = { fd, timer, unmasks: 0 };
  }

  private pollResample(): void {
    const w = this.resampleWatch;
    if (!w || !this.intxOn) return;
    try {
      readSync(w.fd, this.resampleBuf, 0, 8, null);
    } catch {
      return; // EAGAIN: no EOI since the last look
    }
    try {
      this.intx.unmask();
      w.unmasks++;
    } catch (e) {
      console.error(`tsvmm: ${this.name}: INTx unmask failed: ${(e as Error).message}`);
    }
  }

  /** Userspace INTx unmasks done so far (undefined when VFIO unmasks from the resample eventfd). */
  get userspaceIntxUnmasks(): number | undefined {
    return this.resampleWatch?.unmasks;
  }

  /**
   * The interrupt vectors the guest has enabled: MSI's, MSI-X's unmasked ones, and the INTx line
   * when the device has one, MSI and MSI-X are off and the guest has not disabled it (PCI command
   * register bit 10).
   */
  interruptState(): DeviceInterruptState {
    const msi = this.msiCap?.enabled ? this.msiCap.enabledVectors : 0;
    let msix = 0;
    const x = this.msixCap;
    if (x?.enabled && !x.functionMasked) for (let v = 0; v < x.vectors; v++) if (!x.isMasked(v)) msix++;
    const intx = this.configRead(0x3d, 1) !== 0 && !msi && !msix && !(this.configRead(0x04, 2) & 0x400) ? 1 : 0;
    return { msi, msix, intx };
  }

  /** Turns INTx off at VFIO and at the line (MSI/MSI-X take over, or the device goes away). */
  protected disableIntx(): void {
    if (!this.intxOn) return;
    this.intxOn = false;
    try {
      this.intx.disable();
    } catch {
      /* already off */
    }
    this.intxLine.disconnect();
  }

  /** MSI-X: the capability and table are emulated; VFIO signals each vector's eventfd in its MSI group. */
  private setupMsix(): void {
    const m = this.msix;
    const c = native().constants;
    if (!m || !this.bars[m.tableBar] || !this.bars[m.pbaBar]) return;
    const irq = this.assigned.device.irqs[c.VFIO_PCI_MSIX_IRQ_INDEX];
    if (!irq || irq.count === 0) return;
    const vectors = new VfioIrqVectors(this.assigned.device, c.VFIO_PCI_MSIX_IRQ_INDEX, Math.min(m.vectors, irq.count));
    const group = this.interrupts.msiGroup(vectors.max);
    this.msixVectors = vectors;
    this.msixGroup = group;
    const cap: MsixCap = new MsixCap(
      { ...m, name: this.name },
      {
        onControl: (enabled) =>
          this.contain('MSI-X enable/disable', () => {
            if (enabled) {
              this.disableIntx();
              vectors.enableEmpty();
            } else {
              this.disableVectors(vectors, group);
              this.enableIntx();
            }
          }),
        vectorUse: (v, msg) => this.contain('MSI-X vector set-up', () => this.vectorUse(vectors, group, v, msg)),
        vectorRelease: (v) => this.contain('MSI-X vector mask', () => group.mask(v)),
        notify: (v) => this.contain('MSI-X delivery', () => group.trigger(v)),
        pbaPoll: (first, end) =>
          this.contain('MSI-X PBA poll', () => {
            for (let v = first; v < end; v++) if (group.pending(v)) cap.setPending(v);
          }),
      },
    );
    cap.writeCapabilityTo(this.config, this.wmask);
    this.emulate(m.capOffset, 12);
    this.msixCap = cap;
    this.overlayBar(m.tableBar, m.tableOffset, cap.tableRegion);
    this.overlayBar(m.pbaBar, m.pbaOffset, cap.pbaRegion);
  }

  /** Vector v in use with this message: routed and unmasked (a signal that waited while it was
   *  masked is delivered), and VFIO signals its eventfd. */
  private vectorUse(vectors: VfioIrqVectors, group: MsiInterruptGroup, v: number, msg: MsiMessage): void {
    if (v >= vectors.max) return; // the guest named a vector VFIO cannot back: ignore it
    group.update(v, { ...msg, masked: false });
    vectors.set(v, group.notifier(v)!);
  }

  private disableVectors(vectors: VfioIrqVectors, group: MsiInterruptGroup): void {
    vectors.disable(); // VFIO first: it stops signalling before the eventfds close
    group.disable();
  }

  /** MSI: emulated capability, all vectors enabled together (MSI cannot grow while enabled). */
  private setupMsi(): void {
    const p = this.msiCapOffset;
    const c = native().constants;
    const irq = this.assigned.device.irqs[c.VFIO_PCI_MSI_IRQ_INDEX];
    if (p === undefined || !irq || irq.count === 0) return;
    const ctrl = this.config[p + 2]! | (this.config[p + 3]! << 8);
    const is64bit = (ctrl & 0x80) !== 0,
      perVectorMask = (ctrl & 0x100) !== 0;
    const capable = Math.min(1 << ((ctrl >> 1) & 7), irq.count, 32);
    const count = (1 << Math.floor(Math.log2(capable))) as MsiVectorCount;
    const vectors = new VfioIrqVectors(this.assigned.device, c.VFIO_PCI_MSI_IRQ_INDEX, count);
    const group = this.interrupts.msiGroup(count);
    this.msiVectors = vectors;
    this.msiGroup = group;
    const cap: MsiCap = new MsiCap(
      { capOffset: p, vectors: count, is64bit, perVectorMask },
      {
        onControl: (enabled) =>
          this.contain('MSI enable/disable', () => {
            if (enabled) this.disableIntx();
            else {
              this.disableVectors(vectors, group);
              this.enableIntx();
            }
          }),
        vectorUse: (v, msg) => this.contain('MSI vector set-up', () => this.vectorUse(vectors, group, v, msg)),
        vectorRelease: (v) => this.contain('MSI vector mask', () => group.mask(v)),
        notify: (v) => this.contain('MSI delivery', () => group.trigger(v)),
      },
    );
    cap.writeCapabilityTo(this.config, this.wmask);
    this.msiCapSize = msiCapSize(is64bit, perVectorMask);
    this.emulate(p, this.msiCapSize);
    this.msiCap = cap;
  }

  // --- config space ----------------------------------------------------------------------------
  private cfgDeviceRead(off: number, size: number): number {
    try {
      return Number(this.assigned.device.read(native().constants.VFIO_PCI_CONFIG_REGION_INDEX, off, size));
    } catch (e) {
      guestEvents.report(
        'error',
        `${this.name}:config-read`,
        () =>
          `${this.name}: config read at 0x${off.toString(16)} failed (${(e as Error).message}); the guest reads all-ones`,
      );
      return 0xffffffff >>> (32 - 8 * size);
    }
  }

  private cfgDeviceWrite(off: number, size: number, value: number): void {
    try {
      this.assigned.device.write(native().constants.VFIO_PCI_CONFIG_REGION_INDEX, off, size, value);
    } catch (e) {
      guestEvents.report(
        'error',
        `${this.name}:config-write`,
        () => `${this.name}: config write at 0x${off.toString(16)} failed (${(e as Error).message}); dropped`,
      );
    }
  }

  override configRead(off: number, size: number): number {
    if (off + size > PCI_CONFIG_SIZE) return 0xffffffff >>> (32 - 8 * size);
    let emu = 0;
    for (let i = 0; i < size; i++) emu += this.emulated[off + i]!;
    if (emu === size) return super.configRead(off, size);
    const real = this.cfgDeviceRead(off, size);
    if (emu === 0) return real;
    const virt = super.configRead(off, size);
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = (v << 8) | (((this.emulated[off + i] ? virt : real) >>> (8 * i)) & 0xff);
    return v >>> 0;
  }

  /**
   * A guest config write, of any width and alignment, split by what each byte belongs to (as
   * QEMU decides by overlap): bytes of the MSI-X or MSI capability run that capability's state
   * machine (it ignores the bytes outside it); the rest go to the device, to tsvmm's copy, or
   * (command register) to both — the device first, so that whatever tsvmm then fails to map,
   * the device and tsvmm agree on what the guest wrote.
   */
  override configWrite(off: number, size: number, value: number): void {
    if (off + size > PCI_CONFIG_SIZE || size < 1) return;
    const inCap = new Uint8Array(size);
    const overlap = (start: number, len: number) => off < start + len && start < off + size;
    const mark = (start: number, len: number) => {
      for (let i = 0; i < size; i++) if (off + i >= start && off + i < start + len) inCap[i] = 1;
    };
    const m = this.msix;
    if (this.msixCap && m && overlap(m.capOffset, 12)) {
      mark(m.capOffset, 12);
      this.contain('MSI-X capability write', () => this.msixCap!.configWrite(off - m.capOffset, size, value));
    }
    const p = this.msiCapOffset;
    if (this.msiCap && p !== undefined && overlap(p, this.msiCapSize)) {
      mark(p, this.msiCapSize);
      this.contain('MSI capability write', () => this.msiCap!.configWrite(off - p, size, value));
    }
    for (let i = 0; i < size; ) {
      if (inCap[i]) {
        i++;
        continue;
      }
      let j = i;
      while (j < size && !inCap[j]) j++;
      this.writeRun(off + i, j - i, ((value >>> (8 * i)) & (0xffffffff >>> (32 - 8 * (j - i)))) >>> 0);
      i = j;
    }
  }

  /**
   * A write to PMCSR may have moved the device to D3hot, where vfio-pci refuses BAR access and
   * its mmaps fault: the BARs stop decoding here too, so no memslot points at a refused mmap
   * (QEMU 9.1 does the same in pci_bar_address). The state is read back: the device says.
   */
  private followPowerState(off: number, len: number): void {
    const pm = this.pmCapOffset;
    if (pm === undefined || off > pm + PCI_PM_CTRL || off + len <= pm + PCI_PM_CTRL) return;
    const d3 = (this.cfgDeviceRead(pm + PCI_PM_CTRL, 2) & PCI_PM_CTRL_STATE_MASK) === 3;
    if (d3 === this.decodeBlocked) return;
    this.decodeBlocked = d3;
    this.updateMappings();
  }

  /** Bytes [off, off+len) of a config write that lie outside the emulated capabilities. */
  private writeRun(off: number, len: number, value: number): void {
    if (len === 3) {
      // only possible around a capability edge: go byte by byte
      for (let i = 0; i < 3; i++) this.writeRun(off + i, 1, (value >>> (8 * i)) & 0xff);
      return;
    }
    // Command goes to both: the device needs bus mastering and decode; our BAR mapping follows
    // it. The device is written first, and never gets a byte tsvmm emulates.
    const isCommand = (a: number) => a === PCI_COMMAND || a === PCI_COMMAND + 1;
    let emu = 0;
    for (let i = 0; i < len; i++) emu += this.emulated[off + i]!;
    if (emu === 0) {
      this.cfgDeviceWrite(off, len, value);
      if (isCommand(off) || isCommand(off + len - 1))
        this.contain('command write', () => super.configWrite(off, len, value));
      this.followPowerState(off, len);
      return;
    }
    if (emu === len) {
      this.contain('config write', () => super.configWrite(off, len, value));
      return;
    }
    for (let i = 0; i < len; i++) {
      const a = off + i,
        b = (value >>> (8 * i)) & 0xff;
      if (!this.emulated[a]) this.cfgDeviceWrite(a, 1, b);
      if (this.emulated[a] || isCommand(a)) this.contain('config write', () => super.configWrite(a, 1, b));
    }
  }

  /** Releases interrupts, mappings and the device (hot-unplug or VM teardown). */
  /** Device reset (system_reset): interrupts back to INTx, the function reset where VFIO can
   *  (else bus mastering and decoding turned off), emulated state as at start. */
  override reset(): void {
    this.msixCap?.reset(); // reported as disables: vectors torn down, INTx back on
    this.msiCap?.reset();
    const dev = this.assigned.device;
    if (dev.canReset) {
      try {
        dev.reset();
      } catch (e) {
        console.error(`tsvmm: ${this.name}: VFIO_DEVICE_RESET failed: ${(e as Error).message}`);
      }
    } else {
      try {
        dev.write(native().constants.VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, 2, 0);
      } catch {
        /* gone */
      }
    }
    this.decodeBlocked = false; // a reset device is in D0
    super.reset();
    this.disableIntx(); // a line left asserted and masked by the old guest starts afresh
    this.enableIntx();
  }

  destroy(): void {
    this.unmapAll();
    if (this.msixVectors) this.disableVectors(this.msixVectors, this.msixGroup!);
    if (this.msiVectors) this.disableVectors(this.msiVectors, this.msiGroup!);
    this.disableIntx();
    for (const fn of this.cleanups.splice(0).reverse()) fn();
    if (this.resampleWatch) clearInterval(this.resampleWatch.timer);
    this.resampleWatch = undefined;
    this.intxLine.close();
  }
}
