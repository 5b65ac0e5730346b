// A KVM virtual machine: the VM fd, its two address spaces (system memory, port I/O) whose RAM
// sections a listener turns into memslots, the in-kernel irqchip and PIT, GSI routing, and the
// vCPUs. vCPU 0 runs KVM_RUN on this (the main, device-model) thread and its exits are answered
// inline through the memory API; a native loop watcher kicks it out whenever the event loop has
// work. Application processors run in pool workers and post their exits here.
import { closeSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import type { Tinypool } from 'tinypool';
import { native } from '../native.js';
import { projectRoot } from '../paths.js';
import { AddressSpace, MemoryRegion } from '../memory/index.js';
import type { Kvm } from './kvm.js';
import { KvmMemslots } from './memslots.js';
import { GsiRouting } from './gsi-routing.js';
import { Vcpu } from './vcpu.js';
import { Control, Slot, type VcpuStop } from './exit-channel.js';
import { ExitStats, IoDispatch } from './io-dispatch.js';
import { ApRings } from './ap-rings.js';
import { RegisterFile } from './register-file.js';
import { BootVcpuLoop } from './boot-vcpu.js';
import type { VcpuTask } from './vcpu-worker.js';
import { StateError, type Migratable, type StateReader, type StateWriter } from '../state.js';

export { ExitStats };

export interface VmOptions {
  kvmPath?: string;
  /** In-kernel LAPIC/IOAPIC/PIC and PIT (default true). */
  irqchip?: boolean;
}

/** MSRs and their values after a CPU reset (Intel SDM vol. 3 table 10-1; KVM's paravirtual MSRs off). */
const RESET_MSRS: { index: number; data: number | bigint }[] = [
  { index: 0x4b564d01, data: 0 },
  { index: 0x12, data: 0 }, // kvmclock (new, old)
  { index: 0x4b564d00, data: 0 },
  { index: 0x11, data: 0 }, // wall clock
  { index: 0x4b564d02, data: 0 },
  { index: 0x4b564d03, data: 0 }, // async PF, steal time
  { index: 0x4b564d04, data: 0 },
  { index: 0x4b564d05, data: 1 }, // PV EOI, poll control (default on)
  { index: 0x4b564d06, data: 0 }, // async PF interrupt
  { index: 0xc0000081, data: 0 },
  { index: 0xc0000082, data: 0 }, // STAR, LSTAR
  { index: 0xc0000083, data: 0 },
  { index: 0xc0000084, data: 0 }, // CSTAR, SFMASK
  { index: 0xc0000102, data: 0 },
  { index: 0xc0000103, data: 0 }, // KERNEL_GS_BASE, TSC_AUX
  { index: 0x174, data: 0 },
  { index: 0x175, data: 0 },
  { index: 0x176, data: 0 }, // SYSENTER
  { index: 0x277, data: 0x0007040600070406n }, // PAT
  { index: 0x6e0, data: 0 }, // TSC deadline
  { index: 0x1a0, data: 1 },
  { index: 0x2ff, data: 0 }, // MISC_ENABLE (fast strings), MTRR default type
];

const KVM_TSS_ADDR = 0xfffbd000;
const KVM_IDENTITY_MAP_ADDR = 0xfffbc000;

export class KvmVm {
  readonly fd: number;
  readonly memory: AddressSpace;
  readonly io: AddressSpace;
  readonly memslots: KvmMemslots;
  readonly gsi: GsiRouting;
  readonly vcpus: Vcpu[] = [];
  private readonly exitStats = new ExitStats();
  /** The exits answered, the reads the APs answered on their own threads included (folded in here). */
  get stats(): ExitStats {
    this.rings?.foldLocalReads();
    return this.exitStats;
  }
  /** Registers the device models publish for the APs to answer on their own threads (register-file.ts). */
  readonly registers = new RegisterFile();
  readonly irqchip: boolean;
  readonly kickSignal: number;
  private pool: Tinypool | undefined;
  private readonly closers: (() => void)[] = [];
  private closed = false;

  constructor(
    readonly kvm: Kvm,
    opts: VmOptions = {},
  ) {
    const n = native();
    const c = n.constants;
    this.irqchip = opts.irqchip ?? true;
    this.kickSignal = c.SIGRTMIN + 2;
    kvm.requireExtensions([
      'KVM_CAP_USER_MEMORY',
      'KVM_CAP_IMMEDIATE_EXIT',
      ...(this.irqchip ? (['KVM_CAP_IRQCHIP', 'KVM_CAP_IRQFD', 'KVM_CAP_IRQ_ROUTING', 'KVM_CAP_PIT2'] as const) : []),
    ]);
    this.fd = n.kvmCreateVm(kvm.fd, 0);
    try {
      if (kvm.checkExtension(c.KVM_CAP_SET_TSS_ADDR) > 0) n.kvmSetTssAddr(this.fd, KVM_TSS_ADDR);
      if (kvm.checkExtension(c.KVM_CAP_SET_IDENTITY_MAP_ADDR) > 0)
        n.kvmSetIdentityMapAddr(this.fd, KVM_IDENTITY_MAP_ADDR);
      if (this.irqchip) {
        n.kvmCreateIrqchip(this.fd);
        n.kvmCreatePit2(this.fd, c.KVM_PIT_SPEAKER_DUMMY);
      }
      const slots = Math.max(kvm.checkExtension(c.KVM_CAP_NR_MEMSLOTS), 32);
      this.memslots = new KvmMemslots(this.fd, slots, kvm.checkExtension(c.KVM_CAP_READONLY_MEM) > 0);
      this.memory = new AddressSpace('memory', MemoryRegion.container('system', 2 ** 52));
      this.io = new AddressSpace('io', MemoryRegion.container('io', 0x10000));
      this.memory.addListener(this.memslots);
      this.gsi = new GsiRouting(this.fd);
      this.dispatch = new IoDispatch(this.io, this.memory, this.exitStats);
      this.rings = new ApRings(this.vcpus, this.dispatch, this.registers);
      // Our table from the start: KVM's default sends GSI 0 to IOAPIC pin 0, ours (as QEMU's and
      // the MP/ACPI tables) to pin 2; pushing it at the first MSI would reroute under the guest.
      if (this.irqchip) this.gsi.commit();
      // Power-on state of the PIC pair, IOAPIC and PIT, for system_reset.
      if (this.irqchip) {
        for (const chip of [c.KVM_IRQCHIP_PIC_MASTER, c.KVM_IRQCHIP_PIC_SLAVE, c.KVM_IRQCHIP_IOAPIC])
          this.irqchipPowerOn.push(n.kvmGetState(this.fd, 'irqchip', chip));
        this.pitPowerOn = n.kvmGetState(this.fd, 'pit2');
      }
    } catch (e) {
      closeSync(this.fd);
      throw e;
    }
  }

  private readonly irqchipPowerOn: Uint8Array[] = [];
  /** The MSRs KVM lists as saveable (a snapshot takes them from every vCPU). */
  private get msrIndexes(): readonly number[] {
    if (!this.msrList) {
      try {
        this.msrList = native().kvmGetMsrIndexList(this.kvm.fd);
      } catch {
        this.msrList = [];
      }
    }
    return this.msrList;
  }
  private msrList: number[] | undefined;
  private pitPowerOn: Uint8Array | undefined;

  /**
   * Puts the interrupt controllers, the PIT and every vCPU back to their power-on state (as KVM
   * created them), and clears the MSRs a guest points at its memory or configures for itself
   * (kvmclock, async PF, steal time, PV EOI, syscall entry...), as QEMU's x86 CPU reset does: a
   * kvmclock page left enabled would be written into the next boot's memory. Only with every
   * vCPU parked (reset()).
   */
  resetToPowerOn(): void {
    const n = native();
    for (const s of this.irqchipPowerOn) n.kvmSetState(this.fd, 'irqchip', s);
    if (this.pitPowerOn) n.kvmSetState(this.fd, 'pit2', this.pitPowerOn);
    for (const v of this.vcpus) {
      v.resetToPowerOn();
      // One at a time: KVM_SET_MSRS stops at the first MSR this host does not have.
      for (const m of RESET_MSRS) n.kvmSetMsrs(v.fd, [m]);
    }
  }

  /** Registers cleanup to run (in reverse order) when the VM closes. */
  onClose(fn: () => void): void {
    this.closers.push(fn);
  }

  createVcpu(): Vcpu {
    const id = this.vcpus.length;
    const fd = native().kvmCreateVcpu(this.fd, id);
    const v = new Vcpu(id, fd, this.kvm.vcpuMmapSize(), this.kickSignal);
    v.msrIndexes = this.msrIndexes;
    this.vcpus.push(v);
    return v;
  }

  // --- interrupts -------------------------------------------------------------------------
  irqfd(eventFd: number, gsi: number, resampleFd?: number): void {
    const c = native().constants;
    native().kvmIrqfd(this.fd, {
      fd: eventFd,
      gsi,
      flags: resampleFd === undefined ? 0 : c.KVM_IRQFD_FLAG_RESAMPLE,
      resamplefd: resampleFd ?? 0,
    });
  }
  irqfdRemove(eventFd: number, gsi: number): void {
    native().kvmIrqfd(this.fd, { fd: eventFd, gsi, flags: native().constants.KVM_IRQFD_FLAG_DEASSIGN });
  }
  setIrqLine(irq: number, level: boolean): void {
    this.exitStats.irqInjections++;
    native().kvmIrqLine(this.fd, irq, level ? 1 : 0);
  }
  signalMsi(msg: { addressLo: number; addressHi: number; data: number }): number {
    this.exitStats.irqInjections++;
    return native().kvmSignalMsi(this.fd, msg);
  }

  // --- running ----------------------------------------------------------------------------
  /**
   * Runs the VM until every vCPU has stopped; resolves with each one's reason. vCPU 0 runs on
   * this (the device) thread, answering its exits inline; the others run in pool workers and
   * post theirs here (exit-channel.ts).
   */
  async run(): Promise<VcpuStop[]> {
    if (this.running) throw new Error('VM is already running');
    const n = this.vcpus.length;
    if (n === 0) throw new Error('VM has no vCPUs');
    this.running = true;
    // The kick signal stays blocked on this thread except inside KVM_RUN (see thread.cc); APs kick this thread.
    const mainThread = native().threadPrepareKick(this.kickSignal, true);
    const boot = new BootVcpuLoop(
      this.vcpus[0]!,
      this.kickSignal,
      mainThread,
      this.rings,
      this.dispatch,
      this.registers,
    );
    this.boot = boot;
    // Keeps the event loop alive while vCPU 0 runs in slices (it may be parked with nothing else pending).
    const keepAlive = setInterval(() => {}, 2 ** 30);
    const aps = this.vcpus.slice(1);
    // The pool (a second isolate per AP) only for SMP guests.
    this.pool = aps.length
      ? new (await import('tinypool')).Tinypool({
          // From the project root, not this file: the CLI runs this code from one bundled file.
          filename: pathToFileURL(`${projectRoot}/dist/core/kvm/vcpu-worker.js`).href,
          minThreads: aps.length,
          maxThreads: aps.length,
          isolateWorkers: false,
          idleTimeout: 2 ** 31 - 1,
        })
      : undefined;
    const ended = (stop: VcpuStop): VcpuStop => {
      if (stop.reason !== 'stopped') this.stop(); // one vCPU ending the VM stops the others
      return stop;
    };
    const apRuns = aps.map((v) => {
      const task: VcpuTask = {
        vcpuFd: v.fd,
        mmapSize: v.mmapSize,
        channel: v.channel,
        kickSignal: this.kickSignal,
        thread: v.thread,
        wake: this.rings.wake,
        mainThread,
        registers: this.registers.view,
        localCounts: this.registers.countsFor(v.id),
      };
      return (this.pool!.run(task) as Promise<VcpuStop>)
        .catch((e: Error): VcpuStop => ({ reason: 'error', message: e.message }))
        .then((stop) => {
          this.rings.serve(); // whatever it posted last
          return ended(stop);
        });
    });
    this.rings.start();
    try {
      return await Promise.all([boot.run().then(ended), ...apRuns]);
    } finally {
      this.running = false;
      this.boot = undefined;
      this.rings.end();
      clearInterval(keepAlive);
      await this.pool?.destroy();
      this.pool = undefined;
    }
  }

  /** Parks every vCPU outside KVM_RUN (QMP stop); resume() lets them continue. */
  pause(): void {
    for (const v of this.vcpus) v.pause();
  }
  resume(): void {
    for (const v of this.vcpus) v.resume();
    this.boot?.wake();
  }

  /**
   * Runs `prepare` with every vCPU parked outside KVM_RUN and no I/O half done (system_reset):
   * pauses, waits for each vCPU to park while exits keep being answered, completes pending
   * I/O, then prepare() may set registers and device state; the vCPUs resume unless they were
   * paused before.
   */
  async reset(prepare: () => void): Promise<void> {
    const wasPaused = this.paused;
    await this.park();
    try {
      prepare();
    } finally {
      if (!wasPaused) this.resume();
    }
  }

  /**
   * Pauses every vCPU and waits until each is parked outside KVM_RUN with its I/O completed
   * (a snapshot reads their state then); resume() lets them go on.
   */
  async park(): Promise<void> {
    this.pause();
    for (const v of this.vcpus) {
      while (v.running && !v.parked) {
        const w = Atomics.waitAsync(v.channel, Slot.Parked, 0, 50);
        if (w.async) await w.value;
      }
    }
    this.rings.serve();
    for (const v of this.vcpus) if (v.running) v.flushPendingIo();
  }

  /** Whether the vCPUs were ever started (a restore puts state into vCPUs that have not run). */
  get started(): boolean {
    return this.running;
  }

  // --- snapshot and migration (core/state.ts) -------------------------------------------------
  /** The in-kernel PIC pair, IOAPIC and PIT (KVM_GET/SET_IRQCHIP, KVM_GET/SET_PIT2). */
  readonly irqchipState: Migratable = {
    stateId: 'kvm-irqchip',
    stateVersion: 1,
    saveState: (w: StateWriter) => {
      const n = native(),
        c = n.constants;
      w.bool(this.irqchip);
      if (!this.irqchip) return;
      for (const chip of [c.KVM_IRQCHIP_PIC_MASTER, c.KVM_IRQCHIP_PIC_SLAVE, c.KVM_IRQCHIP_IOAPIC])
        w.blob(n.kvmGetState(this.fd, 'irqchip', chip));
      w.blob(n.kvmGetState(this.fd, 'pit2'));
    },
    loadState: (r: StateReader) => {
      const n = native();
      if (r.bool('the in-kernel irqchip') !== this.irqchip)
        throw r.bad(
          `the source ${this.irqchip ? 'had no' : 'had an'} in-kernel irqchip; this VM ${this.irqchip ? 'has' : 'has none'}`,
        );
      if (!this.irqchip) return;
      const size = this.irqchipPowerOn[0]!.length;
      const chips = [0, 1, 2].map((i) => r.blobOf(size, `irqchip ${i}`));
      const pit = r.blobOf(this.pitPowerOn!.length, 'the PIT');
      // The chip id is the struct's first field: a stream with them out of order is refused.
      chips.forEach((b, i) => {
        if (new DataView(b.buffer, b.byteOffset).getUint32(0, true) !== i)
          throw r.bad(`irqchip ${i} has another chip id`);
      });
      try {
        for (const b of chips) n.kvmSetState(this.fd, 'irqchip', b);
        n.kvmSetState(this.fd, 'pit2', pit);
      } catch (e) {
        throw new StateError('kvm-irqchip', (e as Error).message);
      }
    },
  };

  /**
   * kvmclock's base (KVM_GET/SET_CLOCK): restored last, so the guest's clock goes on from the
   * value it had when the source stopped (without KVM_CLOCK_REALTIME: the time the VM spent
   * stopped or in a file does not pass for the guest, as QEMU's kvmclock).
   */
  readonly clockState: Migratable = {
    stateId: 'kvm-clock',
    stateVersion: 1,
    saveState: (w: StateWriter) => {
      let clock: Uint8Array | undefined;
      try {
        clock = native().kvmGetState(this.fd, 'clock');
      } catch {
        /* no KVM_CAP_ADJUST_CLOCK: nothing to carry */
      }
      w.bool(clock !== undefined);
      if (clock) w.u64(new DataView(clock.buffer, clock.byteOffset).getBigUint64(0, true));
    },
    loadState: (r: StateReader) => {
      if (!r.bool('whether the source had a KVM clock')) return;
      const ns = r.u64('the KVM clock');
      try {
        const cur = native().kvmGetState(this.fd, 'clock');
        cur.fill(0);
        new DataView(cur.buffer, cur.byteOffset).setBigUint64(0, ns, true);
        native().kvmSetState(this.fd, 'clock', cur);
      } catch (e) {
        throw new StateError('kvm-clock', (e as Error).message);
      }
    },
  };
  get paused(): boolean {
    return this.vcpus.length > 0 && this.vcpus.every((v) => Atomics.load(v.channel, Slot.Control) === Control.Pause);
  }

  /** Stops all vCPUs (idempotent; safe from a device callback). */
  stop(): void {
    for (const v of this.vcpus) v.stop();
    this.boot?.wake();
  }

  private running = false;
  private readonly dispatch: IoDispatch;
  private readonly rings: ApRings;
  /** vCPU 0's loop while the VM runs. */
  private boot: BootVcpuLoop | undefined;

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const fn of this.closers.reverse()) {
      try {
        fn();
      } catch (e) {
        console.error(`tsvmm: cleanup failed: ${(e as Error).message}`);
      }
    }
    for (const v of this.vcpus) v.close();
    closeSync(this.fd);
  }
}
