// A machine assembled from a VmConfig: guest RAM (core/ram.ts), the PC devices tsvmm emulates
// (COM1, the PCI host bridge, a debug-exit port), the guest image, and the vCPUs. run()
// resolves with the exit status; close() releases every fd and mapping, whatever happened.
import { closeSync, existsSync, openSync, readFileSync, writeSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { GuestRam, RamBackingError } from '../core/ram.js';
import { MAX_VIEW_BYTES } from '../core/native.js';
import { fmtBytes, hasCapIpcLock, memlockLimit } from '../core/vfio/limits.js';
import { MemoryRegion, memoryTransaction, type RamBacking } from '../core/memory/index.js';
import { Kvm } from '../core/kvm/kvm.js';
import { Vm } from '../core/kvm/vm.js';
import type { VcpuStop } from '../core/kvm/exit-channel.js';
import { KvmInterrupts } from './interrupts.js';
import type { VfioPciConfig, VmConfig } from './config/config.js';
import {
  loadElf32,
  hasMultibootHeader,
  writeMultibootInfo,
  enterProtectedMode,
  LoaderError,
  type E820Entry,
} from './loader/multiboot.js';
import { Serial16550 } from '../hw/serial-16550.js';
import { DebugExit, DEBUG_EXIT_PORT } from '../hw/debug-exit.js';
import { PciBus, assignBars, physAddrLimit } from '../hw/pci.js';
import { VfioPciDevice } from '../hw/vfio-pci.js';
import { Vfio } from '../core/vfio/vfio.js';
import { findHostDevice } from '../core/vfio/sysfs.js';
import { FdPassError, PassedFds, type PassedFd } from '../core/fdpass.js';
import { DeviceManager } from './devices.js';
import { PciHostBridge, PCI_CONF1_PORT } from '../hw/pci-host.js';
import { bootLinux, isBzImage } from './loader/linux.js';
import { ACPI_SLEEP_CONTROL_PORT } from '../hw/acpi.js';
import { AcpiSleepControl } from '../hw/acpi-pm.js';
import { I8042, I8042_COMMAND_PORT, I8042_DATA_PORT } from '../hw/i8042.js';
import { GenericEventDevice, GED_EVENT_PCI_HOTPLUG, GED_EVENT_POWER_BUTTON, GED_GSI, GED_PORT } from '../hw/ged.js';
import { AcpiPciHotplug, PCI_HOTPLUG_PORT } from '../hw/pci-hotplug.js';

// Guest-physical layout (PC-like): RAM below the 32-bit PCI hole, the rest above 4 GiB.
export const LOW_RAM_END = 0xc000_0000;
export const PCI_MMIO32_BASE = 0xc000_0000;
export const PCI_MMIO32_END = 0xfec0_0000; // IOAPIC and LAPIC live above
export const HIGH_RAM_BASE = 2 ** 32;
export const MULTIBOOT_INFO_ADDR = 0x9000;
export const COM1_PORT = 0x3f8,
  COM1_IRQ = 4;
export const PCI_IO_BASE = 0xc000,
  PCI_IO_END = 0x10000;
/** INTx of PCI devices: IOAPIC pins 16-23 (like q35's PIRQs), one per device where possible. */
export const PCI_INTX_GSI_BASE = 16;
/** A slot's INTx line, fixed by the slot (slot 1 → 16 … slot 8 → 23, then round again), so the
 *  DSDT can route slots that fill up later (hot-plug). */
export const pciIntxGsi = (slot: number): number => PCI_INTX_GSI_BASE + ((slot + 7) % 8);
/** Slots a guest is told it may find devices in later (slot 0 is the host bridge's). */
export const HOTPLUG_SLOTS = Array.from({ length: 31 }, (_, i) => i + 1);

export interface MachineOptions {
  /** Overrides where COM1 output goes (tests capture it). */
  serialOutput?: (bytes: Uint8Array) => void;
  kvmPath?: string;
  /** Fds opened by a privileged manager (tsvmm manager): /dev/kvm and VFIO groups. The machine
   *  owns them from here (a PassedFds is used as it is; a list is wrapped in one). */
  passedFds?: PassedFd[] | PassedFds;
}

export interface MachineResult {
  status: number;
  /** Why the machine stopped, in words. */
  reason: string;
  stops: VcpuStop[];
}

export class Machine {
  readonly kvm: Kvm;
  readonly vm: Vm;
  /** What device models raise interrupts through (KVM GSI routes and irqfds). */
  readonly interrupts: KvmInterrupts;
  /** Guest RAM below 4 GiB (at most 3 GiB: loaders and boot tables go here). */
  readonly ram: Uint8Array;
  /** All of guest RAM (core/ram.ts): high RAM is reached through guestRam.view(). */
  readonly guestRam: GuestRam;
  readonly serial: Serial16550;
  readonly pciBus: PciBus;
  readonly pciHost: PciHostBridge;
  readonly e820: E820Entry[] = [];
  readonly vfio: Vfio;
  /** The PCI devices (config and hot-plug), made by their driver's model. */
  readonly deviceManager: DeviceManager;
  /** The one owner of passed fds: what no one took is closed with the machine. */
  readonly passedFds: PassedFds;
  /** ACPI events (hot-plug, power button) for guests booted with ACPI tables (Linux). */
  readonly ged: GenericEventDevice;
  readonly pciHotplug: AcpiPciHotplug;
  /** Whether the guest was given ACPI tables that describe hot-plug (device_del asks it to eject). */
  acpi = false;
  /** Called when a device has left the machine (after the guest's eject, or a surprise removal). */
  onDeviceDeleted: ((id: string) => void) | undefined;
  /** Machine events for the front end (QMP): VFIO_REQUEST, VFIO_ERROR, STOP. */
  onEvent: ((event: string, data?: Record<string, unknown>) => void) | undefined;
  /** Why the VM is stopped when no one asked (QMP query-status): a device reported an error. */
  stopReason: 'internal-error' | undefined;
  private exit: { status: number; reason: string } | undefined;
  private closed = false;
  private readonly serialFd: number | undefined;

  constructor(
    readonly config: VmConfig,
    opts: MachineOptions = {},
  ) {
    const passed = opts.passedFds instanceof PassedFds ? opts.passedFds : new PassedFds(opts.passedFds);
    this.passedFds = passed;
    const cleanups: (() => void)[] = [() => passed.close()];
    try {
      const kvmFd = passed.take({ kind: 'kvm' });
      this.kvm = kvmFd !== undefined ? Kvm.fromFd(kvmFd) : Kvm.open(opts.kvmPath);
      cleanups.push(() => this.kvm.close());
      this.deviceSpecs = resolveFdNames(config.devices, passed.list);
      this.checkPassedVfio(passed.list);
      this.vm = new Vm(this.kvm);
      cleanups.push(() => this.vm.close());
      this.interrupts = new KvmInterrupts(this.vm);

      // Guest RAM, as config.memory asks (core/ram.ts): RAM below the 32-bit PCI hole, the rest
      // above 4 GiB. With devices assigned it is all pinned, so it is prefaulted first (in parallel).
      const size = config.memoryBytes;
      const pinned = config.devices.length > 0;
      this.checkPhysAddrBits(size);
      this.guestRam = GuestRam.create(config.memory, config.name, { resident: pinned || config.memory.prealloc });
      cleanups.push(() => this.guestRam.close());
      const lowSize = Math.min(size, LOW_RAM_END);
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
        if (size > lowSize)
          this.vm.memory.root.addSubregion(
            HIGH_RAM_BASE,
            MemoryRegion.ram('ram-above-4g', size - lowSize, backing(lowSize, size - lowSize)),
          );
      });
      this.e820.push({ addr: 0, size: 0x9fc00, type: 1 }, { addr: 0x9fc00, size: 0x60400, type: 2 });
      this.e820.push({ addr: 0x100000, size: lowSize - 0x100000, type: 1 });
      if (size > lowSize) this.e820.push({ addr: HIGH_RAM_BASE, size: size - lowSize, type: 1 });

      // Devices. PCI BARs live in their own container under RAM (lower priority), so a BAR
      // a guest places over RAM is shadowed rather than breaking RAM (QEMU behaves the same).
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
      // The board's devices join their address spaces in one memory transaction: each space renders
      // its flat view once, not once per device (start-up time).
      const joins: Array<() => void> = [];
      const attach = (root: MemoryRegion, addr: number, region: MemoryRegion, priority?: number) =>
        joins.push(() => root.addSubregion(addr, region, priority));
      this.serial = new Serial16550({ output, irq: this.interrupts.line(COM1_IRQ) });
      attach(this.vm.io.root, COM1_PORT, this.serial.region);
      attach(
        this.vm.io.root,
        DEBUG_EXIT_PORT,
        new DebugExit((v) => this.requestExit(v & 0xff, `guest wrote ${v} to the debug-exit port`)).region,
      );
      // PC board devices, as QEMU's pc/q35 have them whatever the guest: without ACPI, Linux
      // reboots through the keyboard controller's reset line; with it, powers off by the ACPI
      // sleep registers the FADT names (machine/loader/linux.ts writes the tables).
      const i8042 = new I8042({
        onReset: () =>
          this.requestExit(
            0,
            'guest reset the machine through the i8042 (tsvmm does not reboot; like QEMU -no-reboot)',
          ),
      });
      attach(this.vm.io.root, I8042_DATA_PORT, i8042.data);
      attach(this.vm.io.root, I8042_COMMAND_PORT, i8042.command);
      attach(
        this.vm.io.root,
        ACPI_SLEEP_CONTROL_PORT,
        new AcpiSleepControl({
          onPowerOff: () => this.requestExit(0, 'guest powered off (ACPI S5)'),
          onOther: (v) =>
            console.error(`tsvmm: guest asked for sleep state SLP_TYP=${(v >> 2) & 7}, which is not offered; ignored`),
        }).region,
      );
      const pciMem = MemoryRegion.container('pci-mem', 2 ** 52);
      attach(this.vm.memory.root, 0, pciMem, -1);
      this.pciBus = new PciBus(pciMem, this.vm.io.root, physAddrLimit(this.kvm.supportedCpuid())); // the vCPUs get this CPUID
      this.pciHost = new PciHostBridge(this.pciBus, {
        onResetRequest: () =>
          this.requestExit(0, 'guest requested a reset (tsvmm does not reboot; like QEMU -no-reboot)'),
      });
      attach(this.vm.io.root, PCI_CONF1_PORT, this.pciHost.conf1);
      this.ged = new GenericEventDevice(this.interrupts.line(GED_GSI));
      attach(this.vm.io.root, GED_PORT, this.ged.region);
      this.pciHotplug = new AcpiPciHotplug(
        () => this.ged.notify(GED_EVENT_PCI_HOTPLUG),
        (slot) => this.deviceManager.ejected(slot),
      );
      attach(this.vm.io.root, PCI_HOTPLUG_PORT, this.pciHotplug.region);
      memoryTransaction(() => joins.forEach((join) => join()));

      // Assigned devices: the VFIO container maps guest RAM for DMA as the first group joins.
      // VFIO takes the passed group, cdev and iommufd fds it uses from the PassedFds.
      this.vfio = new Vfio(this.vm, { backend: config.vfio.backend, passed });
      this.deviceManager = new DeviceManager({
        vfio: this.vfio,
        interrupts: this.interrupts,
        pciBus: this.pciBus,
        passedFds: passed,
        pciHotplug: this.pciHotplug,
        windows: { mmio32: { base: PCI_MMIO32_BASE, end: PCI_MMIO32_END }, io: { base: PCI_IO_BASE, end: PCI_IO_END } },
        intxGsi: pciIntxGsi,
        acpi: () => this.acpi,
        unplug: () => this.config.unplug,
        deleted: (id) => this.onDeviceDeleted?.(id),
        event: (event, data) => this.onEvent?.(event, data),
        deviceError: () => this.deviceError(),
      });
      cleanups.push(() => this.releaseDevices());
      this.deviceSpecs.forEach((d, i) => {
        this.deviceManager.add(d, `vfio${i}`);
      });
      assignBars(this.pciBus, { base: PCI_MMIO32_BASE, end: PCI_MMIO32_END }, { base: PCI_IO_BASE, end: PCI_IO_END });

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

  /** The config's devices, with fd names resolved to the device they open. */
  private readonly deviceSpecs: VfioPciConfig[];

  /** Passed VFIO fds must each belong to a device of the config. */
  private checkPassedVfio(passed: readonly PassedFd[]): void {
    const vfioFds = passed.filter((x) => x.kind === 'vfio-group' || x.kind === 'vfio-cdev');
    // sysfs is read once per device, and only when there is something to check.
    const hosts = vfioFds.length ? this.deviceSpecs.map((d) => findHostDevice(d)) : [];
    for (const p of vfioFds) {
      if (p.kind === 'vfio-group') {
        if (!hosts.some((h) => h.group === p.group))
          throw new FdPassError(
            `passed fd '${p.name}' is VFIO group ${p.group}, but no device in the config is in that group`,
          );
      } else {
        if (!hosts.some((h) => h.name === p.device))
          throw new FdPassError(
            `passed fd '${p.name}' is the VFIO cdev of ${p.device}, but the config does not assign that device`,
          );
      }
    }
  }

  /** The PCI devices (the device manager's). */
  get devices(): readonly VfioPciDevice[] {
    return this.deviceManager.devices;
  }

  /** A device reported an unrecoverable error: the VM stops until `cont`. */
  private deviceError(): void {
    if (!this.vm.paused) {
      this.vm.pause();
      this.stopReason = 'internal-error';
      this.onEvent?.('STOP');
    }
  }

  /**
   * A host power-down request (QMP system_powerdown): the ACPI power button, through the GED.
   * Returns whether the guest has ACPI to hear it (a guest without, or one that ignores the
   * button, runs on, as under QEMU).
   */
  requestPowerdown(): boolean {
    if (!this.acpi) return false;
    this.ged.notify(GED_EVENT_POWER_BUTTON);
    return true;
  }

  private releaseDevices(): void {
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
    const k = this.config.kernel;
    const image = new Uint8Array(readFileSync(k.path));
    const isElf = image.length >= 4 && image[0] === 0x7f && image[1] === 0x45 && image[2] === 0x4c && image[3] === 0x46;
    const format =
      k.format === 'auto'
        ? isElf && hasMultibootHeader(image)
          ? 'multiboot'
          : isBzImage(image)
            ? 'linux'
            : 'flat'
        : k.format;
    if (format === 'flat' && k.format === 'auto' && isElf)
      throw new LoaderError(
        `${k.path}: an ELF file without a multiboot header (none in its first 8 KiB): tsvmm boots multiboot v1 ELF32 kernels and Linux bzImages; add a multiboot header, or set kernel.format to "flat" to run the file's bytes from its first one`,
      );
    if (format === 'linux') {
      // machine/loader/linux.ts: boot protocol, ACPI + MP tables, long mode. With ACPI, the guest
      // hears of hot-plug and the power button through the GED.
      const target = {
        kernel: k,
        cmdline: this.config.cmdline,
        ram: this.ram,
        e820: this.e820,
        pciDevices: this.pciBus.devices.values(),
        cpus: this.vm.vcpus.length,
        cpuid: this.kvm.supportedCpuid(),
        bootVcpu: this.vm.vcpus[0]!,
      };
      bootLinux(target, image, {
        pciMmio32: { base: PCI_MMIO32_BASE, end: PCI_MMIO32_END },
        hotplugSlots: HOTPLUG_SLOTS,
        intxGsi: pciIntxGsi,
      });
      this.acpi = true;
      return;
    }
    if (k.initrd || k.initramfs)
      throw new LoaderError(
        `${k.path}: kernel.initrd and kernel.initramfs need a Linux bzImage (format "linux"); this image loads as ${format}`,
      );
    let entry: number;
    if (format === 'multiboot') {
      if (!hasMultibootHeader(image)) throw new LoaderError(`${k.path}: no multiboot header in the first 8 KiB`);
      if (!isElf)
        throw new LoaderError(`${k.path}: multiboot images must be ELF32 (the a.out kludge is not supported)`);
      entry = loadElf32(image, this.ram, k.path).entry;
    } else {
      if (k.loadAddress < 0x100000 && k.loadAddress + image.length > MULTIBOOT_INFO_ADDR)
        throw new LoaderError(
          `${k.path}: load address 0x${k.loadAddress.toString(16)} overlaps the boot info at 0x${MULTIBOOT_INFO_ADDR.toString(16)}: load at 0x100000 or above`,
        );
      if (k.loadAddress + image.length > Math.min(this.ram.length, LOW_RAM_END))
        throw new LoaderError(
          `${k.path}: ${image.length} bytes at 0x${k.loadAddress.toString(16)} do not fit in RAM below 3 GiB: give the VM more memory or load lower`,
        );
      this.ram.set(image, k.loadAddress);
      entry = k.entry ?? k.loadAddress;
    }
    const info = writeMultibootInfo(this.ram, MULTIBOOT_INFO_ADDR, this.config.cmdline, this.e820);
    enterProtectedMode(this.vm.vcpus[0]!, entry, info, this.ram);
  }

  /**
   * system_reset: with every vCPU parked and no I/O half done, the irqchip, PIT and every vCPU go
   * back to their power-on state (application processors wait for INIT/SIPI again), every
   * assigned device is reset, the guest image and boot information are loaded again and the boot
   * vCPU starts at the entry point (RAM is not cleared, as on real hardware).
   */
  async systemReset(): Promise<void> {
    await this.vm.reset(() => {
      this.vm.resetToPowerOn();
      this.deviceManager.reset();
      // No event from before the reset is delivered after it; an unplug the guest was asked for
      // and has not done yet is completed (a rebooting guest will not answer it).
      this.ged.reset();
      this.pciHotplug.reset();
      this.deviceManager.completePendingUnplugs();
      this.loadGuest();
    });
  }

  /** Ends the VM with a status (first caller wins). */
  requestExit(status: number, reason: string): void {
    if (!this.exit) this.exit = { status, reason };
    this.vm.stop();
  }

  async run(): Promise<MachineResult> {
    let stdinListener: ((b: Buffer) => void) | undefined;
    if (this.config.serial.input === 'stdin') {
      stdinListener = (b: Buffer) => this.serial.input(b);
      process.stdin.on('data', stdinListener);
    }
    try {
      const stops = await this.vm.run();
      this.serial.flush();
      if (this.exit) return { ...this.exit, stops };
      const bad = stops.find((s) => s.reason !== 'stopped') ?? stops[0]!;
      return { ...describeStop(bad), stops };
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

  /**
   * A read-only snapshot for front ends (the library's inspect()): memslots, what VFIO maps and
   * pins, the exits the VMM answered, the interrupt vectors the guest enabled on each assigned
   * device, and the PCI devices with their BARs.
   */
  inspect(): MachineInspection {
    const stats = this.vm.stats;
    let pinnedBytes = 0;
    const dmaMappings: MachineInspection['dmaMappings'] = [];
    for (const l of this.vfio.listeners)
      for (const [section, m] of l.mappings) {
        dmaMappings.push({ iova: m.iova, size: m.size, readonly: m.readonly, region: m.region });
        if (section.region.kind === 'ram') pinnedBytes += m.size; // RAM is pinned; a BAR's mmap is not
      }
    return {
      memory: { size: this.config.memoryBytes, backing: this.guestRam.plan.describe },
      memslots: this.vm.memslots
        .slots()
        .map((s) => ({ slot: s.slot, guestAddr: s.gpa, size: s.size, readonly: s.readonly })),
      dmaMappings: dmaMappings.sort((a, b) => a.iova - b.iova),
      pinnedBytes,
      exits: { io: stats.ioExits, mmio: stats.mmioExits, total: stats.ioExits + stats.mmioExits },
      interrupts: this.devices.map((d) => {
        const msi = d.msiCap?.enabled ? d.msiCap.enabledVectors : 0;
        let msix = 0;
        if (d.msixCap?.enabled && !d.msixCap.functionMasked)
          for (let v = 0; v < d.msixCap.vectors; v++) if (!d.msixCap.isMasked(v)) msix++;
        // The INTx line is in use when the device has one, MSI and MSI-X are off and the guest has
        // not disabled it (PCI command register bit 10).
        const intx = d.configRead(0x3d, 1) !== 0 && !msi && !msix && !(d.configRead(0x04, 2) & 0x400) ? 1 : 0;
        return { device: d.name, host: d.assigned.host.name, msi, msix, intx };
      }),
      pciDevices: [...this.pciBus.devices.values()].map((d) => ({
        slot: d.slot,
        id: d.name,
        vendor: d.configRead(0, 2),
        device: d.configRead(2, 2),
        class: (d.configRead(0x0b, 1) << 16) | (d.configRead(0x0a, 1) << 8) | d.configRead(0x09, 1),
        ...(d instanceof VfioPciDevice ? { host: d.assigned.host.name } : {}),
        bars: d.bars
          .filter((b) => b !== undefined)
          .map((b) => ({ index: b.index, type: b.type, address: b.mappedAt, size: b.size })),
      })),
      vcpus: this.vm.vcpus.length,
    };
  }
}

/** Machine.inspect()'s snapshot. */
export interface MachineInspection {
  memory: { size: number; backing: string };
  memslots: { slot: number; guestAddr: number; size: number; readonly: boolean }[];
  dmaMappings: { iova: number; size: number; readonly: boolean; region: string }[];
  pinnedBytes: number;
  exits: { io: number; mmio: number; total: number };
  interrupts: { device: string; host: string; msi: number; msix: number; intx: number }[];
  pciDevices: {
    slot: number;
    id: string;
    vendor: number;
    device: number;
    class: number;
    host?: string;
    bars: { index: number; type: 'io' | 'mem32' | 'mem64' | 'rom'; address: number | undefined; size: number }[];
  }[];
  vcpus: number;
}

/**
 * Devices named by a passed fd ("fd": "name", QEMU's fd=): the fd must have been passed, be a
 * VFIO group or cdev, and agree with host/sysfsdev when those are given too; a cdev alone names
 * its device.
 */
export function resolveFdNames(devices: VfioPciConfig[], passed: readonly PassedFd[]): VfioPciConfig[] {
  return devices.map((d, i) => {
    if (d.fd === undefined) return d;
    const p = passed.find((x) => x.name === d.fd);
    const where = `/devices/${i}/fd`;
    if (!p)
      throw new FdPassError(
        `${where}: no fd named '${d.fd}' was passed (passed: ${passed.map((x) => x.name).join(', ') || 'none'}); start the VM through 'tsvmm manager' or pass it on --fd-socket`,
      );
    if (p.kind === 'vfio-cdev') {
      const sysfs = existsSync(`/sys/bus/mdev/devices/${p.device}`)
        ? `/sys/bus/mdev/devices/${p.device}`
        : `/sys/bus/pci/devices/${p.device}`;
      if ((d.host || d.sysfsdev) && findHostDevice(d).name !== p.device)
        throw new FdPassError(`${where}: fd '${d.fd}' is the cdev of ${p.device}, not of ${d.host ?? d.sysfsdev}`);
      return d.host || d.sysfsdev ? d : { ...d, sysfsdev: sysfs };
    }
    if (p.kind === 'vfio-group') {
      if (!d.host && !d.sysfsdev)
        throw new FdPassError(
          `${where}: fd '${d.fd}' is VFIO group ${p.group}: say which of its devices with "host" or "sysfsdev"`,
        );
      const g = findHostDevice(d).group;
      if (g !== p.group)
        throw new FdPassError(
          `${where}: fd '${d.fd}' is VFIO group ${p.group}, but ${d.host ?? d.sysfsdev} is in group ${g}`,
        );
      return d;
    }
    throw new FdPassError(`${where}: fd '${d.fd}' is ${p.kind}, not a VFIO group or device cdev`);
  });
}

function describeStop(s: VcpuStop): { status: number; reason: string } {
  switch (s.reason) {
    case 'stopped':
      return { status: 0, reason: 'stopped' };
    case 'hlt':
      return { status: 0, reason: 'guest halted' };
    case 'shutdown':
      return { status: 1, reason: 'guest shut down the CPU (triple fault)' };
    case 'system-event':
      return { status: 0, reason: `guest system event ${s.type} (1 shutdown, 2 reset)` };
    case 'internal-error':
      return {
        status: 1,
        reason: `KVM internal error, suberror ${s.suberror} (1 = emulation failure), data [${s.data.join(' ')}]`,
      };
    case 'fail-entry':
      return { status: 1, reason: `KVM could not enter the guest (hardware reason ${s.hwReason})` };
    case 'unhandled-exit':
      return { status: 1, reason: `unhandled KVM exit reason ${s.exitReason}` };
    case 'error':
      return { status: 1, reason: `vCPU thread failed: ${s.message}` };
  }
}
