// A machine assembled from a MachineConfig: guest RAM (core/ram.ts), the board (machine/board.ts: the
// layout and the fixed devices), the assigned PCI devices (machine/devices.ts), the guest image
// (machine/boot.ts) and the vCPUs. Front ends see it as a MachineControl (machine/control.ts)
// only; everything inside is private. run() resolves with the exit status; close() releases
// every fd and mapping, whatever happened.
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { GuestRam, RamBackingError } from '../core/ram.js';
import { MAX_VIEW_BYTES } from '../core/native.js';
import { fmtBytes, hasCapIpcLock, memlockLimit } from '../core/vfio/limits.js';
import { MemoryRegion, memoryTransaction, type RamBacking } from '../core/memory/index.js';
import { Kvm } from '../core/kvm/kvm.js';
import type { KvmVm } from '../core/kvm/vm.js';
import { KvmInterrupts } from './interrupts.js';
import type { MachineConfig } from './config/config.js';
import type { E820Entry } from './loader/multiboot.js';
import type { Serial16550 } from '../hw/serial-16550.js';
import { PciBus, physAddrLimit, type PciDevice } from '../hw/pci.js';
import { assignBars } from '../hw/pci-bars.js';
import { VfioPciDevice } from '../hw/vfio-pci.js';
import type { DeviceDirtyLog } from '../core/vfio/migration.js';
import { Vfio } from '../core/vfio/vfio.js';
import { PassedFds, type PassedFd } from '../core/fdpass.js';
import { DeviceManager } from './devices.js';
import { GED_EVENT_POWER_BUTTON, type GenericEventDevice } from '../hw/ged.js';
import type { AcpiPciHotplug } from '../hw/pci-hotplug.js';
import { createBoard, HIGH_RAM_BASE, LOW_RAM_END, PCI_WINDOWS, pciIntxGsi, ramLayout } from './board.js';
import { bootImage } from './boot.js';
import { createViommu, type Viommu } from './viommu.js';
import { checkPassedVfio, resolveFdNames } from './fd-names.js';
import { describeStop, inspectMachine, pciDeviceState } from './inspect.js';
import { TsvmmError } from '../core/errors.js';
import type { Migratable } from '../core/state.js';
import {
  loadMachine,
  saveMachine,
  type DirtyLog,
  type MachineParts,
  type MigrationProgress,
} from './migration/machine-state.js';
import { PAGE_SIZE, type ByteSink, type ByteSource } from './migration/stream.js';
import { addressReader, WorkerRamEncoder } from './migration/ram-encoder.js';
import type {
  ExitCause,
  MachineControl,
  MachineDevices,
  MachineEvent,
  MachineInspection,
  MachineListener,
  MachineResult,
  MachineStatus,
} from './control.js';

export interface MachineOptions {
  /** Overrides where COM1 output goes (tests capture it). */
  serialOutput?: (bytes: Uint8Array) => void;
  kvmPath?: string;
  /** Fds opened by a privileged manager (tsvmm manager): /dev/kvm and VFIO groups. The machine
   *  owns them from here (a PassedFds is used as it is; a list is wrapped in one). */
  passedFds?: PassedFd[] | PassedFds;
}

export class Machine implements MachineControl {
  private readonly kvm: Kvm;
  private readonly vm: KvmVm;
  private readonly interrupts: KvmInterrupts;
  /** Guest RAM below 4 GiB (at most 3 GiB: loaders and boot tables go here). */
  private readonly ram: Uint8Array;
  /** All of guest RAM (core/ram.ts): high RAM is reached through guestRam.view(). */
  private readonly guestRam: GuestRam;
  private readonly e820: E820Entry[];
  private readonly serial: Serial16550;
  private readonly pciBus: PciBus;
  private readonly vfio: Vfio;
  /** The PCI devices (config and hot-plug), made by their driver's model. */
  private readonly deviceManager: DeviceManager;
  /** The vIOMMU (config.iommu): a virtio-iommu on the bus, named by the VIOT. */
  private viommu: Viommu | undefined;
  /** The one owner of passed fds: what no one took is closed with the machine. */
  private readonly passedFds: PassedFds;
  /** ACPI events (hot-plug, power button) for guests booted with ACPI tables (Linux). */
  private readonly ged: GenericEventDevice;
  private readonly pciHotplug: AcpiPciHotplug;
  /** The board's devices with state (serial, i8042, ACPI, GED, hot-plug registers). */
  private readonly boardState: Migratable[];
  /** Whether the guest was given ACPI tables that describe hot-plug (device removal asks it to eject). */
  private acpi = false;
  private readonly listeners = new Set<MachineListener>();
  /** Why the VM is paused when no one asked: a device reported an error. */
  private stopReason: 'internal-error' | undefined;
  private exitRequest: { status: number; reason: string; cause: ExitCause } | undefined;
  private closed = false;
  private readonly serialFd: number | undefined;
  private readonly deviceOps: MachineDevices = this.deviceControl();

