// vfio-pci: a host PCI device assigned to the guest.
//
// Config space is virtualised over the real one: IDs, BARs, the ROM BAR, interrupt line and the
// MSI/MSI-X capabilities are emulated; every other byte is read from and written to the device.
// Each BAR is a container: a trapped region (pread/pwrite on the device fd) under mmap'd pieces
// of the BAR (RAM-like regions, so KVM memslots give the guest direct access with no exit), and
// on top the emulated MSI-X table and PBA. Interrupts are eventfds VFIO signals, handed to the
// machine's interrupt groups (hw/interrupts.ts: on KVM, irqfds); INTx uses a resample eventfd that
// VFIO unmasks from, so no interrupt wakes the VMM.
import { native } from '../core/native.js';
import { MemoryRegion, memoryTransaction } from '../core/memory/index.js';
import type { AssignedDevice } from '../core/vfio/vfio.js';
import { VfioIntx, VfioIrqVectors } from '../core/vfio/irq.js';
import { DeviceDirtyLog, MigrationError, VfioMigration, describeHostDevice } from '../core/vfio/migration.js';
import type { StateReader, StateWriter } from '../core/state.js';
import type { Interrupts, MsiInterruptGroup } from './interrupts.js';
import type { MsixCap } from './msix.js';
import type { MsiCap } from './msi.js';
import { disableVectors, setupMsi, setupMsix, type MsiHost } from './vfio-pci-msi.js';
import {
  PciDevice,
  PCI_BASE_ADDRESS_0,
  PCI_COMMAND,
  PCI_INTERRUPT_LINE,
  PCI_INTERRUPT_PIN,
  PCI_ROM_ADDRESS,
  PCI_CONFIG_SIZE,
  guestEvents,
  type BarType,
} from './pci.js';
import { barMmapRanges, findCapabilities, msixHole, PAGE, type BarLayout, type MsixLayout } from './vfio-pci-layout.js';
import { IntxRouting } from './vfio-pci-intx.js';
import { DeviceAccess } from './vfio-pci-access.js';
import { romRegion } from './vfio-pci-rom.js';

