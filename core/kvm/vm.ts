// A KVM virtual machine: the VM fd, its two address spaces (system memory, port I/O) whose RAM
// sections a listener turns into memslots, the in-kernel irqchip and PIT, GSI routing, and the
// vCPUs, each running KVM_RUN in its own worker thread. Exits that need userspace come back
// here and are dispatched to the memory API on this (the main) thread.
import { closeSync } from 'node:fs';
import { Tinypool } from 'tinypool';
import { native } from '../native.js';
import { AddressSpace, MemoryRegion } from '../memory/index.js';
import { Kvm } from './kvm.js';
import { KvmMemslots } from './memslots.js';
import { GsiRouting } from './gsi-routing.js';
import { Vcpu } from './vcpu.js';
import { ChanKind, ChanState, Control, Slot, type VcpuStop } from './exit-channel.js';
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
  total = 0;
  /** Interrupts the VMM injected itself (KVM_IRQ_LINE, KVM_SIGNAL_MSI) rather than through irqfd. */
  irqInjections = 0;
  mmioIn(lo: number, hi: number): number {
    let n = 0;
    for (const [a, c] of this.mmio) if (a >= lo && a < hi) n += c;
    return n;
  }
}

const KVM_TSS_ADDR = 0xfffbd000;
const KVM_IDENTITY_MAP_ADDR = 0xfffbc000;

export class Vm {
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
  /** How long the main thread waits synchronously for a vCPU's next exit (see serve()). */
  syncWaitMs = Number(process.env.TSVMM_SYNC_WAIT_MS ?? 0.2);
  private readonly closers: (() => void)[] = [];
  private closed = false;

  constructor(readonly kvm: Kvm, opts: VmOptions = {}) {
    const n = native();
    const c = n.constants;
    this.irqchip = opts.irqchip ?? true;
    this.kickSignal = c.SIGRTMIN! + 2;
    kvm.requireExtensions(['KVM_CAP_USER_MEMORY', 'KVM_CAP_IMMEDIATE_EXIT',
      ...(this.irqchip ? ['KVM_CAP_IRQCHIP', 'KVM_CAP_IRQFD', 'KVM_CAP_IRQ_ROUTING', 'KVM_CAP_PIT2'] : [])]);
    this.fd = n.kvmCreateVm(kvm.fd, 0);
    try {
      if (kvm.checkExtension(c.KVM_CAP_SET_TSS_ADDR!) > 0) n.kvmSetTssAddr(this.fd, KVM_TSS_ADDR);
      if (kvm.checkExtension(c.KVM_CAP_SET_IDENTITY_MAP_ADDR!) > 0) n.kvmSetIdentityMapAddr(this.fd, KVM_IDENTITY_MAP_ADDR);
      if (this.irqchip) {
        n.kvmCreateIrqchip(this.fd);
        n.kvmCreatePit2(this.fd, c.KVM_PIT_SPEAKER_DUMMY!);
      }
      const slots = Math.max(kvm.checkExtension(c.KVM_CAP_NR_MEMSLOTS!), 32);
      this.memslots = new KvmMemslots(this.fd, slots, kvm.checkExtension(c.KVM_CAP_READONLY_MEM!) > 0);
      this.memory = new AddressSpace('memory', MemoryRegion.container('system', 2 ** 52));
      this.io = new AddressSpace('io', MemoryRegion.container('io', 0x10000));
      this.memory.addListener(this.memslots);
      this.gsi = new GsiRouting(this.fd);
      // Our table from the start: KVM's default sends GSI 0 to IOAPIC pin 0, ours (as QEMU's and
      // the MP/ACPI tables) to pin 2; pushing it at the first MSI would reroute under the guest.
      if (this.irqchip) this.gsi.commit();
    } catch (e) {
      closeSync(this.fd);
      throw e;
    }
  }

  /** Registers cleanup to run (in reverse order) when the VM closes. */
  onClose(fn: () => void): void { this.closers.push(fn); }

  createVcpu(): Vcpu {
    const id = this.vcpus.length;
    const fd = native().kvmCreateVcpu(this.fd, id);
    const v = new Vcpu(id, fd, this.kvm.vcpuMmapSize());
    this.vcpus.push(v);
    return v;
  }

