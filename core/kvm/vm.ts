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
import {
  ChanKind,
  Control,
  Entry,
  Slot,
  STRING_DATA_OFFSET,
  Wake,
  createWake,
  entryIndex,
  type VcpuStop,
} from './exit-channel.js';
import { stopForExit } from './exits.js';
import type { VcpuTask } from './vcpu-worker.js';

export interface VmOptions {
  kvmPath?: string;
  /** In-kernel LAPIC/IOAPIC/PIC and PIT (default true). */
  irqchip?: boolean;
}

/** Exit counts per port and per MMIO address, so tests can prove a BAR access did not exit. */
export class ExitStats {
  readonly pio = new Map<number, number>();
  readonly mmio = new Map<number, number>();
  /** Accesses answered (a REP string instruction's elements count one each). */
  total = 0;
  /** KVM exits answered: KVM_EXIT_IO and KVM_EXIT_MMIO, from every vCPU. */
  ioExits = 0;
  mmioExits = 0;
  /** Interrupts the VMM injected itself (KVM_IRQ_LINE, KVM_SIGNAL_MSI) rather than through irqfd. */
  irqInjections = 0;
  mmioIn(lo: number, hi: number): number {
    let n = 0;
    for (const [a, c] of this.mmio) if (a >= lo && a < hi) n += c;
    return n;
  }
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
  readonly stats = new ExitStats();
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
    this.stats.irqInjections++;
    native().kvmIrqLine(this.fd, irq, level ? 1 : 0);
  }
  signalMsi(msg: { addressLo: number; addressHi: number; data: number }): number {
    this.stats.irqInjections++;
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
    this.mainThread = native().threadPrepareKick(this.kickSignal, true);
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
        wake: this.wake,
        mainThread: this.mainThread,
      };
      return (this.pool!.run(task) as Promise<VcpuStop>)
        .catch((e: Error): VcpuStop => ({ reason: 'error', message: e.message }))
        .then((stop) => {
          this.serveAps(); // whatever it posted last
          return ended(stop);
        });
    });
    this.serveApsFromLoop();
    try {
      return await Promise.all([this.runBoot(this.vcpus[0]!).then(ended), ...apRuns]);
    } finally {
      this.running = false;
      Atomics.notify(this.wake, Wake.KickPending); // ends serveApsFromLoop's wait
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
    this.bootWake?.();
  }

  /**
   * Runs `prepare` with every vCPU parked outside KVM_RUN and no I/O half done (system_reset):
   * pauses, waits for each vCPU to park while exits keep being answered, completes pending
   * I/O, then prepare() may set registers and device state; the vCPUs resume unless they were
   * paused before.
   */
  async reset(prepare: () => void): Promise<void> {
    const wasPaused = this.paused;
    this.pause();
    for (const v of this.vcpus) {
      while (v.running && !v.parked) {
        const w = Atomics.waitAsync(v.channel, Slot.Parked, 0, 50);
        if (w.async) await w.value;
      }
    }
    this.serveAps();
    for (const v of this.vcpus) if (v.running) v.flushPendingIo();
    try {
      prepare();
    } finally {
      if (!wasPaused) this.resume();
    }
  }
  get paused(): boolean {
    return this.vcpus.length > 0 && this.vcpus.every((v) => Atomics.load(v.channel, Slot.Control) === Control.Pause);
  }

  /** Stops all vCPUs (idempotent; safe from a device callback). */
  stop(): void {
    for (const v of this.vcpus) v.stop();
    this.bootWake?.();
  }

  /** How long vCPU 0 may run exits back to back before the event loop gets a turn anyway (a safety net: the watcher yields earlier whenever the loop has work). */
  sliceBudgetMs = 10;
  /** The longest the event loop waits for a turn while vCPU 0 sits in KVM_RUN with nothing due (microtasks a device queued, say). */
  maxLoopWaitMs = 50;
  private running = false;
  /** The device thread's doorbell for the APs (exit-channel.ts Wake). */
  private readonly wake = createWake();
  private mainThread = 0n;
  /** Continues a parked or stopped vCPU 0 (set while it waits outside its run slices). */
  private bootWake: (() => void) | undefined;

  /**
   * vCPU 0's run loop on this thread, in slices: each slice arms the loop watcher and runs KVM_RUN,
   * answering exits inline, until the watcher says the event loop has work (it kicks the vCPU out
   * of KVM_RUN), the vCPU is paused or stopped, or the time budget is spent; then the event loop
   * runs (setImmediate) and the next slice starts.
   */
  private runBoot(v: Vcpu): Promise<VcpuStop> {
    const n = native();
    const ch = v.channel;
    v.onMainThread = true;
    v.thread[0] = this.mainThread;
    n.kvmSetSignalMask(v.fd, [this.kickSignal]);
    n.threadEatSignal(this.kickSignal); // a kick left over from an earlier VM of this process
    const watcher = n.loopWatcherCreate(v.run, n.kvmRunLayout.immediateExit, this.mainThread, this.kickSignal);
    Atomics.store(ch, Slot.Running, 1);
    return new Promise<VcpuStop>((resolve) => {
      const finish = (stop: VcpuStop): void => {
        this.bootWake = undefined;
        Atomics.store(ch, Slot.Running, 0);
        n.loopWatcherDestroy(watcher);
        resolve(stop);
      };
      const slice = (): void => {
        const ctl = Atomics.load(ch, Slot.Control);
        if (ctl === Control.Stop) return finish({ reason: 'stopped' });
        if (ctl === Control.Pause) {
          Atomics.store(ch, Slot.Parked, 1);
          Atomics.notify(ch, Slot.Parked);
          this.bootWake = () => {
            this.bootWake = undefined;
            Atomics.store(ch, Slot.Parked, 0);
            setImmediate(slice);
          };
          return;
        }
        let stop: VcpuStop | undefined;
        try {
          stop = this.runSlice(v, watcher);
        } catch (e) {
          const err = e as Error & { code?: string };
          stop = { reason: 'error', message: err.message, ...(err.code ? { code: err.code } : {}) };
        }
        if (stop) finish(stop);
        else setImmediate(slice);
      };
      setImmediate(slice);
    });
  }

  /** One slice of vCPU 0 (see runBoot); returns why the vCPU stopped, or undefined to go on later. */
  private runSlice(v: Vcpu, watcher: unknown): VcpuStop | undefined {
    const n = native();
    const c = n.constants;
    const L = n.kvmRunLayout;
    const ch = v.channel,
      wake = this.wake;
    const page = v.runView,
      bytes = v.runBytes;
    const KVM_EXIT_IO = c.KVM_EXIT_IO,
      KVM_EXIT_MMIO = c.KVM_EXIT_MMIO,
      IO_OUT = c.KVM_EXIT_IO_OUT;
    Atomics.store(wake, Wake.InKvmRun, 1);
    if (Atomics.load(wake, Wake.KickPending)) this.serveAps();
    n.loopWatcherArm(watcher, this.maxLoopWaitMs);
    // Date.now(), not performance.now(): its 1 ms steps are enough for a 10 ms budget, and the
    // performance global loads perf_hooks' modules at the first slice (start-up time).
    const t0 = Date.now();
    let k = 0;
    try {
      for (;;) {
        const r = n.kvmRun(v.fd);
        ch[Slot.Exits] = (ch[Slot.Exits]! + 1) | 0;
        if (r < 0) {
          // Kicked: by the watcher (the event loop has work), an AP's post, or a pause/stop.
          n.threadEatSignal(this.kickSignal);
          if (Atomics.load(wake, Wake.KickPending)) this.serveAps();
          if (Atomics.load(ch, Slot.Control) !== Control.Run) return undefined;
          if (n.loopWatcherFired(watcher)) return undefined;
          bytes[L.immediateExit] = 0;
          continue;
        }
        const reason = page.getUint32(L.exitReason, true);
        if (reason === KVM_EXIT_IO) {
          this.stats.ioExits++;
          const isOut = bytes[L.ioDirection] === IO_OUT;
          const size = bytes[L.ioSize]!;
          const port = page.getUint16(L.ioPort, true);
          const count = page.getUint32(L.ioCount, true);
          let off = page.getUint32(L.ioDataOffset, true); // an offset into the page: the high half is 0
          for (let i = 0; i < count; i++, off += size) {
            if (isOut) {
              this.access(
                true,
                true,
                size,
                port,
                size === 1 ? bytes[off]! : size === 2 ? page.getUint16(off, true) : page.getUint32(off, true),
              );
            } else {
              const d = this.access(true, false, size, port, 0) as number;
              if (size === 1) bytes[off] = d & 0xff;
              else if (size === 2) page.setUint16(off, d & 0xffff, true);
              else page.setUint32(off, d >>> 0, true);
            }
          }
        } else if (reason === KVM_EXIT_MMIO) {
          this.stats.mmioExits++;
          const addr = page.getUint32(L.mmioPhysAddr, true) + page.getUint32(L.mmioPhysAddr + 4, true) * 0x100000000;
          const len = page.getUint32(L.mmioLen, true);
          const d = L.mmioData;
          if (bytes[L.mmioIsWrite]) {
            const lo = len >= 4 ? page.getUint32(d, true) : len === 2 ? page.getUint16(d, true) : bytes[d]!;
            this.access(
              false,
              true,
              len,
              addr,
              len === 8 ? (BigInt(page.getUint32(d + 4, true)) << 32n) | BigInt(lo) : lo,
            );
          } else {
            const val = this.access(false, false, len, addr, 0);
            if (typeof val === 'bigint') page.setBigUint64(d, BigInt.asUintN(64, val), true);
            else {
              page.setUint32(d, val >>> 0, true);
              page.setUint32(d + 4, len === 8 ? Math.floor(val / 0x100000000) >>> 0 : 0, true);
            }
          }
        } else {
          const stop = stopForExit(reason, page);
          if (stop) return stop;
        }
        if (Atomics.load(wake, Wake.KickPending)) this.serveAps();
        if (Atomics.load(ch, Slot.Control) !== Control.Run) return undefined;
        // The device model may have started a timer (a flush, the INTx resample poll): watch for it.
        n.loopWatcherRefresh(watcher);
        if ((++k & 7) === 0 && Date.now() - t0 > this.sliceBudgetMs) return undefined;
      }
    } finally {
      Atomics.store(wake, Wake.InKvmRun, 0);
      n.loopWatcherDisarm(watcher);
      if (Atomics.load(wake, Wake.KickPending)) this.serveAps(); // an AP that saw InKvmRun 1 only kicked
    }
  }

  /** Serves the APs' rings from the event loop while vCPU 0 is not in a run slice (parked, stopped, between slices). */
  private serveApsFromLoop(): void {
    if (!this.running || this.vcpus.length < 2) return;
    const w = Atomics.waitAsync(this.wake, Wake.KickPending, 0);
    if (w.async) {
      void w.value.then(() => {
        this.serveAps();
        this.serveApsFromLoop();
      });
    } else {
      this.serveAps();
      setImmediate(() => this.serveApsFromLoop());
    }
  }

  /** Answers every request the APs have posted, oldest first per AP. */
  private serveAps(): void {
    Atomics.store(this.wake, Wake.KickPending, 0); // before looking: a later post rings again
    for (let i = 1; i < this.vcpus.length; i++) {
      const ch = this.vcpus[i]!.channel;
      let tail = Atomics.load(ch, Slot.Tail);
      const head = Atomics.load(ch, Slot.Head);
      if (tail === head) continue;
      for (; tail !== head; tail++) {
        this.serveEntry(ch, entryIndex(tail));
        Atomics.store(ch, Slot.Tail, tail + 1);
      }
      Atomics.notify(ch, Slot.Tail);
    }
  }

  private serveEntry(ch: Int32Array, e: number): void {
    const isPio = ch[e + Entry.Kind] === ChanKind.Pio;
    const isWrite = ch[e + Entry.IsWrite] === 1;
    const size = ch[e + Entry.Size]!;
    const addr = (ch[e + Entry.AddrLo]! >>> 0) + (ch[e + Entry.AddrHi]! >>> 0) * 0x100000000;
    const count = ch[e + Entry.Count]!;
    if (isPio) this.stats.ioExits++;
    else this.stats.mmioExits++;
    if (count > 1) {
      // A REP string: its data sits after the ring.
      const data = new DataView(ch.buffer, STRING_DATA_OFFSET);
      for (let i = 0, off = 0; i < count; i++, off += size) {
        if (isWrite)
          this.access(
            isPio,
            true,
            size,
            addr,
            size === 1 ? data.getUint8(off) : size === 2 ? data.getUint16(off, true) : data.getUint32(off, true),
          );
        else {
          const d = this.access(isPio, false, size, addr, 0) as number;
          if (size === 1) data.setUint8(off, d & 0xff);
          else if (size === 2) data.setUint16(off, d & 0xffff, true);
          else data.setUint32(off, d >>> 0, true);
        }
      }
      return;
    }
    const lo = ch[e + Entry.DataLo]! >>> 0;
    if (isWrite) {
      this.access(isPio, true, size, addr, size === 8 ? (BigInt(ch[e + Entry.DataHi]! >>> 0) << 32n) | BigInt(lo) : lo);
      return;
    }
    const v = this.access(isPio, false, size, addr, 0);
    if (typeof v === 'bigint') {
      ch[e + Entry.DataLo] = Number(v & 0xffffffffn) | 0;
      ch[e + Entry.DataHi] = Number((v >> 32n) & 0xffffffffn) | 0;
    } else {
      ch[e + Entry.DataLo] = v | 0;
      ch[e + Entry.DataHi] = size === 8 ? Math.floor(v / 0x100000000) | 0 : 0;
    }
  }

  /** One guest access, dispatched to the memory API; counted per port / address. */
  private access(
    isPio: boolean,
    isWrite: boolean,
    size: number,
    addr: number,
    value: number | bigint,
  ): number | bigint {
    const stats = this.stats;
    stats.total++;
    const m = isPio ? stats.pio : stats.mmio;
    m.set(addr, (m.get(addr) ?? 0) + 1);
    const space = isPio ? this.io : this.memory;
    try {
      if (isWrite) {
        space.write(addr, size, value);
        return 0;
      }
      return space.read(addr, size);
    } catch (e) {
      // A device model bug must not take the VM down mid-access: report, read as all-ones.
      console.error(
        `tsvmm: ${isPio ? 'port' : 'mmio'} ${isWrite ? 'write' : 'read'} at 0x${addr.toString(16)} size ${size} failed: ${(e as Error).stack}`,
      );
      return size === 8 ? 0xffffffffffffffffn : 2 ** (8 * size) - 1;
    }
  }

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