export { barMmapRanges, msixHole, type MsixLayout } from './vfio-pci-layout.js';
export { ROM_MAX } from './vfio-pci-rom.js';

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
  private readonly intx: IntxRouting;
  private readonly access: DeviceAccess;
  private readonly cleanups: (() => void)[] = [];

  constructor(
    readonly interrupts: Interrupts,
    readonly assigned: AssignedDevice,
    readonly opts: VfioPciOptions,
  ) {
    super(opts.id, { vendor: 0, device: 0, classCode: 0 });
    this.access = new DeviceAccess(opts.id, assigned.device);
    this.intx = new IntxRouting(opts.id, new VfioIntx(assigned.device), interrupts.line(opts.gsi));
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
    const caps = findCapabilities(this.config);
    this.msix = caps.msix;
    this.msiCapOffset = caps.msiCapOffset;
    this.pmCapOffset = caps.pmCapOffset;
    if (dev.canReset) {
      try {
        dev.reset();
      } catch (e) {
        console.error(`tsvmm: ${assigned.host.name}: VFIO_DEVICE_RESET failed: ${(e as Error).message}`);
      }
    }
    this.setupBars();
    const rom = romRegion(this.name, this.opts.rom ?? {}, dev);
    if (rom) this.registerRom(rom.size, rom.region);
    this.setupMsi();
    this.config[PCI_INTERRUPT_LINE] = this.opts.gsi;
    this.enableIntx();
  }

  private emulate(off: number, len: number): void {
    this.emulated.fill(1, off, off + len);
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
          this.intx.poll();
          return this.access.regionRead(index, base + off, sz, size);
        },
        write: (off: number, sz: number, val: number | bigint) => {
          this.intx.poll();
          this.access.regionWrite(index, base + off, sz, val, size);
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

  /** Adds the emulated MSI-X table/PBA (or any overlay) above a BAR's direct mappings. */
  overlayBar(index: number, offset: number, region: MemoryRegion): void {
    const bar = this.bars[index];
    if (!bar) throw new Error(`${this.name}: no BAR${index} to overlay`);
    memoryTransaction(() => bar.region.addSubregion(offset, region, 2));
  }

  /** INTx on (at start, and when MSI and MSI-X are off). */
  private enableIntx(): void {
    this.intx.enable(this.config[PCI_INTERRUPT_PIN] !== 0);
  }
  private disableIntx(): void {
    this.intx.disable();
  }

  /** Userspace INTx unmasks done so far (undefined when VFIO unmasks from the resample eventfd). */
  get userspaceIntxUnmasks(): number | undefined {
    return this.intx.userspaceUnmasks;
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

  /** MSI-X and MSI (hw/vfio-pci-msi.ts): emulated capabilities over VFIO's vectors. */
  private setupMsi(): void {
    const host: MsiHost = {
      name: this.name,
      assigned: this.assigned,
      interrupts: this.interrupts,
      config: this.config,
      wmask: this.wmask,
      contain: (what, fn) => this.contain(what, fn),
      intx: { enable: () => this.enableIntx(), disable: () => this.disableIntx() },
    };
    const m = this.msix;
    const x = m && this.bars[m.tableBar] && this.bars[m.pbaBar] ? setupMsix(host, m) : undefined;
    if (m && x) {
      this.msixVectors = x.vectors;
      this.msixGroup = x.group;
      this.emulate(m.capOffset, 12);
      this.msixCap = x.cap;
      this.overlayBar(m.tableBar, m.tableOffset, x.cap.tableRegion);
      this.overlayBar(m.pbaBar, m.pbaOffset, x.cap.pbaRegion);
    }
    const p = this.msiCapOffset;
    const msi = p !== undefined ? setupMsi(host, p) : undefined;
    if (p !== undefined && msi) {
      this.msiVectors = msi.vectors;
      this.msiGroup = msi.group;
      this.msiCapSize = msi.size;
      this.emulate(p, msi.size);
      this.msiCap = msi.cap;
    }
  }

  // --- config space ----------------------------------------------------------------------------
  override configRead(off: number, size: number): number {
    if (off + size > PCI_CONFIG_SIZE) return 0xffffffff >>> (32 - 8 * size);
    const p = this.msiCapOffset;
    if (this.msiCap && p !== undefined && off < p + this.msiCapSize && p < off + size)
      this.contain('MSI capability read', () => this.msiCap!.beforeRead(off - p, size));
    let emu = 0;
    for (let i = 0; i < size; i++) emu += this.emulated[off + i]!;
    if (emu === size) return super.configRead(off, size);
    const real = this.access.configRead(off, size);
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
    const d3 = (this.access.configRead(pm + PCI_PM_CTRL, 2) & PCI_PM_CTRL_STATE_MASK) === 3;
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
      this.access.configWrite(off, len, value);
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
      if (!this.emulated[a]) this.access.configWrite(a, 1, b);
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
    if (this.msixVectors) disableVectors({ vectors: this.msixVectors, group: this.msixGroup! });
    if (this.msiVectors) disableVectors({ vectors: this.msiVectors, group: this.msiGroup! });
    this.disableIntx();
    for (const fn of this.cleanups.splice(0).reverse()) fn();
    this.intx.close();
  }

  // --- snapshot and migration -------------------------------------------------------------------
  // The device's own state (registers, FIFOs) lives in the device: VFIO migration v2
  // (core/vfio/migration.ts) hands it out as an opaque byte stream. PRE_COPY data goes in live
  // sections while the guest runs (saveLive), the rest after the vCPUs stop (stopAll) inside this
  // device's section, after its config space and MSI/MSI-X state. The destination's device (its
  // own instance) is RESUMING while the stream comes, STOP once loaded, and RUNNING only when the
  // machine runs (runAfterMigration). Any failure puts it back in RUNNING (abortMigration).
  private mig: VfioMigration | undefined;
  /** Source: what the device gave after the stop (the rest of pre-copy, then stop-copy). */
  private finalData: Uint8Array[] = [];
  /** Destination: the data of this device's section, written once the stream is in. */
  private pendingLoad: Uint8Array | undefined;
  /** Stopped by a migration (STOP): runs again with the machine. */
  private migStopped = false;

  /**
   * Why the device cannot move (QEMU's "VFIO device doesn't support migration"): its driver has
   * no VFIO migration, or offers no STOP_COPY. Asked of the device each time (one ioctl).
   */
  override migrationBlocker(): string | undefined {
    const p = VfioMigration.probe(this.assigned.device, this.assigned.host, this.name);
    if (p.supported) return undefined;
    return `VFIO device doesn't support migration (${describeHostDevice(this.assigned.host)}): ${p.reason}`;
  }

  /** Source: a save begins (→ PRE_COPY where the device offers it). */
  beginSave(): void {
    if (this.mig) this.abortMigration(); // a save or load left over (cannot happen through the machine)
    const mig = VfioMigration.open(this.assigned.device, this.assigned.host, this.name);
    mig.startSave();
    this.mig = mig;
    this.finalData = [];
  }

  /**
   * Source, after beginSave: the device's own log of the pages it writes by DMA over `ranges`
   * (IOVAs), where its driver offers VFIO_DEVICE_FEATURE_DMA_LOGGING; undefined when it offers
   * none or refuses these ranges (said on stderr): its writes then go unseen, and the caller must
   * count every page it can reach dirty.
   */
  startDmaLog(ranges: { iova: number; length: number }[]): DeviceDirtyLog | undefined {
    if (!this.mig?.caps.dmaLogging) return undefined;
    try {
      return DeviceDirtyLog.start(this.assigned.device, ranges, PAGE, this.name);
    } catch (e) {
      if (!(e instanceof MigrationError)) throw e;
      console.error(`tsvmm: ${this.name}: ${e.message}; every page it can reach counts dirty`);
      return undefined;
    }
  }

  /** The PRE_COPY data the device has now (while the guest runs; one call per RAM pass). */
  async saveLive(): Promise<Uint8Array | undefined> {
    const mig = this.mig;
    if (!mig?.caps.preCopy || this.migStopped) return undefined;
    return concat(await collect(mig.readPrecopy()));
  }

  /**
   * After the vCPUs stop: every device quiesced (P2P) before any enters STOP_COPY, then each one's
   * final data read to its end; the devices stay in STOP. On a failure every device is back in RUNNING.
   */
  static async stopAll(devices: readonly VfioPciDevice[]): Promise<number> {
    const migs = devices.map((d) => d.mig!);
    let bytes = 0;
    try {
      for (const d of devices) d.finalData = d.mig!.caps.preCopy ? await collect(d.mig!.readPrecopy()) : [];
      VfioMigration.stopCopyAll(migs);
      for (const d of devices) {
        d.finalData.push(...(await collect(d.mig!.readStopCopy())));
        d.mig!.finishSave();
        d.migStopped = true;
        bytes += d.finalData.reduce((n, c) => n + c.length, 0);
      }
    } catch (e) {
      for (const d of devices) d.abortMigration();
      throw e;
    }
    return bytes;
  }

  /** Config space, MSI and MSI-X (registers, masks, pending bits), then the device's data. */
  override saveState(w: StateWriter): void {
    super.saveState(w);
    w.bool(this.msiCap !== undefined);
    this.msiCap?.saveState(w);
    w.bool(this.msixCap !== undefined);
    this.msixCap?.saveState(w);
    // No data: the device was not stopped by a save (its section would restore a blank device).
    w.bool(this.migStopped);
    if (this.migStopped) w.blob(concat(this.finalData));
  }

  /** Destination: pre-copy data as it comes; the device goes RESUMING with the first. */
  async loadLive(payload: Uint8Array): Promise<void> {
    await this.loadingMig().write(payload);
  }

  private loadingMig(): VfioMigration {
    if (!this.mig) {
      const mig = VfioMigration.open(this.assigned.device, this.assigned.host, this.name);
      mig.startLoad();
      this.mig = mig;
    }
    return this.mig;
  }

  override loadState(r: StateReader, version: number): void {
    super.loadState(r, version);
    const has = (what: string, here: boolean) => {
      const there = r.bool(`whether it has ${what}`);
      if (there !== here)
        throw r.bad(`the stream's device ${there ? 'has' : 'has no'} ${what}, this one ${here ? 'has' : 'has not'}`);
      return here;
    };
    if (has('MSI', this.msiCap !== undefined)) this.msiCap!.loadState(r);
    if (has('MSI-X', this.msixCap !== undefined)) this.msixCap!.loadState(r);
    if (!r.bool('whether the device data follows'))
      throw r.bad('the stream has no state of the device itself (it was not saved by a migration)');
    this.pendingLoad = r.blob('the device data').slice();
  }

  /**
   * Destination, once the whole stream is in: the rest of the data written, RESUMING → STOP (the
   * driver takes it), the guest's command register back in the device. RUNNING comes with the machine.
   */
  async finishLoad(): Promise<void> {
    const mig = this.loadingMig();
    const data = this.pendingLoad;
    this.pendingLoad = undefined;
    if (data?.length) await mig.write(data);
    mig.finishLoad(false);
    this.migStopped = true;
    // Bus mastering and decode as the guest left them (QEMU's vfio_pci_load_config).
    this.access.configWrite(PCI_COMMAND, 2, this.config[PCI_COMMAND]! | (this.config[PCI_COMMAND + 1]! << 8));
  }

  /** The machine runs (a destination's first run, or the source going on): a stopped device goes RUNNING. */
  runAfterMigration(): void {
    if (!this.migStopped) return;
    this.migStopped = false;
    const mig = this.mig!;
    this.mig = undefined;
    this.finalData = [];
    mig.resume();
  }

  /** A save or load abandoned: the device back in RUNNING (by a reset on a destination); says how. */
  abortMigration(): string | undefined {
    const mig = this.mig;
    this.mig = undefined;
    this.finalData = [];
    this.pendingLoad = undefined;
    this.migStopped = false;
    return mig?.abort();
  }

  /** Bytes moved through the device's data fd by the current or last migration. */
  get migrationStats(): { precopyBytes: number; stopCopyBytes: number; loadedBytes: number } | undefined {
    return this.mig ? { ...this.mig.stats } : undefined;
  }
}

async function collect(it: AsyncIterable<Uint8Array>): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for await (const c of it) out.push(c);
  return out;
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}
