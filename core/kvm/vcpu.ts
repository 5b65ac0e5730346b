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
import { StateError, type Migratable, type StateReader, type StateWriter } from '../state.js';

/** KVM state blobs a reset puts back, in this order (mpState last: it may need the LAPIC). */
const RESET_STATE = ['regs', 'sregs', 'fpu', 'lapic', 'vcpuEvents', 'mpState'] as const;

/**
 * The state blobs a snapshot takes, in the order a restore puts them back (QEMU's
 * kvm_arch_put_registers: XSAVE before the segment registers, MSRs after them, then MP state,
 * LAPIC, pending events, debug registers). XSAVE holds the FPU; without it, the FPU alone.
 */
const SAVE_BEFORE_MSRS = ['regs', 'xsave', 'fpu', 'xcrs', 'sregs'] as const;
const SAVE_AFTER_MSRS = ['mpState', 'lapic', 'vcpuEvents', 'debugregs'] as const;
type SavedBlob = (typeof SAVE_BEFORE_MSRS)[number] | (typeof SAVE_AFTER_MSRS)[number];
const SAVED: readonly SavedBlob[] = [...SAVE_BEFORE_MSRS, ...SAVE_AFTER_MSRS];
/** MSRs a restore sets are this many at a time (KVM stops a batch at the first it refuses). */
const MSR_BATCH = 64;

export class Vcpu implements Migratable {
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

  // --- snapshot and migration (core/state.ts) ---------------------------------------------------
  get stateId(): string {
    return `cpu/${this.id}`;
  }
  readonly stateVersion = 1;
  /** The MSRs to save: KVM_GET_MSR_INDEX_LIST's (set by the VM; those a host cannot read are skipped). */
  msrIndexes: readonly number[] = [];

  /**
   * Every piece of KVM state a vCPU has (only while it is parked outside KVM_RUN with no I/O
   * half done): each state blob by name (a host that does not offer one, as XSAVE on a
   * paravirtual KVM, leaves it out), the TSC frequency, then the saveable MSRs and their values.
   */
  saveState(w: StateWriter): void {
    const n = native();
    const blobs: [SavedBlob, Uint8Array][] = [];
    for (const k of SAVED) {
      if (k === 'fpu' && blobs.some(([b]) => b === 'xsave')) continue;
      try {
        blobs.push([k, n.kvmGetState(this.fd, k)]);
      } catch (e) {
        if (k === 'regs' || k === 'sregs') throw e; // any KVM has these: a failure is real
      }
    }
    w.u8(blobs.length);
    for (const [k, b] of blobs) w.str(k).blob(b);
    let khz = 0;
    try {
      khz = n.kvmGetTscKhz(this.fd);
    } catch {
      /* not offered: the destination keeps its own */
    }
    w.u32(khz);
    const msrs = this.readMsrs();
    w.u32(msrs.length);
    for (const [i, v] of msrs) w.u32(i).u64(v);
  }

  /** The saveable MSRs this host can read, with their values (KVM stops at one it cannot: skip it). */
  private readMsrs(): [number, bigint][] {
    const out: [number, bigint][] = [];
    let rest = [...this.msrIndexes];
    while (rest.length) {
      const got = native().kvmGetMsrs(this.fd, rest);
      for (let i = 0; i < got.length; i++) out.push([rest[i]!, got[i]!]);
      rest = rest.slice(got.length + 1);
    }
    return out;
  }

  /** Puts saved state back (before the vCPU first runs, or while it is parked). */
  loadState(r: StateReader): void {
    const n = native();
    const count = r.u8('the number of state blobs');
    const blobs = new Map<SavedBlob, Uint8Array>();
    for (let i = 0; i < count; i++) {
      const name = r.str('a state name', 32) as SavedBlob;
      if (!SAVED.includes(name)) throw r.bad(`unknown vCPU state '${name}'`);
      blobs.set(name, r.blob(name));
    }
    const khz = r.u32('the TSC frequency');
    const nMsrs = r.u32('the MSR count');
    if (nMsrs > 4096) throw r.bad(`${nMsrs} MSRs`);
    const msrs: { index: number; data: bigint }[] = [];
    for (let i = 0; i < nMsrs; i++) msrs.push({ index: r.u32('an MSR index'), data: r.u64('an MSR value') });
    for (const need of ['regs', 'sregs'] as const) if (!blobs.has(need)) throw r.bad(`no ${need}`);
    const put = (k: SavedBlob) => {
      const b = blobs.get(k);
      if (!b) return;
      try {
        n.kvmSetState(this.fd, k, b);
      } catch (e) {
        throw new StateError(this.stateId, `restoring ${k}: ${(e as Error).message}`);
      }
    };
    if (khz) {
      let here = 0;
      try {
        here = n.kvmGetTscKhz(this.fd);
      } catch {
        /* not offered */
      }
      if (here && here !== khz) {
        try {
          n.kvmSetTscKhz(this.fd, khz);
        } catch (e) {
          // The guest's clocksource calibration would be off: say so, but run (as QEMU without invtsc does).
          console.error(
            `tsvmm: ${this.stateId}: the TSC ran at ${khz} kHz on the source, ${here} kHz here (${(e as Error).message}); the guest's time may drift`,
          );
        }
      }
    }
    for (const k of SAVE_BEFORE_MSRS) put(k);
    const refused = this.writeMsrs(msrs);
    if (refused.length)
      console.error(
        `tsvmm: ${this.stateId}: this host refused MSR${refused.length > 1 ? 's' : ''} ${refused.map((i) => `0x${i.toString(16)}`).join(', ')} (kept at their reset values)`,
      );
    for (const k of SAVE_AFTER_MSRS) put(k);
  }

  /** Sets MSRs in batches; returns those KVM refused (each batch goes on after the refused one). */
  private writeMsrs(msrs: { index: number; data: bigint }[]): number[] {
    const refused: number[] = [];
    for (let at = 0; at < msrs.length; ) {
      const batch = msrs.slice(at, at + MSR_BATCH);
      const done = native().kvmSetMsrs(this.fd, batch);
      at += done;
      if (done < batch.length) refused.push(msrs[at++]!.index);
    }
    return refused;
  }
}
