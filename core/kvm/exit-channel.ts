// The vCPU worker ↔ main thread protocol for exits that userspace must handle (port I/O and
// MMIO). One SharedArrayBuffer per vCPU; the worker blocks in Atomics.wait while the main
// thread, where the device models live (one thread, like QEMU's BQL), answers.
export const enum ChanState { Idle = 0, Request = 1, Response = 2 }
export const enum ChanKind { Pio = 1, Mmio = 2 }
export const enum Control { Run = 0, Stop = 1, Pause = 2 }

/** Int32 slots of the channel. */
export const enum Slot {
  State = 0,     // ChanState
  Kind = 1,      // ChanKind
  IsWrite = 2,
  Size = 3,      // 1, 2, 4 or 8
  AddrLo = 4,
  AddrHi = 5,
  DataLo = 6,
  DataHi = 7,
  Control = 8,   // Control, written by the main thread
  Running = 9,   // 1 while the worker is inside its run loop (kicks are safe)
  Exits = 10,    // total KVM_RUN returns (statistics)
  Parked = 11,   // 1 while the worker waits out a Pause (outside KVM_RUN, its exit answered)
  Count = 12,
}

export function createChannel(): Int32Array {
  return new Int32Array(new SharedArrayBuffer(Slot.Count * 4));
}

/** Why a vCPU run loop ended; returned by the worker task. */
export type VcpuStop =
  | { reason: 'stopped' }
  | { reason: 'shutdown' }            // triple fault
  | { reason: 'system-event'; type: number }
  | { reason: 'hlt' }                 // HLT with no in-kernel irqchip to wake it
  | { reason: 'internal-error'; suberror: number; data: string[] }
  | { reason: 'fail-entry'; hwReason: string }
  | { reason: 'unhandled-exit'; exitReason: number }
  | { reason: 'error'; message: string; code?: string };
