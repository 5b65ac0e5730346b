// The device thread's side of the application processors' rings (exit-channel.ts): answers what
// the APs posted, from vCPU 0's run slices (an AP's post kicks it out of KVM_RUN) or, while vCPU 0
// is not in a slice, from the event loop (Atomics.waitAsync on the doorbell).
import { Entry, Slot, STRING_DATA_OFFSET, Wake, createWake, entryIndex, ChanKind } from './exit-channel.js';
import type { IoDispatch } from './io-dispatch.js';
import type { RegisterFile } from './register-file.js';
import type { Vcpu } from './vcpu.js';

export class ApRings {
  /** The device thread's doorbell for the APs (exit-channel.ts Wake). */
  readonly wake = createWake();
  private serving = false;

  /** `vcpus`: the VM's list (index 0 is vCPU 0, which has no ring to serve). */
  constructor(
    private readonly vcpus: readonly Vcpu[],
    private readonly dispatch: IoDispatch,
    private readonly registers?: RegisterFile,
  ) {}

  /** Serves the rings from the event loop until end(). */
  start(): void {
    this.serving = true;
    this.serveFromLoop();
  }
  end(): void {
    this.serving = false;
    Atomics.notify(this.wake, Wake.KickPending); // ends serveFromLoop's wait
  }

  /** Serves the rings if an AP rang since they were last served. */
  serveIfRung(): void {
    if (Atomics.load(this.wake, Wake.KickPending)) this.serve();
  }

  /** Answers every request the APs have posted, oldest first per AP. */
  serve(): void {
    Atomics.store(this.wake, Wake.KickPending, 0); // before looking: a later post rings again
    this.foldLocalReads();
    for (let i = 1; i < this.vcpus.length; i++) {
      const v = this.vcpus[i]!;
      const ch = v.channel;
      let tail = Atomics.load(ch, Slot.Tail);
      const head = Atomics.load(ch, Slot.Head);
      if (tail === head) continue;
      for (; tail !== head; tail++) {
        this.serveEntry(ch, v.channelView, entryIndex(tail));
        Atomics.store(ch, Slot.Tail, tail + 1);
      }
      Atomics.notify(ch, Slot.Tail);
    }
  }

  /** The reads the APs answered themselves (register-file.ts) count in the exit statistics too. */
  foldLocalReads(): void {
    const st = this.dispatch.stats;
    this.registers?.fold((port, n) => {
      st.ioExits += n;
      st.total += n;
      if (st.byAddress) st.pio.set(port, (st.pio.get(port) ?? 0) + n);
    });
  }

  private serveFromLoop(): void {
    if (!this.serving || this.vcpus.length < 2) return;
    const w = Atomics.waitAsync(this.wake, Wake.KickPending, 0);
    if (w.async) {
      void w.value.then(() => {
        this.serve();
        this.serveFromLoop();
      });
    } else {
      this.serve();
      setImmediate(() => this.serveFromLoop());
    }
  }

  /** One posted access: a single element's data in the entry (DataLo, DataHi), a REP string's after the ring. */
  private serveEntry(ch: Int32Array, view: DataView, e: number): void {
    const count = ch[e + Entry.Count]!;
    this.dispatch.serve(
      ch[e + Entry.Kind] === ChanKind.Pio,
      ch[e + Entry.IsWrite] === 1,
      ch[e + Entry.Size]!,
      (ch[e + Entry.AddrLo]! >>> 0) + (ch[e + Entry.AddrHi]! >>> 0) * 0x100000000,
      count,
      view,
      count > 1 ? STRING_DATA_OFFSET : (e + Entry.DataLo) * 4,
    );
  }
}
