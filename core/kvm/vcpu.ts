// Main-thread handle of a vCPU: its fd, a mapping of its kvm_run page (to set immediate_exit
// when kicking), and the exit channel shared with the worker thread that runs it.
import { closeSync } from 'node:fs';
import { native, PROT_READ, PROT_WRITE, MAP_SHARED, type Regs, type Sregs, type CpuidEntry } from '../native.js';
import { createChannel, Control, Slot } from './exit-channel.js';

export class Vcpu {
  readonly channel = createChannel();
  /** Worker thread handle (pthread_t), published by the worker when it starts. */
  readonly thread = new BigInt64Array(new SharedArrayBuffer(8));
  private readonly run: ArrayBuffer;
  private readonly runBytes: Uint8Array;

  constructor(readonly id: number, readonly fd: number, readonly mmapSize: number) {
    this.run = native().mmap(0, mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0).buffer;
    this.runBytes = new Uint8Array(this.run);
  }

  getRegs(): Regs { return native().kvmGetRegs(this.fd); }
  setRegs(r: Partial<Regs>): void { native().kvmSetRegs(this.fd, r); }
  getSregs(): Sregs { return native().kvmGetSregs(this.fd); }
  setSregs(s: Partial<Sregs>): void { native().kvmSetSregs(this.fd, s); }
  setCpuid(entries: CpuidEntry[]): void { native().kvmSetCpuid2(this.fd, entries); }
  setMsrs(msrs: { index: number; data: number | bigint }[]): void {
    const n = native().kvmSetMsrs(this.fd, msrs);
    if (n !== msrs.length) throw new Error(`KVM_SET_MSRS set ${n} of ${msrs.length} MSRs (first refused: 0x${msrs[n]!.index.toString(16)})`);
  }

  get exits(): number { return this.channel[Slot.Exits]! >>> 0; }
  get running(): boolean { return Atomics.load(this.channel, Slot.Running) === 1; }

  /** Asks the run loop to end: flag first, then immediate_exit, then the signal (see vcpu-worker). */
  stop(kickSignal: number): void {
    Atomics.store(this.channel, Slot.Control, Control.Stop);
    Atomics.notify(this.channel, Slot.Control); // a paused worker wakes to stop
    this.kick(kickSignal);
  }

  /** Parks the vCPU outside KVM_RUN (it resumes where it was). */
  pause(kickSignal: number): void {
    if (Atomics.compareExchange(this.channel, Slot.Control, Control.Run, Control.Pause) !== Control.Run) return;
    this.kick(kickSignal);
  }

  resume(): void {
    if (Atomics.compareExchange(this.channel, Slot.Control, Control.Pause, Control.Run) === Control.Pause)
      Atomics.notify(this.channel, Slot.Control);
  }

  /** Whether the worker sits parked by a Pause (outside KVM_RUN, nothing pending with the main thread). */
  get parked(): boolean { return Atomics.load(this.channel, Slot.Parked) === 1; }

  /**
   * Completes a port/MMIO read KVM is still waiting to finish (its data sits in the run page until
   * the next KVM_RUN): KVM_RUN with immediate_exit does that and returns at once, so registers
   * set afterwards are not overwritten by the old instruction's completion. Only while parked.
   */
  flushPendingIo(): void {
    const L = native().kvmRunLayout;
    this.runBytes[L.immediateExit] = 1;
    try { native().kvmRun(this.fd); } finally { this.runBytes[L.immediateExit] = 0; }
  }

  private kick(kickSignal: number): void {
    if (!this.running) return;
    this.runBytes[native().kvmRunLayout.immediateExit] = 1;
    const t = this.thread[0]!;
    if (t !== 0n) native().threadKick(t, kickSignal);
  }

  close(): void {
    native().munmap(this.run);
    closeSync(this.fd);
  }
}
