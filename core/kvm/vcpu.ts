// Main-thread handle of a vCPU: its fd, a mapping of its kvm_run page (vCPU 0 runs on the main
// thread from it; for the others it sets immediate_exit when kicking), the channel shared with
// the worker thread that runs an application processor, and the power-on state for reset.
import { closeSync } from 'node:fs';
import {
  native,
  PROT_READ,
  PROT_WRITE,
  MAP_SHARED,
  type Regs,
  type Sregs,
  type CpuidEntry,
  type KvmStateName,
} from '../native.js';
import { createChannel, Control, Slot } from './exit-channel.js';

/** KVM state blobs a reset puts back, in this order (mpState last: it may need the LAPIC). */
const RESET_STATE = ['regs', 'sregs', 'fpu', 'lapic', 'vcpuEvents', 'mpState'] as const;

export class Vcpu {
  readonly channel = createChannel();
  /** The channel as bytes: where the device thread reads and answers this AP's access data. */
  readonly channelView = new DataView(this.channel.buffer);
  /** Worker thread handle (pthread_t), published by the thread that runs the vCPU. */
  readonly thread = new BigInt64Array(new SharedArrayBuffer(8));
  /** The kvm_run page. */
  readonly run: ArrayBuffer;
  readonly runBytes: Uint8Array;
  readonly runView: DataView;
  /** Run by the main (device) thread itself: while JS runs there, this vCPU is outside KVM_RUN. */
  onMainThread = false;
  /** The state KVM gave the vCPU at creation (power-on), for system_reset. */
  private readonly powerOn: Map<KvmStateName, Uint8Array>;

  constructor(
    readonly id: number,
    readonly fd: number,
    readonly mmapSize: number,
    readonly kickSignal: number,
  ) {
    this.run = native().mmap(0, mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0).buffer;
    this.runBytes = new Uint8Array(this.run);
    this.runView = new DataView(this.run);
    // Without an in-kernel irqchip there is no LAPIC or MP state to take (and nothing to reset there).
    this.powerOn = new Map();
    for (const k of RESET_STATE) {
      try {
        this.powerOn.set(k, native().kvmGetState(fd, k));
      } catch {
        /* not offered by this VM */
      }
    }
  }

  getRegs(): Regs {
    return native().kvmGetRegs(this.fd);
  }
  setRegs(r: Partial<Regs>): void {
    native().kvmSetRegs(this.fd, r);
  }
  getSregs(): Sregs {
    return native().kvmGetSregs(this.fd);
  }
  setSregs(s: Partial<Sregs>): void {
    native().kvmSetSregs(this.fd, s);
  }
  setCpuid(entries: CpuidEntry[]): void {
    native().kvmSetCpuid2(this.fd, entries);
  }
  setMsrs(msrs: { index: number; data: number | bigint }[]): void {
    const n = native().kvmSetMsrs(this.fd, msrs);
    if (n !== msrs.length)
      throw new Error(`KVM_SET_MSRS set ${n} of ${msrs.length} MSRs (first refused: 0x${msrs[n]!.index.toString(16)})`);
  }
  /** Multiprocessing state (KVM_MP_STATE_*): an AP starts, and returns on reset to, waiting for INIT/SIPI. */
  get mpState(): number {
    return new DataView(native().kvmGetState(this.fd, 'mpState').buffer).getUint32(0, true);
  }

  /**
   * Back to the state KVM gave it at creation: registers, segments, FPU, LAPIC, pending events,
   * and for an AP the wait for INIT/SIPI. Only while it is parked outside KVM_RUN.
   */
  resetToPowerOn(): void {
    for (const [k, v] of this.powerOn) native().kvmSetState(this.fd, k, v);
  }

  get exits(): number {
    return this.channel[Slot.Exits]! >>> 0;
  }
  get running(): boolean {
    return Atomics.load(this.channel, Slot.Running) === 1;
  }

  /** Asks the run loop to end: flag first, then immediate_exit, then the signal (see vcpu-worker). */
  stop(): void {
    Atomics.store(this.channel, Slot.Control, Control.Stop);
    Atomics.notify(this.channel, Slot.Control); // a paused worker wakes to stop
    this.kick();
  }

  /** Parks the vCPU outside KVM_RUN (it resumes where it was). */
  pause(): void {
    if (Atomics.compareExchange(this.channel, Slot.Control, Control.Run, Control.Pause) !== Control.Run) return;
    this.kick();
  }

  resume(): void {
    if (Atomics.compareExchange(this.channel, Slot.Control, Control.Pause, Control.Run) === Control.Pause)
      Atomics.notify(this.channel, Slot.Control);
  }

  /** Whether the vCPU sits parked by a Pause (outside KVM_RUN, nothing pending with the main thread). */
  get parked(): boolean {
    return Atomics.load(this.channel, Slot.Parked) === 1;
  }

  /**
   * Completes a port/MMIO read KVM is still waiting to finish (its data sits in the run page until
   * the next KVM_RUN): KVM_RUN with immediate_exit does that and returns at once, so registers
   * set afterwards are not overwritten by the old instruction's completion. Only while parked.
   */
  flushPendingIo(): void {
    const L = native().kvmRunLayout;
    this.runBytes[L.immediateExit] = 1;
    try {
      native().kvmRun(this.fd);
    } finally {
      this.runBytes[L.immediateExit] = 0;
    }
    // A kick still pending for the main thread made that KVM_RUN return at once; it is spent.
    if (this.onMainThread) native().threadEatSignal(this.kickSignal);
  }

  private kick(): void {
    // JS running on the main thread means its vCPU is outside KVM_RUN: it sees the flag first.
    if (!this.running || this.onMainThread) return;
    this.runBytes[native().kvmRunLayout.immediateExit] = 1;
    const t = this.thread[0]!;
    if (t !== 0n) native().threadKick(t, this.kickSignal);
  }

  close(): void {
    native().munmap(this.run);
    closeSync(this.fd);
  }
}
