// vCPU thread: runs KVM_RUN in a loop. Exits the kernel could not handle (port I/O, MMIO) go
// to the main thread through the exit channel; everything else ends the loop with a reason.
import { native, PROT_READ, PROT_WRITE, MAP_SHARED } from '../native.js';
import { ChanKind, ChanState, Control, Slot, type VcpuStop } from './exit-channel.js';

export interface VcpuTask {
  vcpuFd: number;
  mmapSize: number;
  channel: Int32Array;
  kickSignal: number;
  /** The thread handle for kicks is published here (BigInt64 slot 0). */
  thread: BigInt64Array;
}

const EINTR = 4, EAGAIN = 11;

export default function runVcpu(task: VcpuTask): VcpuStop {
  const n = native();
  const c = n.constants;
  const L = n.kvmRunLayout;
  const ch = task.channel;
  task.thread[0] = n.threadPrepareKick(task.kickSignal);
  const run = n.mmap(0, task.mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, task.vcpuFd, 0);
  const page = new DataView(run.buffer);
  const bytes = new Uint8Array(run.buffer);
  Atomics.store(ch, Slot.Running, 1);

  // Hands one access to the main thread and waits for its answer (a read's value lands in DataLo/Hi).
  const forward = (kind: ChanKind, isWrite: boolean, size: number, addr: number, lo: number, hi: number): void => {
    ch[Slot.Kind] = kind;
    ch[Slot.IsWrite] = isWrite ? 1 : 0;
    ch[Slot.Size] = size;
    ch[Slot.AddrLo] = addr % 0x100000000;
    ch[Slot.AddrHi] = Math.floor(addr / 0x100000000);
    ch[Slot.DataLo] = lo;
    ch[Slot.DataHi] = hi;
    Atomics.store(ch, Slot.State, ChanState.Request);
    Atomics.notify(ch, Slot.State);
    while (Atomics.load(ch, Slot.State) === ChanState.Request) Atomics.wait(ch, Slot.State, ChanState.Request);
    Atomics.store(ch, Slot.State, ChanState.Idle);
  };

  try {
    for (;;) {
      let ctl = Atomics.load(ch, Slot.Control);
      if (ctl === Control.Pause) {
        // Parked outside KVM_RUN until resumed or stopped (QMP stop / cont).
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
      switch (reason) {
        case c.KVM_EXIT_IO: {
          const isOut = bytes[L.ioDirection] === c.KVM_EXIT_IO_OUT;
          const size = bytes[L.ioSize]!;
          const port = page.getUint16(L.ioPort, true);
          const count = page.getUint32(L.ioCount, true);
          let off = Number(page.getBigUint64(L.ioDataOffset, true));
          for (let i = 0; i < count; i++, off += size) {
            // Read before forwarding so a write's data is passed; an IN's answer lands in place.
            const v = size === 1 ? bytes[off]! : size === 2 ? page.getUint16(off, true) : page.getUint32(off, true);
            forward(ChanKind.Pio, isOut, size, port, isOut ? v : 0, 0);
            if (!isOut) {
              const d = ch[Slot.DataLo]! >>> 0;
              if (size === 1) bytes[off] = d & 0xff;
              else if (size === 2) page.setUint16(off, d & 0xffff, true);
              else page.setUint32(off, d, true);
            }
          }
          break;
        }
        case c.KVM_EXIT_MMIO: {
          const addr = Number(page.getBigUint64(L.mmioPhysAddr, true));
          const len = page.getUint32(L.mmioLen, true);
          const isWrite = bytes[L.mmioIsWrite] !== 0;
          const d = L.mmioData;
          const lo = len >= 4 ? page.getUint32(d, true) : len === 2 ? page.getUint16(d, true) : bytes[d]!;
          const hi = len === 8 ? page.getUint32(d + 4, true) : 0;
          forward(ChanKind.Mmio, isWrite, len, addr, isWrite ? lo : 0, isWrite ? hi : 0);
          if (!isWrite) {
            page.setUint32(d, ch[Slot.DataLo]! >>> 0, true);
            page.setUint32(d + 4, ch[Slot.DataHi]! >>> 0, true);
          }
          break;
        }
        case c.KVM_EXIT_HLT:
          return { reason: 'hlt' };
        case c.KVM_EXIT_SHUTDOWN:
          return { reason: 'shutdown' };
        case c.KVM_EXIT_SYSTEM_EVENT:
          return { reason: 'system-event', type: page.getUint32(L.systemEventType, true) };
        case c.KVM_EXIT_INTR:
          break;
        case c.KVM_EXIT_INTERNAL_ERROR: {
          const nd = Math.min(page.getUint32(L.internalNdata, true), 16);
          const data: string[] = [];
          for (let i = 0; i < nd; i++) data.push('0x' + page.getBigUint64(L.internalData + 8 * i, true).toString(16));
          return { reason: 'internal-error', suberror: page.getUint32(L.internalSuberror, true), data };
        }
        case c.KVM_EXIT_FAIL_ENTRY:
          return { reason: 'fail-entry', hwReason: '0x' + page.getBigUint64(L.failEntryReason, true).toString(16) };
        default:
          return { reason: 'unhandled-exit', exitReason: reason };
      }
    }
  } catch (e) {
    const err = e as Error & { code?: string };
    return { reason: 'error', message: err.message, ...(err.code ? { code: err.code } : {}) };
  } finally {
    Atomics.store(ch, Slot.Running, 0);
    n.munmap(run.buffer);
  }
}
