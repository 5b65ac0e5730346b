// How a device model reaches guest RAM for its own DMA (virtqueues, request buffers): byte copies
// through the memory API's flat view, RAM sections only. A range that is not wholly guest RAM
// (unassigned, MMIO, a BAR, beyond the address space, wrapping) is refused as a whole, so a
// device never half-reads a descriptor; what the device does then is its own rule (virtio: the
// device needs a reset).
import type { AddressSpace, Section } from '../../core/memory/index.js';

export interface GuestMemory {
  /** Copies guest RAM [addr, addr + dst.length) into dst; false (dst unspecified) if any byte is not RAM. */
  read(addr: number, dst: Uint8Array): boolean;
  /** Copies src into guest RAM at addr; false (nothing written) if any byte is not writable RAM. */
  write(addr: number, src: Uint8Array): boolean;
  /** Whether [addr, addr + len) is wholly guest RAM (writable too when `write`). */
  check(addr: number, len: number, write: boolean): boolean;
}

const MAX_ADDR = 2 ** 53;

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

  check(addr: number, len: number, write: boolean): boolean {
    return this.walk(addr, len, write);
  }

  read(addr: number, dst: Uint8Array): boolean {
    return this.walk(addr, dst.length, false, (v, at, n, done) => dst.set(v.subarray(at, at + n), done));
  }

  write(addr: number, src: Uint8Array): boolean {
    // Checked first: a write that fails leaves guest RAM as it was.
    if (!this.walk(addr, src.length, true)) return false;
    return this.walk(addr, src.length, true, (v, at, n, done) => v.set(src.subarray(done, done + n), at));
  }
}

/** GuestMemory over one flat buffer at guest-physical `base` (unit tests, fuzzing). */
export class FlatMemory implements GuestMemory {
  constructor(
    readonly bytes: Uint8Array,
    readonly base = 0,
  ) {}
  check(addr: number, len: number, _write?: boolean): boolean {
    return validRange(addr, len) && addr >= this.base && addr + len <= this.base + this.bytes.length;
  }
  read(addr: number, dst: Uint8Array): boolean {
    if (!this.check(addr, dst.length)) return false;
    dst.set(this.bytes.subarray(addr - this.base, addr - this.base + dst.length));
    return true;
  }
  write(addr: number, src: Uint8Array): boolean {
    if (!this.check(addr, src.length)) return false;
    this.bytes.set(src, addr - this.base);
    return true;
  }
}