  // --- interrupts -------------------------------------------------------------------------
  irqfd(eventFd: number, gsi: number, resampleFd?: number): void {
    const c = native().constants;
    native().kvmIrqfd(this.fd, { fd: eventFd, gsi, flags: resampleFd === undefined ? 0 : c.KVM_IRQFD_FLAG_RESAMPLE!, resamplefd: resampleFd ?? 0 });
  }
  irqfdRemove(eventFd: number, gsi: number): void {
    native().kvmIrqfd(this.fd, { fd: eventFd, gsi, flags: native().constants.KVM_IRQFD_FLAG_DEASSIGN! });
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
   * Runs every vCPU in its own worker until all have stopped; resolves with each one's reason.
   * Exits needing userspace are served here, on the main thread, between other events.
   */
  async run(): Promise<VcpuStop[]> {
    if (this.pool) throw new Error('VM is already running');
    const n = this.vcpus.length;
    if (n === 0) throw new Error('VM has no vCPUs');
    this.pool = new Tinypool({
      filename: new URL('./vcpu-worker.js', import.meta.url).href,
      minThreads: n, maxThreads: n, isolateWorkers: false, idleTimeout: 2 ** 31 - 1,
    });
    const done = this.vcpus.map(() => ({ value: false }));
    const runs = this.vcpus.map((v, i) => {
      const task: VcpuTask = { vcpuFd: v.fd, mmapSize: v.mmapSize, channel: v.channel, kickSignal: this.kickSignal, thread: v.thread };
      this.serve(v, done[i]!);
      return (this.pool!.run(task) as Promise<VcpuStop>).catch((e: Error): VcpuStop => ({ reason: 'error', message: e.message }))
        .then((stop) => {
          done[i]!.value = true;
          Atomics.notify(v.channel, Slot.State); // release this thread's waitAsync
          if (stop.reason !== 'stopped') this.stop(); // one vCPU ending the VM stops the others
          return stop;
        });
    });
    try {
      return await Promise.all(runs);
    } finally {
      await this.pool.destroy();
      this.pool = undefined;
    }
  }

  /** Parks every vCPU outside KVM_RUN (QMP stop); resume() lets them continue. */
  pause(): void { for (const v of this.vcpus) v.pause(this.kickSignal); }
  resume(): void { for (const v of this.vcpus) v.resume(); }

  /**
   * Runs `prepare` with every vCPU parked outside KVM_RUN and no I/O half done (system_reset):
   * pauses, waits for each worker to park while exits keep being answered, completes pending
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
    for (const v of this.vcpus) if (v.running) v.flushPendingIo();
    try {
      prepare();
    } finally {
      if (!wasPaused) this.resume();
    }
  }
  get paused(): boolean { return this.vcpus.length > 0 && this.vcpus.every((v) => Atomics.load(v.channel, Slot.Control) === Control.Pause); }

  /** Stops all vCPUs (idempotent; safe from a device callback). */
  stop(): void {
    for (const v of this.vcpus) v.stop(this.kickSignal);
  }

  private serve(v: Vcpu, done: { value: boolean }): void {
    const ch = v.channel;
    const step = (): void => {
      // After an exit, the next one of a busy guest usually follows within microseconds: wait
      // for it synchronously (a futex wait, not a spin) for a short while before going back
      // to the event loop, whose cross-thread wake-up costs far more than the exit itself.
      let deadline = 0;
      for (;;) {
        const s = Atomics.load(ch, Slot.State);
        if (s === ChanState.Request) {
          this.handleExit(ch);
          Atomics.store(ch, Slot.State, ChanState.Response);
          Atomics.notify(ch, Slot.State);
          deadline = performance.now() + this.syncWaitMs;
          continue;
        }
        if (done.value) return;
        const left = deadline - performance.now();
        if (left > 0) {
          Atomics.wait(ch, Slot.State, s, left);
          continue;
        }
        const w = Atomics.waitAsync(ch, Slot.State, s);
        if (w.async) {
          void w.value.then(step);
          return;
        }
      }
    };
    step();
  }

  private handleExit(ch: Int32Array): void {
    const isPio = ch[Slot.Kind] === ChanKind.Pio;
    const size = ch[Slot.Size]!;
    const addr = (ch[Slot.AddrLo]! >>> 0) + (ch[Slot.AddrHi]! >>> 0) * 0x100000000;
    const stats = this.stats;
    stats.total++;
    const m = isPio ? stats.pio : stats.mmio;
    m.set(addr, (m.get(addr) ?? 0) + 1);
    const space = isPio ? this.io : this.memory;
    try {
      if (ch[Slot.IsWrite]) {
        const lo = ch[Slot.DataLo]! >>> 0;
        space.write(addr, size, size === 8 ? (BigInt(ch[Slot.DataHi]! >>> 0) << 32n) | BigInt(lo) : lo);
      } else {
        const v = space.read(addr, size);
        if (typeof v === 'bigint') {
          ch[Slot.DataLo] = Number(v & 0xffffffffn) | 0;
          ch[Slot.DataHi] = Number(v >> 32n) | 0;
        } else {
          ch[Slot.DataLo] = v | 0;
          ch[Slot.DataHi] = size === 8 ? Math.floor(v / 0x100000000) | 0 : 0;
        }
      }
    } catch (e) {
      // A device model bug must not take the VM down mid-access: report, read as all-ones.
      console.error(`tsvmm: ${isPio ? 'port' : 'mmio'} ${ch[Slot.IsWrite] ? 'write' : 'read'} at 0x${addr.toString(16)} size ${size} failed: ${(e as Error).stack}`);
      ch[Slot.DataLo] = -1;
      ch[Slot.DataHi] = size === 8 ? -1 : 0;
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const fn of this.closers.reverse()) {
      try { fn(); } catch (e) { console.error(`tsvmm: cleanup failed: ${(e as Error).message}`); }
    }
    for (const v of this.vcpus) v.close();
    closeSync(this.fd);
  }
}
