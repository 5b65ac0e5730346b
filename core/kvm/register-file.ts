// Registers answered on the vCPU's own thread. A device model publishes the value of each register
// whose read has no side effect (a 16550's scratch, line status, line control...) whenever that
// value changes; an application processor's worker answers a port read of a published register
// from here, with no trip through the ring to the device thread (QEMU answers such a read on the
// vCPU's own thread under its BQL). Only the device thread writes; the vCPU threads only read.
//
// Consistency: the device thread brackets every publication with a sequence count (a seqlock:
// odd while values change), so a reader sees the registers of one device state, never half of a
// change; a reader that meets a change in flight asks the device thread instead. A model publishes
// before it raises the interrupt that tells the guest to look, and before the access that changed
// the value is answered, so a vCPU never sees an older value after it was told of the new one or
// after its own access that made it. The worker answers locally only when none of its own posted
// writes still unanswered can change a published value (its earlier writes come first): a model
// marks the registers a write to which changes nothing published in the current state (a 16550's
// THR with its THR interrupt off: the Linux console's LSR poll, THR write, LSR poll...); any other
// write in flight and the read waits for its answer, as before.
import { TsvmmError } from '../errors.js';
import { native } from '../native.js';
import { ChanKind, Entry, Slot, entryIndex } from './exit-channel.js';

/** Registers the file holds at most (a window's byte offsets each take one). */
export const MAX_REGISTERS = 255;
const PORTS = 0x10000;

/** Int32 fields of a register's slot (native/local-reads.cc reads this layout too). */
const enum Field {
  /** The access size a local answer is for (1, 2, 4; 0 while a read must reach the device model), | NEUTRAL_WRITE. */
  Size = 0,
  Value = 1,
  Ints = 2,
}

/** In a slot's Size field: a write of this register's size now changes no published value. */
const NEUTRAL_WRITE = 0x100;

/** What a vCPU thread needs of the file (structured-cloned to the worker: the memory is shared). */
export interface RegisterFileView {
  /** [0]: the sequence count; slot s's fields from 2 + s * Field.Ints. */
  words: Int32Array;
  /** Port → slot (0: none). Written only before the vCPUs start. */
  portSlot: Uint8Array;
}

/** A device model's registers at consecutive ports (hw/published-registers.ts RegisterWindow). */
export interface RegisterWindowImpl {
  readonly size: number;
  publish(values: ArrayLike<number>, neutralWrites?: number): void;
}

/**
 * The answer for a read of `size` bytes at `port` if the register there is published: its value,
 * or -1 (the device thread must answer). Runs on a vCPU thread. `ring` entries from..to-1 are the
 * vCPU's posted requests not yet answered (exit-channel.ts): each must be a write that changes no
 * published value, or the read must wait for them.
 */
export function readPublished(
  f: RegisterFileView,
  port: number,
  size: number,
  ring?: Int32Array,
  from = 0,
  to = 0,
): number {
  const s = f.portSlot[port]!;
  if (s === 0) return -1;
  const w = f.words,
    i = 2 + s * Field.Ints;
  const seq = Atomics.load(w, 0);
  if (seq & 1) return -1; // a change in flight
  for (let q = from; q !== to; q++) {
    const e = entryIndex(q);
    if (ring![e + Entry.Kind] !== ChanKind.Pio || ring![e + Entry.IsWrite] !== 1 || ring![e + Entry.Count] !== 1)
      return -1;
    const ws = f.portSlot[ring![e + Entry.AddrLo]!]!;
    // A window's registers are bytes: a neutral write is one byte wide.
    if (ws === 0 || ring![e + Entry.Size] !== 1 || !(Atomics.load(w, 2 + ws * Field.Ints + Field.Size) & NEUTRAL_WRITE))
      return -1;
  }
  const sz = Atomics.load(w, i + Field.Size);
  const v = Atomics.load(w, i + Field.Value);
  if (Atomics.load(w, 0) !== seq || (sz & 0xff) !== size) return -1;
  return v >>> 0;
}

/**
 * A native handle that answers this vCPU's reads of published registers inside its run call
 * (native/local-reads.cc: readPublished's rules, but only with nothing posted unanswered — a read
 * behind posted writes returns to JS, which checks them), counting them in `counts` and the
 * channel's exit count. `runPage`: the vCPU's kvm_run mapping.
 */
