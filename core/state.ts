// The one small interface by which every piece of a machine (a device model, a vCPU, the irqchip)
// saves and restores its state for snapshot and migration: it writes its fields into a StateWriter
// and reads them back, in the same order, from a StateReader, under its own section id and
// version (machine/migration/ owns the stream that carries the sections). A reader that runs out,
// or meets a value the model cannot take, throws a StateError naming the section: a destination
// refuses a stream it does not understand rather than guess.
import { TsvmmError } from './errors.js';

export interface Migratable {
  /** The section id: unique in a machine, stable across versions ("serial", "pci/00:03.0"). */
  readonly stateId: string;
  /** The version this build writes; loadState is given the stream's (never newer). */
  readonly stateVersion: number;
  saveState(w: StateWriter): void;
  loadState(r: StateReader, version: number): void;
  /**
   * Live migration, for a part whose state can go while the guest runs (an assigned device's
   * PRE_COPY data): called once per RAM pass; its bytes go as a section `${stateId}${LIVE_SUFFIX}`
   * (nothing to send: undefined or empty). Its own section still follows after the stop.
   */
  saveLive?(): Promise<Uint8Array | undefined>;
  /** Takes one such section on the destination, in stream order, before the part's own section. */
  loadLive?(payload: Uint8Array, version: number): void | Promise<void>;
}

/** The suffix of a part's live sections (its id plus this: no part's own id ends so). */
export const LIVE_SUFFIX = '+live';

/** A stream, a section or a value refused: says which and why. */
export class StateError extends TsvmmError {
  constructor(
    readonly section: string,
    message: string,
    fix?: string,
  ) {
    super('ERR_MIGRATION', `migration stream, section '${section}': ${message}`, fix ? { fix } : {});
  }
}

/** Little-endian fields appended to a growing buffer. */
export class StateWriter {
  private buf = new Uint8Array(256);
  private view = new DataView(this.buf.buffer);
  private len = 0;

  get length(): number {
    return this.len;
  }

  private room(n: number): number {
    if (this.len + n > this.buf.length) {
      let size = this.buf.length * 2;
      while (size < this.len + n) size *= 2;
      const b = new Uint8Array(size);
      b.set(this.buf.subarray(0, this.len));
      this.buf = b;
      this.view = new DataView(b.buffer);
    }
    const at = this.len;
    this.len += n;
    return at;
  }

  // room() may replace the buffer: take the offset before touching this.buf or this.view.
  u8(v: number): this {
    const at = this.room(1);
    this.buf[at] = v & 0xff;
    return this;
  }
  bool(v: boolean): this {
    return this.u8(v ? 1 : 0);
  }
  u16(v: number): this {
    const at = this.room(2);
    this.view.setUint16(at, v & 0xffff, true);
    return this;
  }
  u32(v: number): this {
    const at = this.room(4);
    this.view.setUint32(at, v >>> 0, true);
    return this;
  }
  u64(v: bigint | number): this {
    const at = this.room(8);
    this.view.setBigUint64(at, BigInt.asUintN(64, BigInt(v)), true);
    return this;
  }
  /** Bytes of a length both sides know (a register block, a fixed-size struct). */
  fixed(b: Uint8Array): this {
    const at = this.room(b.length);
    this.buf.set(b, at);
    return this;
  }
  /** Bytes of any length, length first: a KVM struct whose size is the host's, a device's opaque data. */
  blob(b: Uint8Array): this {
    this.u32(b.length);
    return this.fixed(b);
  }
  str(s: string): this {
    return this.blob(new TextEncoder().encode(s));
  }
  /** The bytes written (a copy: the writer may grow on). */
  bytes(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

/** Reads what a StateWriter wrote; every read is bounds-checked against the section. */
export class StateReader {
  private pos = 0;
  private readonly view: DataView;

  constructor(
    private readonly buf: Uint8Array,
    readonly section: string,
  ) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  private take(n: number, what: string): number {
    if (this.pos + n > this.buf.length)
      throw new StateError(
        this.section,
        `truncated: ${what} needs ${n} bytes at offset ${this.pos}, ${this.remaining} left`,
      );
    const at = this.pos;
    this.pos += n;
    return at;
  }

  u8(what = 'a byte'): number {
    return this.buf[this.take(1, what)]!;
  }
  bool(what = 'a flag'): boolean {
    const v = this.u8(what);
    if (v > 1) throw this.bad(`${what} is ${v}, not 0 or 1`);
    return v === 1;
  }
  u16(what = 'a u16'): number {
    return this.view.getUint16(this.take(2, what), true);
  }
  u32(what = 'a u32'): number {
    return this.view.getUint32(this.take(4, what), true);
  }
  u64(what = 'a u64'): bigint {
    return this.view.getBigUint64(this.take(8, what), true);
  }
  /** A u64 that must fit a JS number exactly (sizes, offsets). */
  safeU64(what = 'a size'): number {
    const v = this.u64(what);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw this.bad(`${what} ${v} is out of range`);
    return Number(v);
  }
  fixed(n: number, what = 'a block'): Uint8Array {
    const at = this.take(n, what);
    return this.buf.subarray(at, at + n);
  }
  /** A blob of at most `max` bytes (a bad length never allocates). */
  blob(what = 'a blob', max = this.remaining): Uint8Array {
    const n = this.u32(`${what}'s length`);
    if (n > max) throw this.bad(`${what} is ${n} bytes, at most ${max} allowed`);
    return this.fixed(n, what);
  }
  str(what = 'a string', max = 4096): string {
    return new TextDecoder('utf-8', { fatal: false }).decode(this.blob(what, max));
  }
  /** A blob that must be exactly `n` bytes (a KVM struct of this host's size). */
  blobOf(n: number, what: string): Uint8Array {
    const b = this.blob(what);
    if (b.length !== n) throw this.bad(`${what} is ${b.length} bytes; this host's is ${n}`);
    return b;
  }

  /** Everything was read: a section with bytes left over is not one this build wrote. */
  end(): void {
    if (this.remaining) throw this.bad(`${this.remaining} unexpected bytes at the end`);
  }

  bad(why: string): StateError {
    return new StateError(this.section, why);
  }
}

/** A device model's state as bytes (its save → load → save must give the same bytes). */
export function saveToBytes(m: Migratable): Uint8Array {
  const w = new StateWriter();
  m.saveState(w);
  return w.bytes();
}

/** Loads bytes saveToBytes made; the whole section must be read. */
export function loadFromBytes(m: Migratable, bytes: Uint8Array, version = m.stateVersion): void {
  const r = new StateReader(bytes, m.stateId);
  m.loadState(r, version);
  r.end();
}
