// Application-processor thread (vCPU >= 1, in a pool worker): runs KVM_RUN in a loop and hands
// port I/O and MMIO to the device thread through its ring (exit-channel.ts): writes are posted,
// reads and REP strings wait for their answer. A read of a register a device model published
// (register-file.ts) is answered here: inside the native run call when nothing is posted, else in
// JS when what this vCPU posted and is still unanswered changes nothing published.
// Other exits end the loop with a reason.
import { native, PROT_READ, PROT_WRITE, MAP_SHARED } from '../native.js';
import {
  ChanKind,
  Control,
  Entry,
  RING_ENTRIES,
  Slot,
  STRING_DATA_OFFSET,
  Wake,
  entryIndex,
  type VcpuStop,
} from './exit-channel.js';
import { EAGAIN, EINTR, ExitDecoder, ExitKind, copyElement, storeElement } from './exits.js';
import { nativeLocalReads, readPublished, type RegisterFileView } from './register-file.js';

export interface VcpuTask {
  vcpuFd: number;
  mmapSize: number;
  channel: Int32Array;
  kickSignal: number;
  /** The thread handle for kicks is published here (BigInt64 slot 0). */
  thread: BigInt64Array;
  /** The device thread's doorbell and handle (it runs vCPU 0). */
  wake: Int32Array;
  mainThread: bigint;
  /** The registers answered on this thread, and where it counts those answers (per register). */
  registers: RegisterFileView;
  localCounts: Int32Array;
}

export default function runVcpu(task: VcpuTask): VcpuStop {
  const n = native();
  const L = n.kvmRunLayout;
  const ch = task.channel;
  const wake = task.wake;
  const strData = new Uint8Array(ch.buffer, STRING_DATA_OFFSET);
  const chView = new DataView(ch.buffer);
  task.thread[0] = n.threadPrepareKick(task.kickSignal);
  const run = n.mmap(0, task.mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, task.vcpuFd, 0);
  const page = new DataView(run.buffer);
  const bytes = new Uint8Array(run.buffer);
  const exit = new ExitDecoder(page, bytes);
  const regs = task.registers,
    localCounts = task.localCounts;
  // Reads of published registers with nothing posted unanswered never leave the native run call.
  const reads = nativeLocalReads(regs, localCounts, run.buffer, ch);
  let head = Atomics.load(ch, Slot.Head);
  Atomics.store(ch, Slot.Running, 1);

  const ring = (): void => {
    if (Atomics.compareExchange(wake, Wake.KickPending, 0, 1) !== 0) return; // already rung
    // Inside vCPU 0's run slice: kick it out of KVM_RUN (it serves the rings, then runs on).
    // Outside: wake the event loop's waitAsync. The device thread checks KickPending after each
    // InKvmRun change, so one of the two always sees the other (sequentially consistent atomics).
    if (Atomics.load(wake, Wake.InKvmRun) === 1) n.threadKick(task.mainThread, task.kickSignal);
    else Atomics.notify(wake, Wake.KickPending);
  };
  const waitTail = (until: number): void => {
    for (;;) {
      const t = Atomics.load(ch, Slot.Tail);
      if (t >= until) return;
      Atomics.wait(ch, Slot.Tail, t);
    }
  };
  /**
   * Queues one request; returns its sequence number (answered once Tail passes it). A single
   * element's data is copied into the entry from page[dataOff] (-1: none, zeros).
   */
  const post = (
    kind: ChanKind,
    isWrite: boolean,
    size: number,
    addr: number,
    count: number,
    dataOff: number,
  ): number => {
    if (head - Atomics.load(ch, Slot.Tail) >= RING_ENTRIES) {
      ring();
      waitTail(head - RING_ENTRIES + 1);
    }
    const e = entryIndex(head);
    ch[e + Entry.Kind] = kind;
    ch[e + Entry.IsWrite] = isWrite ? 1 : 0;
    ch[e + Entry.Size] = size;
    ch[e + Entry.AddrLo] = addr % 0x100000000;
    ch[e + Entry.AddrHi] = Math.floor(addr / 0x100000000);
    ch[e + Entry.DataLo] = 0;
    ch[e + Entry.DataHi] = 0;
    if (dataOff >= 0) copyElement(page, dataOff, chView, (e + Entry.DataLo) * 4, size);
    ch[e + Entry.Count] = count;
    const seq = head++;
    Atomics.store(ch, Slot.Head, head);
    ring();
    return seq;
  };
  /** Waits until every posted request is answered (before parking or leaving). */
  const drain = (): void => waitTail(head);

  try {
    for (;;) {
      let ctl = Atomics.load(ch, Slot.Control);
      if (ctl === Control.Pause) {
        // Parked outside KVM_RUN, nothing posted left, until resumed or stopped (QMP stop / cont, reset).
        drain();
        Atomics.store(ch, Slot.Parked, 1);
        Atomics.notify(ch, Slot.Parked);
        while ((ctl = Atomics.load(ch, Slot.Control)) === Control.Pause) Atomics.wait(ch, Slot.Control, Control.Pause);
        Atomics.store(ch, Slot.Parked, 0);
      }
      if (ctl === Control.Stop) return { reason: 'stopped' };
      const r = n.localReadsKvmRun(reads, task.vcpuFd);
      ch[Slot.Exits] = (ch[Slot.Exits]! + 1) | 0;
      if (r === -EINTR || r === -EAGAIN) {
        bytes[L.immediateExit] = 0;
        continue;
      }
      const kind = exit.decode();
      if (kind === ExitKind.Stop) return exit.stop!;
      if (kind === ExitKind.RunOn) continue;
      const { isWrite, size, addr, count, dataOffset: off } = exit;
      if (!isWrite && count === 1 && exit.isPio) {
        // Only behind our own posted writes that change nothing published (Tail is stored after the
        // device published what a write changed).
        const v = readPublished(regs, addr, size, ch, Atomics.load(ch, Slot.Tail), head);
        if (v >= 0) {
          storeElement(page, off, size, v);
          localCounts[regs.portSlot[addr]!]++;
          continue;
        }
      }
      const chanKind = exit.isPio ? ChanKind.Pio : ChanKind.Mmio;
      if (count === 1) {
        const seq = post(chanKind, isWrite, size, addr, count, isWrite ? off : -1);
        if (!isWrite) {
          waitTail(seq + 1);
          copyElement(chView, (entryIndex(seq) + Entry.DataLo) * 4, page, off, size);
        }
      } else {
        // REP INS/OUTS: the whole string in one round trip (KVM's data area is at most a page).
        const len = count * size;
        if (isWrite) strData.set(bytes.subarray(off, off + len));
        const seq = post(chanKind, isWrite, size, addr, count, -1);
        waitTail(seq + 1);
        if (!isWrite) bytes.set(strData.subarray(0, len), off);
      }
    }
  } catch (e) {
    const err = e as Error & { code?: string };
    return { reason: 'error', message: err.message, ...(err.code ? { code: err.code } : {}) };
  } finally {
    // Whatever this vCPU posted is answered before it counts as gone (a posted debug-exit write, say).
    try {
      drain();
    } finally {
      Atomics.store(ch, Slot.Running, 0);
      n.munmap(run.buffer);
    }
  }
}