export function nativeLocalReads(
  f: RegisterFileView,
  counts: Int32Array,
  runPage: ArrayBuffer,
  channel: Int32Array,
): unknown {
  return native().localReadsCreate(runPage, f.words, f.portSlot, counts, channel, Slot.Exits, Slot.Head, Slot.Tail);
}

export class RegisterFile {
  readonly view: RegisterFileView = {
    words: new Int32Array(new SharedArrayBuffer((2 + (MAX_REGISTERS + 1) * Field.Ints) * 4)),
    portSlot: new Uint8Array(new SharedArrayBuffer(PORTS)),
  };
  /** Port of each slot (index 0 unused), for folding local-read counts into per-port statistics. */
  readonly ports: number[] = [-1];
  /** Reads the vCPU threads answered here, as of the last fold. */
  answered = 0;
  /** Local answers per slot, one array per vCPU (index: vCPU id), counted on that vCPU's thread. */
  private readonly counts = new Map<number, { live: Int32Array; folded: Int32Array }>();

  /**
   * Reserves `size` byte registers at ports base..base+size-1 for a model to publish into. Before the
   * vCPUs start only (the port map is not synchronised); the ports must not already be taken.
   */
  window(base: number, size: number): RegisterWindowImpl {
    if (!Number.isInteger(base) || !Number.isInteger(size) || size < 1 || base < 0 || base + size > PORTS)
      throw new TsvmmError(
        'ERR_VM_SETUP',
        `register window at port ${base} of ${size} bytes is outside the port space`,
        {
          fix: 'publish registers only for a device mapped inside ports 0..0xffff',
        },
      );
    if (this.ports.length + size > MAX_REGISTERS + 1)
      throw new TsvmmError(
        'ERR_VM_SETUP',
        `register window at port 0x${base.toString(16)}: more than ${MAX_REGISTERS} registers`,
        {
          fix: 'publish fewer registers (only the hot, side-effect-free ones)',
        },
      );
    const first = this.ports.length;
    for (let p = base; p < base + size; p++) {
      if (this.view.portSlot[p] !== 0)
        throw new TsvmmError('ERR_VM_SETUP', `register window: port 0x${p.toString(16)} is already published`, {
          fix: 'give each device model its own ports',
        });
    }
    for (let k = 0; k < size; k++) {
      this.view.portSlot[base + k] = first + k;
      this.ports.push(base + k);
    }
    const w = this.view.words;
    const cur = new Array<number>(size).fill(-1);
    const curSize = new Array<number>(size).fill(0);
    return {
      size,
      /**
       * values[k]: what a byte read at base + k returns now (0..255), or -1: it must reach the model.
       * Bit k of neutralWrites: a byte write at base + k now changes none of these values.
       */
      publish: (values: ArrayLike<number>, neutralWrites = 0): void => {
        let seq = -1;
        for (let k = 0; k < size; k++) {
          const v = values[k]!;
          const sz = (v < 0 ? 0 : 1) | ((neutralWrites >> k) & 1 ? NEUTRAL_WRITE : 0);
          if (v === cur[k] && sz === curSize[k]) continue;
          if (seq < 0) Atomics.store(w, 0, (seq = Atomics.load(w, 0) + 1)); // odd: readers ask the device thread
          cur[k] = v;
          curSize[k] = sz;
          const i = 2 + (first + k) * Field.Ints;
          Atomics.store(w, i + Field.Size, sz);
          Atomics.store(w, i + Field.Value, v < 0 ? 0 : v);
        }
        if (seq >= 0) Atomics.store(w, 0, seq + 1);
      },
    };
  }

  /** The array vCPU `id` counts its local answers in (per slot). */
  countsFor(id: number): Int32Array {
    let c = this.counts.get(id);
    if (!c) {
      c = {
        live: new Int32Array(new SharedArrayBuffer((MAX_REGISTERS + 1) * 4)),
        folded: new Int32Array(MAX_REGISTERS + 1),
      };
      this.counts.set(id, c);
    }
    return c.live;
  }

  /** Adds the local answers since the last fold to `add(port, n)`. */
  fold(add: (port: number, n: number) => void): void {
    for (const { live, folded } of this.counts.values()) {
      for (let s = 1; s < this.ports.length; s++) {
        const now = Atomics.load(live, s);
        const n = (now - folded[s]!) | 0;
        if (n === 0) continue;
        folded[s] = now;
        this.answered += n >>> 0;
        add(this.ports[s]!, n >>> 0);
      }
    }
  }
}
