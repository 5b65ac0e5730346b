// Application-processor thread (vCPU >= 1, in a pool worker): runs KVM_RUN in a loop and hands
// port I/O and MMIO to the device thread through its ring (exit-channel.ts): writes are posted,
// reads and REP strings wait for their answer. Other exits end the loop with a reason.
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
import { EAGAIN, EINTR, stopForExit } from './exits.js';

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
}

export default function runVcpu(task: VcpuTask): VcpuStop {
  const n = native();
  const c = n.constants;
  const L = n.kvmRunLayout;
  const ch = task.channel;
  const wake = task.wake;
  const strData = new Uint8Array(ch.buffer, STRING_DATA_OFFSET);
  task.thread[0] = n.threadPrepareKick(task.kickSignal);
  const run = n.mmap(0, task.mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, task.vcpuFd, 0);
  const page = new DataView(run.buffer);
  const bytes = new Uint8Array(run.buffer);
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
  /** Queues one request; returns its sequence number (answered once Tail passes it). */
  const post = (
    kind: ChanKind,
    isWrite: boolean,
    size: number,
    addr: number,
    lo: number,
    hi: number,
    count: number,
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
    ch[e + Entry.DataLo] = lo;
    ch[e + Entry.DataHi] = hi;
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
      const r = n.kvmRun(task.vcpuFd);
      ch[Slot.Exits] = (ch[Slot.Exits]! + 1) | 0;
      if (r === -EINTR || r === -EAGAIN) {
        bytes[L.immediateExit] = 0;
        continue;
      }
      const reason = page.getUint32(L.exitReason, true);
      if (reason === c.KVM_EXIT_IO) {
        const isOut = bytes[L.ioDirection] === c.KVM_EXIT_IO_OUT;
        const size = bytes[L.ioSize]!;
        const port = page.getUint16(L.ioPort, true);
        const count = page.getUint32(L.ioCount, true);
        const off = page.getUint32(L.ioDataOffset, true); // an offset into the page: the high half is 0
        if (count === 1) {
          const v = size === 1 ? bytes[off]! : size === 2 ? page.getUint16(off, true) : page.getUint32(off, true);
          const seq = post(ChanKind.Pio, isOut, size, port, isOut ? v : 0, 0, 1);
          if (!isOut) {
            waitTail(seq + 1);
            const d = ch[entryIndex(seq) + Entry.DataLo]! >>> 0;
            if (size === 1) bytes[off] = d & 0xff;
            else if (size === 2) page.setUint16(off, d & 0xffff, true);
            else page.setUint32(off, d, true);
          }
        } else {
          // REP INS/OUTS: the whole string in one round trip (KVM's data area is at most a page).
          const len = count * size;
          if (isOut) strData.set(bytes.subarray(off, off + len));
          const seq = post(ChanKind.Pio, isOut, size, port, 0, 0, count);
          waitTail(seq + 1);
          if (!isOut) bytes.set(strData.subarray(0, len), off);
        }
        continue;
      }
      if (reason === c.KVM_EXIT_MMIO) {
        const addr = page.getUint32(L.mmioPhysAddr, true) + page.getUint32(L.mmioPhysAddr + 4, true) * 0x100000000;
        const len = page.getUint32(L.mmioLen, true);
        const isWrite = bytes[L.mmioIsWrite] !== 0;
        const d = L.mmioData;
        if (isWrite) {
          const lo = len >= 4 ? page.getUint32(d, true) : len === 2 ? page.getUint16(d, true) : bytes[d]!;
          post(ChanKind.Mmio, true, len, addr, lo, len === 8 ? page.getUint32(d + 4, true) : 0, 1);
        } else {
          const seq = post(ChanKind.Mmio, false, len, addr, 0, 0, 1);
          waitTail(seq + 1);
          const e = entryIndex(seq);
          page.setUint32(d, ch[e + Entry.DataLo]! >>> 0, true);
          page.setUint32(d + 4, ch[e + Entry.DataHi]! >>> 0, true);
        }
        continue;
      }
      const stop = stopForExit(reason, page);
      if (stop) return stop;
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
