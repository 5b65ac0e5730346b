// How a device model reaches guest RAM for its own DMA (virtqueues, request buffers): byte copies
// through the memory API's flat view, RAM sections only. A range that is not wholly guest RAM
// (unassigned, MMIO, a BAR, beyond the address space, wrapping) is refused as a whole, so a
// device never half-reads a descriptor; what the device does then is its own rule (virtio: the
// device needs a reset).
import type { AddressSpace, Section } from '../../core/memory/index.js';

export interface GuestMemory {
  /**
   * Copies guest RAM [addr, addr + n) into dst[at, at + n) (default: all of dst); false (those
   * bytes of dst unspecified) if any byte is not RAM. `at` and `n` spare a caller a subarray.
   */
  read(addr: number, dst: Uint8Array, at?: number, n?: number): boolean;
  /** Copies src[at, at + n) (default: all of src) into guest RAM at addr; false (nothing written) if any byte is not writable RAM. */
  write(addr: number, src: Uint8Array, at?: number, n?: number): boolean;
  /** Whether [addr, addr + len) is wholly guest RAM (writable too when `write`). */
  check(addr: number, len: number, write: boolean): boolean;
  /**
   * [addr, addr + len) as a view of its backing when it is one flat piece of guest RAM (writable
   * too when `write`), for a device to keep at hand (its rings: QEMU's MemoryRegionCache); valid
   * while `generation` is unchanged. undefined when it is not (the caller uses read and write).
   */
  span(addr: number, len: number, write: boolean): RamSpan | undefined;
  /** span() into the caller's `out` (no allocation: a request's indirect table); false, `out` unchanged, when it is not one piece. */
  spanInto(addr: number, len: number, write: boolean, out: RamSpan): boolean;
  /** Changes whenever a span taken before may no longer be right (the memory map changed). */
  readonly generation: number;
}

/** Guest RAM at hand: `view` over its backing, and the offset in it of the span's first byte. */
export interface RamSpan {
  view: DataView;
  offset: number;
}

/** One DataView per backing array, made on first use. */
const views = new WeakMap<Uint8Array, DataView>();
function viewOf(b: Uint8Array): DataView {
  let v = views.get(b);
  if (!v) views.set(b, (v = new DataView(b.buffer, b.byteOffset, b.byteLength)));
  return v;
}

const MAX_ADDR = 2 ** 53;

/** span() for a memory with spanInto(): a span of its own (a ring the caller keeps), or undefined. */
function newSpan(m: GuestMemory, addr: number, len: number, write: boolean): RamSpan | undefined {
  const s: RamSpan = { view: EMPTY_VIEW, offset: 0 };
  return m.spanInto(addr, len, write, s) ? s : undefined;
}
const EMPTY_VIEW = new DataView(new ArrayBuffer(0));

/** Whether [at, at + n) lies in `a` (a caller's range within its own buffer). */
function inside(a: Uint8Array, at: number, n: number): boolean {
  return validRange(at, n) && at + n <= a.length;
}

/**
 * src[from, from + n) → dst[to, to + n): a loop for a status byte or word (no subarray to
 * allocate), set() beyond — a request's 28–36 bytes too: before V8 optimizes the caller, each
 * byte of a loop is two calls into its inline caches (10× the cost of set() at 36 bytes).
 */
function copyBytes(src: Uint8Array, from: number, dst: Uint8Array, to: number, n: number): void {
  if (n <= 8) for (let i = 0; i < n; i++) dst[to + i] = src[from + i]!;
  else dst.set(src.subarray(from, from + n), to);
}

function validRange(addr: number, len: number): boolean {
  return Number.isSafeInteger(addr) && Number.isSafeInteger(len) && addr >= 0 && len >= 0 && addr + len <= MAX_ADDR;
}

/** The piece of a RAM section's backing that holds [off, off + len) (off in region), at most to a chunk's end. */
function ramPiece(s: Section, off: number, len: number): { view: Uint8Array; at: number; n: number } | undefined {
  const b = s.region.backing;
  if (!b) return undefined;
  if (b.bytes) return { view: b.bytes, at: off, n: len };
  if (b.chunks) {
    const i = Math.floor(off / b.chunks.size);
    const at = off - i * b.chunks.size;
    const view = b.chunks.get(i);
    return { view, at, n: Math.min(len, view.length - at) };
  }
  return undefined;
}

/** GuestMemory over an address space (the machine's system memory). */
export class AddressSpaceMemory implements GuestMemory {
  constructor(private readonly space: AddressSpace) {}

  /** Calls fn for each RAM piece of [addr, addr+len); false as soon as a byte is not (writable) RAM. */
  private walk(
    addr: number,
    len: number,
    write: boolean,
    fn?: (view: Uint8Array, at: number, n: number, done: number) => void,
  ): boolean {
    if (!validRange(addr, len)) return false;
    let done = 0;
    while (done < len) {
      const s = this.space.lookup(addr + done);
      if (!s || s.region.kind !== 'ram' || (write && s.readonly)) return false;
      const off = s.offsetInRegion + (addr + done - s.addr);
      const p = ramPiece(s, off, Math.min(len - done, s.addr + s.size - (addr + done)));
      if (!p || p.n <= 0 || p.at + p.n > p.view.length) return false;
      fn?.(p.view, p.at, p.n, done);
      done += p.n;
    }
    return true;
  }

