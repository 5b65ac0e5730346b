// Application processors ↔ the device thread. Each AP (vCPU >= 1) runs KVM_RUN in a pool worker
// and hands the exits userspace must answer (port I/O, MMIO) to the main thread, where the
// device models live (one thread, like QEMU's BQL), through a ring in one SharedArrayBuffer:
// writes are posted (the AP runs on), reads wait for their answer and so queue behind every
// earlier write, a REP INS/OUTS string goes as one request. The main thread serves the rings
// between vCPU 0's KVM_RUN calls (an AP's post kicks vCPU 0 out) or from the event loop.
export const enum ChanKind {
  Pio = 1,
  Mmio = 2,
}
export const enum Control {
  Run = 0,
  Stop = 1,
  Pause = 2,
}

/** Int32 slots of a vCPU's channel header. */
export const enum Slot {
  Control = 0, // Control, written by the main thread
  Running = 1, // 1 while the vCPU's run loop runs (kicks are safe)
  Exits = 2, // total KVM_RUN returns (statistics)
  Parked = 3, // 1 while the vCPU waits out a Pause (outside KVM_RUN, its requests all answered)
  Head = 4, // requests posted by the AP (a running count)
  Tail = 5, // requests the main thread has answered
  Header = 8,
}

/** Ring entries (Int32 fields). */
export const enum Entry {
  Kind = 0,
  IsWrite = 1,
  Size = 2,
  AddrLo = 3,
  AddrHi = 4,
  DataLo = 5,
  DataHi = 6,
  Count = 7,
  Ints = 8,
}
export const RING_ENTRIES = 64;
/** A REP string's data (at most one page: KVM's kvm_run data area) sits after the ring. */
export const STRING_DATA_OFFSET = (Slot.Header + RING_ENTRIES * Entry.Ints) * 4;
export const STRING_DATA_BYTES = 4096;

export function createChannel(): Int32Array {
  return new Int32Array(new SharedArrayBuffer(STRING_DATA_OFFSET + STRING_DATA_BYTES));
}

/** Index of ring entry `seq` (a Head/Tail count) in the channel. */
export function entryIndex(seq: number): number {
  return Slot.Header + (seq % RING_ENTRIES) * Entry.Ints;
}

/**
 * The device thread's doorbell, shared by every AP: an AP that posts sets KickPending (only the
 * 0 → 1 transition rings) and, when vCPU 0 is inside its run slice, kicks that thread out of
 * KVM_RUN; otherwise the main thread's Atomics.waitAsync on KickPending wakes its event loop.
 */
export const enum Wake {
  KickPending = 0,
  InKvmRun = 1,
  Count = 2,
}
export function createWake(): Int32Array {
  return new Int32Array(new SharedArrayBuffer(Wake.Count * 4));
}

/** Why a vCPU run loop ended. */
export type VcpuStop =
  | { reason: 'stopped' }
  | { reason: 'shutdown' } // triple fault
  | { reason: 'system-event'; type: number }
  | { reason: 'hlt' } // HLT with no in-kernel irqchip to wake it
  | { reason: 'internal-error'; suberror: number; data: string[] }
  | { reason: 'fail-entry'; hwReason: string }
  | { reason: 'unhandled-exit'; exitReason: number }
  | { reason: 'error'; message: string; code?: string };