  constructor(
    private readonly config: MachineConfig,
    opts: MachineOptions = {},
  ) {
    const passed = opts.passedFds instanceof PassedFds ? opts.passedFds : new PassedFds(opts.passedFds);
    this.passedFds = passed;
    const cleanups: (() => void)[] = [() => passed.close()];
    try {
      const kvmFd = passed.take({ kind: 'kvm' });
      this.kvm = kvmFd !== undefined ? Kvm.fromFd(kvmFd) : Kvm.open(opts.kvmPath);
      cleanups.push(() => this.kvm.close());
      const deviceSpecs = resolveFdNames(config.devices, passed.list);
      checkPassedVfio(deviceSpecs, passed.list);
      this.vm = this.kvm.createVm();
      cleanups.push(() => this.vm.close());
      this.interrupts = new KvmInterrupts(this.vm);

      // Guest RAM, as config.memory asks (core/ram.ts): RAM below the 32-bit PCI hole, the rest
      // above 4 GiB. With devices assigned it is all pinned, so it is prefaulted first (in parallel).
      const size = config.memoryBytes;
      const pinned = config.devices.length > 0;
      this.checkPhysAddrBits(size);
      this.guestRam = GuestRam.create(config.memory, config.name, { resident: pinned || config.memory.prealloc });
      cleanups.push(() => this.guestRam.close());
      const { lowSize, highSize, e820 } = ramLayout(size);
      this.e820 = e820;
      if (pinned && this.guestRam.plan.note) console.error(`tsvmm: note: ${this.guestRam.plan.note}`);
      // Prefault what will be pinned, in parallel, where the host has cores to do it on (with one,
      // MAP_DMA faulting and pinning in one pass is quicker: bench/results/memory.md) — unless the
      // locked-memory limit will refuse the pinning (the DMA listener says so, with the fix).
      const prefaultForPinning = pinned && availableParallelism() > 1 && (size <= memlockLimit() || hasCapIpcLock());
      if (prefaultForPinning || config.memory.prealloc) {
        this.guestRam.prefault({
          progress: (threads) =>
            console.error(
              `tsvmm: preparing ${fmtBytes(size)} of guest RAM (${this.guestRam.plan.describe}): prefaulting on ${threads} thread(s)${pinned ? ', then pinning it for DMA' : ''}…`,
            ),
        });
      }
      const fd = this.guestRam.fd;
      const backing = (off: number, len: number): RamBacking => ({
        hostAddr: this.guestRam.hostAddr + BigInt(off),
        ...(fd !== undefined ? { fd, fdOffset: off } : {}),
        ...(len <= MAX_VIEW_BYTES
          ? { bytes: this.guestRam.view(off, len) }
          : { chunks: this.guestRam.chunks(off, len) }),
      });
      const low = backing(0, lowSize);
      this.ram = low.bytes!;
      memoryTransaction(() => {
        this.vm.memory.root.addSubregion(0, MemoryRegion.ram('ram-below-4g', lowSize, low));
        if (highSize > 0)
          this.vm.memory.root.addSubregion(
            HIGH_RAM_BASE,
            MemoryRegion.ram('ram-above-4g', highSize, backing(lowSize, highSize)),
          );
      });

      // The board's devices. PCI BARs live in their own container under RAM (lower priority), so
      // a BAR a guest places over RAM is shadowed rather than breaking RAM (QEMU behaves the same).
      this.serialFd =
        !opts.serialOutput && config.serial.output === 'file' ? openSync(config.serial.path!, 'w') : undefined;
      if (this.serialFd !== undefined) cleanups.push(() => closeSync(this.serialFd!));
      const output =
        opts.serialOutput ??
        (config.serial.output === 'none'
          ? () => {}
          : this.serialFd !== undefined
            ? (b: Uint8Array) => {
                writeSync(this.serialFd!, b);
              }
            : (b: Uint8Array) => {
                process.stdout.write(b);
              });
      const pciMem = MemoryRegion.container('pci-mem', 2 ** 52);
      this.pciBus = new PciBus(pciMem, this.vm.io.root, physAddrLimit(this.kvm.supportedCpuid())); // the vCPUs get this CPUID
      const board = createBoard({
        serialOutput: output,
        line: (gsi) => this.interrupts.line(gsi),
        // Every vCPU answers reads of published registers on its own thread, vCPU 0 without leaving native code.
        registers: (port: number, size: number) => this.vm.registers.window(port, size),
        pciBus: this.pciBus,
        exit: (status, reason) => this.endWith(status, reason, 'guest'),
        ejected: (slot) => this.deviceManager.ejected(slot),
      });
      this.serial = board.serial;
      this.ged = board.ged;
      this.pciHotplug = board.pciHotplug;
      this.boardState = board.migratable;
      // One memory transaction: each space renders its flat view once, not once per device (start-up time).
      memoryTransaction(() => {
        this.vm.memory.root.addSubregion(0, pciMem, -1);
        for (const d of board.table)
          (d.space === 'io' ? this.vm.io : this.vm.memory).root.addSubregion(d.address, d.region);
      });

      // Assigned devices: the VFIO container maps guest RAM for DMA as the first group joins.
      // VFIO takes the passed group, cdev and iommufd fds it uses from the PassedFds.
      this.vfio = new Vfio(this.vm, { backend: config.vfio.backend, passed });
      this.deviceManager = new DeviceManager({
        vfio: this.vfio,
        interrupts: this.interrupts,
        pciBus: this.pciBus,
        passedFds: passed,
        pciHotplug: this.pciHotplug,
        windows: PCI_WINDOWS,
        intxGsi: pciIntxGsi,
        acpi: () => this.acpi,
        unplug: () => this.config.unplug,
        event: (e) => this.emit(e),
        deviceError: () => this.deviceError(),
        viommu: () => this.viommu,
      });
      cleanups.push(() => this.releaseDevices());
      // The vIOMMU goes in its own slot before the devices take the first free ones, or after them.
      const addViommu = () => {
        if (!config.iommu) return;
        this.viommu = createViommu({
          bus: this.pciBus,
          slot: config.iommu.slot,
          memory: this.vm.memory,
          interrupts: this.interrupts,
          intxGsi: pciIntxGsi,
          // Doorbells on ioeventfds only where they save a wait: an application processor's
          // MMIO exit waits for the main thread; vCPU 0's is answered inline, quicker than an eventfd.
          ioeventfd: config.vcpus > 1 ? this.vm.fd : undefined,
          vfio: this.vfio,
        });
      };
      if (config.iommu?.slot !== undefined) addViommu();
      deviceSpecs.forEach((d, i) => {
        this.deviceManager.add(d, `vfio${i}`);
      });
      if (config.iommu?.slot === undefined) addViommu();
      this.deviceManager.configured(this.viommu);
      assignBars(this.pciBus, PCI_WINDOWS.mmio32, PCI_WINDOWS.io);

      for (let i = 0; i < config.vcpus; i++) this.setupVcpu(this.vm.createVcpu().id);
      this.loadGuest();
    } catch (e) {
      for (const c of cleanups.reverse()) {
        try {
          c();
        } catch {
          /* already failing: keep the first error */
        }
      }
      throw e;
    }
  }