  /**
   * The offset in `bytes` (the backing) of [addr, addr+len) when it lies wholly in one RAM section
   * with a flat backing (rings, descriptors and requests almost always do): the path that allocates
   * nothing. -1 when it does not (the caller walks the pieces).
   */
  private flat(addr: number, len: number, write: boolean): number {
    if (!validRange(addr, len)) return -1;
    const gen = this.space.generation;
    if (gen === this.lastGen && addr >= this.lastAddr && addr + len <= this.lastEnd && (!write || this.lastWritable))
      return this.lastAt + (addr - this.lastAddr);
    const s = this.space.lookup(addr);
    if (!s || s.region.kind !== 'ram' || (write && s.readonly) || addr + len > s.addr + s.size) return -1;
    const b = s.region.backing?.bytes;
    if (!b) return -1;
    const at = s.offsetInRegion + (addr - s.addr);
    if (at + len > b.length) return -1;
    if (b !== this.bytes) {
      this.bytes = b;
      this.view = viewOf(b);
    }
    this.lastGen = gen;
    this.lastAddr = s.addr;
    this.lastEnd = Math.min(s.addr + s.size, s.addr + (b.length - s.offsetInRegion));
    this.lastAt = s.offsetInRegion;
    this.lastWritable = !s.readonly;
    return at;
  }
  // The RAM section flat() found last (its backing `bytes`), valid while the space's generation is
  // `lastGen` (as a span is): a request's buffers, its descriptors and the next request's mostly lie
  // in the same section, so most accesses skip the flat-view lookup.
  private bytes: Uint8Array | undefined;
  private view: DataView | undefined;
  private lastGen = -1;
  private lastAddr = 0;
  private lastEnd = 0;
  private lastAt = 0;
  private lastWritable = false;

  check(addr: number, len: number, write: boolean): boolean {
    return this.flat(addr, len, write) >= 0 || this.walk(addr, len, write);
  }

  get generation(): number {
    return this.space.generation;
  }

  span(addr: number, len: number, write: boolean): RamSpan | undefined {
    return newSpan(this, addr, len, write);
  }

  spanInto(addr: number, len: number, write: boolean, out: RamSpan): boolean {
    const at = this.flat(addr, len, write);
    if (at < 0) return false;
    out.view = this.view!;
    out.offset = at;
    return true;
  }

  read(addr: number, dst: Uint8Array, to = 0, n = dst.length - to): boolean {
    if (!inside(dst, to, n)) return false;
    const at = this.flat(addr, n, false);
    if (at >= 0) {
      copyBytes(this.bytes!, at, dst, to, n);
      return true;
    }
    return this.walk(addr, n, false, (v, at, len, done) => copyBytes(v, at, dst, to + done, len));
  }

  write(addr: number, src: Uint8Array, from = 0, n = src.length - from): boolean {
    if (!inside(src, from, n)) return false;
    const at = this.flat(addr, n, true);
    if (at >= 0) {
      copyBytes(src, from, this.bytes!, at, n);
      return true;
    }
    // Checked first: a write that fails leaves guest RAM as it was.
    if (!this.walk(addr, n, true)) return false;
    return this.walk(addr, n, true, (v, at, len, done) => copyBytes(src, from + done, v, at, len));
  }
}

/** GuestMemory over one flat buffer at guest-physical `base` (unit tests, fuzzing). */
export class FlatMemory implements GuestMemory {
  constructor(
    readonly bytes: Uint8Array,
    readonly base = 0,
  ) {}
  readonly generation = 0;
  check(addr: number, len: number, _write?: boolean): boolean {
    return validRange(addr, len) && addr >= this.base && addr + len <= this.base + this.bytes.length;
  }
  span(addr: number, len: number, write: boolean): RamSpan | undefined {
    return newSpan(this, addr, len, write);
  }
  spanInto(addr: number, len: number, _write: boolean, out: RamSpan): boolean {
    if (!this.check(addr, len)) return false;
    out.view = viewOf(this.bytes);
    out.offset = addr - this.base;
    return true;
  }
  read(addr: number, dst: Uint8Array, to = 0, n = dst.length - to): boolean {
    if (!inside(dst, to, n) || !this.check(addr, n)) return false;
    copyBytes(this.bytes, addr - this.base, dst, to, n);
    return true;
  }
  write(addr: number, src: Uint8Array, from = 0, n = src.length - from): boolean {
    if (!inside(src, from, n) || !this.check(addr, n)) return false;
    copyBytes(src, from, this.bytes, addr - this.base, n);
    return true;
  }
}
