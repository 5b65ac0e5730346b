// vCPU 0's run loop on the main (device) thread, in slices: each slice arms a native loop watcher
// and runs KVM_RUN, answering exits inline through the memory API, until the watcher says the
// event loop has work (it kicks the vCPU out of KVM_RUN), the vCPU is paused or stopped, or the
// time budget is spent; then the event loop runs (setImmediate) and the next slice starts.
import { native } from '../native.js';
import { Control, Slot, Wake, type VcpuStop } from './exit-channel.js';
import { ExitDecoder, ExitKind } from './exits.js';
import type { ApRings } from './ap-rings.js';
import { nativeLocalReads, type RegisterFile } from './register-file.js';
import type { IoDispatch } from './io-dispatch.js';
import type { Vcpu } from './vcpu.js';

export class BootVcpuLoop {
  /** How long vCPU 0 may run exits back to back before the event loop gets a turn anyway (a safety net: the watcher yields earlier whenever the loop has work). */
  sliceBudgetMs = 10;
  /** The longest the event loop waits for a turn, once code ran on its thread during a slice, for what no fd or timer announces (an immediate or microtask a device queued, say). A slice that runs no code (the guest busy without exits, interrupts by irqfd) waits for a timer or fd alone. */
  maxLoopWaitMs = 50;
  /** Whether the last slice answered exits (the next one likely does too: its cap starts at the arm). */
  private lastSliceRanCode = false;
  /** Continues a parked or stopped vCPU 0 (set while it waits outside its run slices). */
  private continueFn: (() => void) | undefined;
  private readonly exit: ExitDecoder;

  constructor(
    private readonly v: Vcpu,
    private readonly kickSignal: number,
    private readonly mainThread: bigint,
    private readonly rings: ApRings,
    private readonly dispatch: IoDispatch,
    private readonly registers?: RegisterFile,
  ) {
    this.exit = new ExitDecoder(v.runView, v.runBytes);
  }

  /** Lets a parked vCPU 0 see a changed Control (resume, stop). */
  wake(): void {
    this.continueFn?.();
  }

  /** Runs vCPU 0 until it stops; resolves with why. */
  run(): Promise<VcpuStop> {
    const n = native();
    const v = this.v;
    const ch = v.channel;
    v.onMainThread = true;
    v.thread[0] = this.mainThread;
    n.kvmSetSignalMask(v.fd, [this.kickSignal]);
    n.threadEatSignal(this.kickSignal); // a kick left over from an earlier VM of this process
    const watcher = n.loopWatcherCreate(v.run, n.kvmRunLayout.immediateExit, this.mainThread, this.kickSignal);
    // Reads of published registers (register-file.ts) never leave the native run call: what this
    // thread's models published is their state (they publish before answering the access that
    // changed it), and vCPU 0 posts nothing.
    const reads = this.registers
      ? nativeLocalReads(this.registers.view, this.registers.countsFor(v.id), v.run, ch)
      : undefined;
    n.loopWatcherBind(watcher, v.fd, reads);
    Atomics.store(ch, Slot.Running, 1);
    return new Promise<VcpuStop>((resolve) => {
      const finish = (stop: VcpuStop): void => {
        this.continueFn = undefined;
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
          this.continueFn = () => {
            this.continueFn = undefined;
            Atomics.store(ch, Slot.Parked, 0);
            setImmediate(slice);
          };
          return;
        }
        let stop: VcpuStop | undefined;
        try {
          stop = this.runSlice(watcher);
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

  /** One slice (see the file's head); returns why the vCPU stopped, or undefined to go on later. */
  private runSlice(watcher: unknown): VcpuStop | undefined {
    const n = native();
    const L = n.kvmRunLayout;
    const v = this.v,
      ch = v.channel,
      bytes = v.runBytes,
      page = v.runView;
    const rings = this.rings,
      wake = rings.wake,
      exit = this.exit,
      dispatch = this.dispatch;
    Atomics.store(wake, Wake.InKvmRun, 1);
    const rung = Atomics.load(wake, Wake.KickPending) !== 0;
    rings.serveIfRung();
    // The cap starts at the arm when work may be pending already (an AP's access just ran device
    // code, an immediate is queued) or code is likely to run (one wake of the watcher less than
    // starting it at the first exit); otherwise at the first exit.
    const capNow = rung || this.lastSliceRanCode || process.getActiveResourcesInfo().includes('Immediate');
    this.lastSliceRanCode = false;
    n.loopWatcherArm(watcher, this.maxLoopWaitMs, capNow, this.sliceBudgetMs);
    // Date.now(), not performance.now(): its 1 ms steps are enough for a 10 ms budget, and the
    // performance global loads perf_hooks' modules at the first slice (start-up time).
    const t0 = Date.now();
    let k = 0;
    try {
      for (;;) {
        // KVM_RUN, the watcher first brought up to date with what the last exit's handler did
        // (a timer it started, the cap on work it queued): one native call per exit JS answers.
        const r = n.loopWatcherKvmRun(watcher);
        // 1: the budget ran out on reads answered in native code (counted there).
        if (r === 1) return undefined;
        ch[Slot.Exits] = (ch[Slot.Exits]! + 1) | 0;
        if (r < 0) {
          // Kicked: by the watcher (the event loop has work), an AP's post, or a pause/stop.
          n.threadEatSignal(this.kickSignal);
          rings.serveIfRung();
          if (Atomics.load(ch, Slot.Control) !== Control.Run) return undefined;
          if (n.loopWatcherFired(watcher)) return undefined;
          bytes[L.immediateExit] = 0;
          this.lastSliceRanCode = true; // an AP's posted access may have run device code
          continue;
        }
        const kind = exit.decode();
        // What the APs posted first goes first: a write an AP posted before it let vCPU 0 on (a
        // console lock released, say) must reach the device before vCPU 0's own access does.
        rings.serveIfRung();
        if (kind === ExitKind.Access)
          dispatch.serve(exit.isPio, exit.isWrite, exit.size, exit.addr, exit.count, page, exit.dataOffset);
        else if (kind === ExitKind.Stop) return exit.stop;
        rings.serveIfRung();
        if (Atomics.load(ch, Slot.Control) !== Control.Run) return undefined;
        if ((++k & 7) === 0 && Date.now() - t0 > this.sliceBudgetMs) return undefined;
      }
    } finally {
      if (k > 0) this.lastSliceRanCode = true;
      Atomics.store(wake, Wake.InKvmRun, 0);
      n.loopWatcherDisarm(watcher);
      rings.serveIfRung(); // an AP that saw InKvmRun 1 only kicked
    }
  }
}