  get devices(): MachineDevices {
    return this.deviceOps;
  }

  get name(): string {
    return this.config.name;
  }

  private isBehindIommu(d: PciDevice): boolean {
    return this.deviceManager.devices.some((x) => x === d && this.deviceManager.isBehindIommu(x));
  }

  private deviceControl(): MachineDevices {
    const dm = () => this.deviceManager;
    return {
      list: () =>
        [...this.pciBus.devices.values()].map((d) => ({
          ...pciDeviceState(d),
          ...(this.isBehindIommu(d) ? { iommu: true } : {}),
        })),
      add: (spec, fds = []) => {
        dm().hotplug(spec, fds);
      },
      remove: (id) => {
        const dev = dm().find(id);
        if (dev) dm().unplug(dev);
        return dev !== undefined;
      },
      signalNotifier: (id, which) => {
        const dev = dm().find(id);
        if (dev) dm().signalNotifier(dev, which);
        return dev !== undefined;
      },
    };
  }

  on(listener: MachineListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(e: MachineEvent): void {
    for (const l of [...this.listeners]) l(e);
  }

  status(): MachineStatus {
    return this.vm.paused ? (this.stopReason ?? 'paused') : 'running';
  }

  pause(): boolean {
    if (this.vm.paused) return false;
    this.vm.pause();
    return true;
  }

  resume(): boolean {
    this.stopReason = undefined;
    if (!this.vm.paused) return false;
    this.runMigratedDevices();
    this.vm.resume();
    return true;
  }

  /** A device reported an unrecoverable error: the VM stops until resume(). */
  private deviceError(): void {
    if (!this.vm.paused) {
      this.vm.pause();
      this.stopReason = 'internal-error';
      this.emit({ type: 'stopped', reason: 'internal-error' });
    }
  }

  /**
   * A host power-down request: the ACPI power button, through the GED. A guest without ACPI, or
   * one that ignores the button, runs on, as under QEMU.
   */
  powerdown(): boolean {
    if (!this.acpi) return false;
    this.ged.notify(GED_EVENT_POWER_BUTTON);
    return true;
  }

  private releaseDevices(): void {
    if (this.viommu) {
      this.pciBus.detach(this.viommu.dev);
      this.viommu.dev.destroy();
      this.viommu = undefined;
    }
    this.deviceManager.releaseAll();
    this.vfio.close();
  }

  /** Guest RAM must end below the physical addresses the vCPU has (CPUID 0x80000008 EAX[7:0]). */
  private checkPhysAddrBits(size: number): void {
    const bits = this.kvm.supportedCpuid().find((e) => e.function === 0x80000008)?.eax;
    if (bits === undefined || size <= LOW_RAM_END) return;
    const top = HIGH_RAM_BASE + size - LOW_RAM_END,
      max = 2 ** (bits & 0xff);
    if (top > max)
      throw new RamBackingError(
        `${fmtBytes(size)} of guest RAM ends at 0x${top.toString(16)}, beyond this CPU's ${bits & 0xff}-bit physical addresses`,
        `give the VM at most ${fmtBytes(max - HIGH_RAM_BASE + LOW_RAM_END)}`,
      );
  }

  private setupVcpu(id: number): void {
    const v = this.vm.vcpus[id]!;
    // KVM reports what it can virtualise; the APIC ID fields must name this vCPU.
    const cpuid = this.kvm.supportedCpuid().map((e) => {
      // ECX bit 31: "running under a hypervisor", which KVM does not set; guests look for KVM's leaves (kvmclock) only with it.
      if (e.function === 1) return { ...e, ebx: (e.ebx & 0x00ffffff) | (id << 24), ecx: (e.ecx | 0x80000000) >>> 0 };
      if (e.function === 0xb || e.function === 0x1f) return { ...e, edx: id };
      return e;
    });
    v.setCpuid(cpuid);
  }

  private loadGuest(): void {
    const { acpi } = bootImage(
      {
        kernel: this.config.kernel,
        cmdline: this.config.cmdline,
        ram: this.ram,
        e820: this.e820,
        pciDevices: this.pciBus.devices.values(),
        cpus: this.vm.vcpus.length,
        cpuid: this.kvm.supportedCpuid(),
        bootVcpu: this.vm.vcpus[0]!,
        ...(this.viommu ? { viot: this.viommu.viot() } : {}),
      },
      new Uint8Array(readFileSync(this.config.kernel.path)),
    );
    if (acpi) this.acpi = true;
  }

  /**
   * With every vCPU parked and no I/O half done, the irqchip, PIT and every vCPU go back to their
   * power-on state (application processors wait for INIT/SIPI again), every assigned device is
   * reset, the guest image and boot information are loaded again and the boot vCPU starts at the
   * entry point (RAM is not cleared, as on real hardware).
   */
  async reset(): Promise<void> {
    await this.vm.reset(() => {
      this.vm.resetToPowerOn();
      this.deviceManager.reset();
      this.viommu?.dev.reset();
      this.viommu?.reset();
      // No event from before the reset is delivered after it; an unplug the guest was asked for
      // and has not done yet is completed (a rebooting guest will not answer it).
      this.ged.reset();
      this.pciHotplug.reset();
      this.deviceManager.completePendingUnplugs();
      this.loadGuest();
    });
  }

  exit(status: number, reason: string, cause: Exclude<ExitCause, 'guest'> = 'host-ui'): void {
    this.endWith(status, reason, cause);
  }

  /** Ends the VM with a status (first caller wins). */
  private endWith(status: number, reason: string, cause: ExitCause): void {
    if (!this.exitRequest) this.exitRequest = { status, reason, cause };
    this.vm.stop();
  }

  async run(): Promise<MachineResult> {
    let stdinListener: ((b: Buffer) => void) | undefined;
    if (this.config.serial.input === 'stdin') {
      stdinListener = (b: Buffer) => this.serial.input(b);
      process.stdin.on('data', stdinListener);
    }
    try {
      this.runMigratedDevices();
      const stops = await this.vm.run();
      this.serial.flush();
      if (this.exitRequest) return { ...this.exitRequest, stops };
      const bad = stops.find((s) => s.reason !== 'stopped') ?? stops[0]!;
      return { ...describeStop(bad), cause: 'guest', stops };
    } finally {
      if (stdinListener) {
        process.stdin.off('data', stdinListener);
        process.stdin.pause();
      }
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    // Every step runs even if one before it failed (pinned RAM and fds must go); the first error is thrown.
    const steps = [
      () => this.serial.flush(),
      () => this.releaseDevices(),
      () => this.vm.close(),
      () => this.guestRam.close(),
      () => this.serialFd !== undefined && closeSync(this.serialFd),
      () => this.kvm.close(),
      () => this.passedFds.close(),
    ];
    let first: unknown;
    for (const step of steps) {
      try {
        step();
      } catch (e) {
        first ??= e;
      }
    }
    if (first !== undefined) throw first;
  }

  // --- snapshot and migration (machine/migration/) -----------------------------------------------
  /** Why the machine cannot be saved now: one line per device that cannot migrate. */
  migrationBlockers(): string[] {
    const out: string[] = [];
    for (const d of this.pciBus.devices.values()) {
      const why = d.migrationBlocker();
      if (why === undefined) continue;
      const host = (d as Partial<VfioPciDevice>).assigned?.host.name;
      out.push(`${d.name}${host ? ` (${host})` : ''}: ${why}`);
    }
    return out;
  }

  /** What a snapshot holds, in order, and what the destination must match. */
  private migrationParts(): MachineParts {
    const { lowSize, highSize } = ramLayout(this.config.memoryBytes);
    const parts: Migratable[] = [
      this.vm.irqchipState,
      ...this.vm.vcpus,
      ...this.boardState,
      ...[...this.pciBus.devices.values()].sort((a, b) => a.devfn - b.devfn),
    ];
    return {
      description: {
        memory: this.config.memoryBytes,
        ramLayout: { lowSize, highSize },
        vcpus: this.vm.vcpus.length,
        irqchip: this.vm.irqchip,
        sections: parts.map((p) => p.stateId),
      },
      parts,
      last: [this.vm.clockState],
      ram: {
        size: this.config.memoryBytes,
        view: (off, len) => this.guestRam.view(off, len),
        reader: addressReader(this.guestRam.hostAddr),
      },
    };
  }

  /**
   * Writes the whole machine to `sink`. With `live` (and a KVM that keeps a dirty log) RAM goes
   * while the guest runs, pass after pass, and the vCPUs stop only for the rest; otherwise they
   * stop first. Either way they stay stopped after it (resume() lets them go on, as after QEMU's
   * migrate); `onStop` says when. Refused at once, the VM untouched, while a device has a
   * migration blocker.
   */
  async saveState(
    sink: ByteSink,
    opts: {
      progress?: (p: MigrationProgress) => void;
      cancelled?: () => boolean;
      live?: boolean;
      onStop?: () => void;
      onPass?: (pass: number) => void;
      downtimeLimitMs?: number;
      maxBandwidth?: number;
    } = {},
  ): Promise<MigrationProgress> {
    const blockers = this.migrationBlockers();
    if (blockers.length)
      throw new TsvmmError('ERR_MIGRATION', `cannot migrate '${this.name}': ${blockers.join('; ')}`, {
        fix: 'remove the device (device_del) first, or stop the VM and start it again on the destination',
      });
    // Assigned devices that migrate: PRE_COPY (where offered) from now, stopped with the vCPUs.
    const assigned = this.assignedDevices();
    let deviceBytes = 0;
    const stop = async () => {
      await this.vm.park();
      this.serial.flush(); // what the guest printed before the stop goes out before the state does
      if (assigned.length) deviceBytes = await VfioPciDevice.stopAll(assigned);
      opts.onStop?.();
    };
    const wantLive = opts.live && !this.vm.paused;
    const progress = opts.progress;
    let dmaLogs: DmaLog[] = [];
    try {
      for (const d of assigned) d.beginSave();
      // Devices that log their own DMA writes add them to KVM's log; the others' writes go unseen.
      if (wantLive) dmaLogs = this.startDmaLogs(assigned);
      const live = wantLive ? this.dirtyLog(dmaLogs) : undefined;
      const p = await saveMachine(this.migrationParts(), sink, {
        stop,
        ...(live ? { live } : {}),
        ...(progress ? { progress: (p: MigrationProgress) => progress({ ...p, deviceBytes }) } : {}),
        ...(opts.cancelled ? { cancelled: opts.cancelled } : {}),
        ...(opts.downtimeLimitMs !== undefined ? { downtimeLimitMs: opts.downtimeLimitMs } : {}),
        ...(opts.maxBandwidth !== undefined ? { maxBandwidth: opts.maxBandwidth } : {}),
        untrackedDma: assigned.filter((d) => !dmaLogs.some((l) => l.device === d)).map((d) => d.name),
        // RAM is encoded on a thread of its own: this one runs vCPU 0 between the stream's writes.
        encoder: () => WorkerRamEncoder.start({ hostAddr: this.guestRam.hostAddr }),
        ...(process.env.TSVMM_MIGRATION_TRACE ? { trace: (l: string) => console.error(`tsvmm: migration ${l}`) } : {}),
        ...(opts.onPass ? { onPass: opts.onPass } : {}),
      });
      stopDmaLogs(dmaLogs);
      return { ...p, deviceBytes };
    } catch (e) {
      stopDmaLogs(dmaLogs);
      // The source goes on: its devices back in RUNNING (the caller resumes the vCPUs).
      for (const d of assigned) {
        const how = d.abortMigration();
        if (how) console.error(`tsvmm: ${d.name}: migration abandoned: ${how}`);
      }
      throw e;
    }
  }

  /** The assigned devices (a migration has checked they can migrate). */
  private assignedDevices(): VfioPciDevice[] {
    return [...this.pciBus.devices.values()].filter((d): d is VfioPciDevice => d instanceof VfioPciDevice);
  }

  /** Devices a migration left stopped (the source after a save, a destination after its load) run with the vCPUs. */
  private runMigratedDevices(): void {
    for (const d of this.assignedDevices()) d.runAfterMigration();
  }

  /** Guest RAM as the guest-physical ranges a device behind no vIOMMU reaches (IOVA = GPA), with their first page of RAM. */
  private ramRanges(): { iova: number; length: number; ramPage: number }[] {
    const { lowSize, highSize } = ramLayout(this.config.memoryBytes);
    const out = [{ iova: 0, length: lowSize, ramPage: 0 }];
    if (highSize) out.push({ iova: HIGH_RAM_BASE, length: highSize, ramPage: lowSize / PAGE_SIZE });
    return out;
  }

  /**
   * The DMA dirty logs of the assigned devices that offer one, over all of guest RAM. A device
   * behind the vIOMMU is left out: its IOVAs are the guest's, not guest-physical addresses.
   */
  private startDmaLogs(assigned: readonly VfioPciDevice[]): DmaLog[] {
    const ranges = this.ramRanges().map(({ iova, length }) => ({ iova, length }));
    const out: DmaLog[] = [];
    for (const device of assigned) {
      if (this.isBehindIommu(device)) continue;
      const log = device.startDmaLog(ranges);
      if (log) out.push({ device, log });
    }
    return out;
  }

  /**
   * KVM's dirty log over guest RAM (slots mapped to pages of it by their host addresses), and the
   * pages `dmaLogs`' devices wrote by DMA.
   */
  private dirtyLog(dmaLogs: readonly DmaLog[] = []): DirtyLog {
    const memslots = this.vm.memslots;
    const base = this.guestRam.hostAddr,
      ramPages = this.config.memoryBytes / PAGE_SIZE;
    // Each guest-RAM slot as pages of guest RAM; a bitmap per slot, reused from sync to sync.
    const slots = () =>
      memslots
        .ramSlots()
        .map((s) => ({ slot: s.slot, ramPage: Number(s.hva - base) / PAGE_SIZE, pages: s.size / PAGE_SIZE }))
        .filter((s) => Number.isInteger(s.ramPage) && s.ramPage >= 0 && s.ramPage + s.pages <= ramPages);
    const bitmaps = new Map<number, Uint32Array>();
    const vmFd = this.vm.fd;
    const ranges = dmaLogs.length ? this.ramRanges() : [];
    return {
      start: () => memslots.setDirtyLogging(true),
      stop: () => memslots.setDirtyLogging(false),
      manual: () => (memslots.manualDirtyLog ? { vmFd, slots: slots() } : undefined),
      sync: (into) => {
        for (const s of slots()) {
          const words = Math.ceil(s.pages / 64) * 2;
          let bits = bitmaps.get(s.slot);
          if (bits?.length !== words) bitmaps.set(s.slot, (bits = new Uint32Array(words)));
          memslots.getDirtyLog(s.slot, bits);
          into.orAt(s.ramPage, bits, s.pages);
        }
        for (const { log } of dmaLogs)
          for (const r of ranges) {
            let report: Uint8Array;
            try {
              report = log.bitmap(r.iova, r.length);
            } catch (e) {
              // The uAPI: a report that failed is a log lost, so the whole range counts dirty.
              console.error(`tsvmm: ${(e as Error).message}`);
              into.setRange(r.ramPage, r.length / PAGE_SIZE);
              continue;
            }
            into.orDeviceReport(r.ramPage, r.length / PAGE_SIZE, report, log.pageSize);
          }
      },
    };
  }

  /** Reads a saved machine into this one before it first runs (the stream must match its config). */
  async loadState(
    source: ByteSource,
    opts: { progress?: (p: MigrationProgress) => void } = {},
  ): Promise<MigrationProgress> {
    if (this.vm.started)
      throw new TsvmmError('ERR_MIGRATION', `'${this.name}' has already run: a stream loads only into a new VM`);
    const assigned = this.assignedDevices();
    try {
      const p = await loadMachine(this.migrationParts(), source, opts);
      for (const d of assigned) await d.finishLoad();
      return p;
    } catch (e) {
      // A RESUMING device is reset: the destination exits with the error, its device left usable.
      for (const d of assigned) d.abortMigration();
      throw e;
    }
  }

  inspect(): MachineInspection {
    return inspectMachine({
      memory: { size: this.config.memoryBytes, backing: this.guestRam.plan.describe },
      vm: this.vm,
      vfio: this.vfio,
      devices: this.deviceManager.devices as readonly VfioPciDevice[],
      pciDevices: this.devices.list(),
      ...(this.viommu ? { viommu: { ...this.viommu.iommu.inspect(), host: this.viommu.host() } } : {}),
    });
  }
}

/** An assigned device's own DMA dirty log, running for a save. */
interface DmaLog {
  device: VfioPciDevice;
  log: DeviceDirtyLog;
}

/** Ends the devices' DMA logs (a device reset by an abandoned save may have ended one already). */
function stopDmaLogs(logs: readonly DmaLog[]): void {
  for (const { device, log } of logs) {
    try {
      log.stop();
    } catch (e) {
      console.error(`tsvmm: ${device.name}: stopping its DMA dirty log: ${(e as Error).message}`);
    }
  }
}
