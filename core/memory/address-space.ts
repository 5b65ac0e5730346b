// AddressSpace: a rendered view of a region tree, its listeners, and access dispatch.
import { MemoryRegion, throwCollected, type RenderTarget } from './region.js';
import { diffViews, renderFlatView, type ViewDiff } from './flatview.js';
import type { MemoryListener, Section } from './types.js';

/** All-ones of each access size (index = size). */
const ALL_ONES: readonly (number | bigint)[] = [0, 0xff, 0xffff, 0, 0xffffffff, 0, 0, 0, 0xffffffffffffffffn];

function badSize(size: number): never {
  throw new RangeError(`memory access size must be 1, 2, 4 or 8, got ${String(size)}`);
}

function toBig(v: number | bigint): bigint {
  return typeof v === 'bigint' ? v : BigInt(v);
}

export class AddressSpace implements RenderTarget {
  /**
   * Accesses that hit nothing (or RAM without a `bytes` view): reads gave all-ones, writes were
   * dropped. `invalid`: accesses an io region's `valid` constraints refused. Counted, never logged.
   */
  readonly stats = { unassigned: 0, invalid: 0 };
  private view: readonly Section[];
  private listeners: MemoryListener[] = [];
  /** Index of the last section lookup() hit: MMIO exits tend to repeat. */
  private hint = 0;
  private destroyed = false;
  private gen = 0;

  constructor(
    readonly name: string,
    readonly root: MemoryRegion,
  ) {
    if (!(root instanceof MemoryRegion)) throw new TypeError(`address space ${name}: root must be a MemoryRegion`);
    MemoryRegion._attach(root, this);
    this.view = Object.freeze(renderFlatView(root));
  }

  /** Changes whenever the flat view does (or the space is destroyed): what a cached view of it compares. */
  get generation(): number {
    return this.gen;
  }

  /** The current flat view: sorted by addr, non-overlapping. Stale inside a transaction. */
  flatView(): readonly Section[] {
    return this.view;
  }

  /** Registers `l` and replays regionAdd for every current section (begin/commit around it). */
  addListener(l: MemoryListener): void {
    if (this.listeners.includes(l))
      throw new Error(`memory listener ${l.name ?? '(unnamed)'} is already on address space ${this.name}`);
    const p = l.priority ?? 0;
    let i = this.listeners.length;
    while (i > 0 && (this.listeners[i - 1]!.priority ?? 0) > p) i--;
    this.listeners = [...this.listeners.slice(0, i), l, ...this.listeners.slice(i)];
    this.replay(l, (s) => l.regionAdd?.(s));
  }

  /** Unregisters `l`, replaying regionDel for every current section (begin/commit around it). */
  removeListener(l: MemoryListener): void {
    if (!this.listeners.includes(l))
      throw new Error(`memory listener ${l.name ?? '(unnamed)'} is not on address space ${this.name}`);
    this.listeners = this.listeners.filter((x) => x !== l);
    this.replay(l, (s) => l.regionDel?.(s));
  }

  /** Runs `each` for every current section between the listener's begin and commit; every call
   *  runs even if one before it threw, and the errors are thrown together at the end. */
  private replay(l: MemoryListener, each: (s: Section) => void): void {
    const errors: unknown[] = [];
    const call = (f: () => void) => {
      try {
        f();
      } catch (e) {
        errors.push(e);
      }
    };
    call(() => l.begin?.());
    for (const s of this.view) call(() => each(s));
    call(() => l.commit?.());
    throwCollected(errors);
  }

  /** Detaches from the region tree: no more re-renders, listeners dropped without callbacks. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.gen++;
    MemoryRegion._detach(this.root, this);
    this.listeners = [];
  }

  /** @internal */
  _rerender(errors: unknown[]): void {
    if (this.destroyed) return;
    const next = renderFlatView(this.root);
    const d = diffViews(this.view, next);
    if (!d.changed) return;
    this.view = Object.freeze(next);
    this.hint = 0;
    this.gen++;
    this.notify(d, errors);
  }

  /**
   * QEMU's order: begin for all (ascending priority); per removed section (address order)
   * regionDel on every listener in descending priority; per section of the new view (address
   * order) regionAdd or regionNop in ascending priority; commit for all (ascending).
   */
  private notify(d: ViewDiff, errors: unknown[]): void {
    const ls = this.listeners;
    if (ls.length === 0) return;
    const call = (f: () => void) => {
      try {
        f();
      } catch (e) {
        errors.push(e);
      }
    };
    for (const l of ls) call(() => l.begin?.());
    for (const s of d.dels)
      for (let i = ls.length - 1; i >= 0; i--) {
        const l = ls[i]!;
        call(() => l.regionDel?.(s));
      }
    for (const { s, nop } of d.pass) {
      for (const l of ls) call(nop ? () => l.regionNop?.(s) : () => l.regionAdd?.(s));
    }
    for (const l of ls) call(() => l.commit?.());
  }

  /** Index of the section containing addr, or ~(index of the first section after addr). */
  private find(addr: number): number {
    const v = this.view;
    let lo = 0,
      hi = v.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const s = v[mid]!;
      // Negated comparisons so that NaN never matches.
      if (!(addr >= s.addr)) hi = mid;
      else if (!(addr - s.addr < s.size)) lo = mid + 1;
      else return mid;
    }
    return ~lo;
  }

  /** The section containing `addr`, by binary search over the flat view. */
  lookup(addr: number): Section | undefined {
    const v = this.view;
    const h = v[this.hint];
    if (h !== undefined && addr >= h.addr && addr - h.addr < h.size) return h;
    const i = this.find(addr);
    if (i < 0) return undefined;
    this.hint = i;
    return v[i];
  }

  /**
   * A guest read. io: ops.read(offsetInRegion + (addr - section.addr), size), value passed
   * through. ram/ramDevice: little-endian from backing.bytes (bigint for size 8). Unassigned:
   * all-ones of the size (0xff .. 0xffffffffffffffffn). An access straddling a section boundary
   * (or bigger than an io region's valid.maxAccessSize) is split into naturally aligned pieces,
   * each dispatched on its own, and reassembled little-endian — as QEMU's flatview_read_continue.
   */
  read(addr: number, size: number): number | bigint {
    if (size !== 1 && size !== 2 && size !== 4 && size !== 8) badSize(size);
    const s = this.lookup(addr);
    if (s === undefined) {
      const next = this.view[~this.find(addr)];
      if (next !== undefined && addr + size > next.addr) return this.splitRead(addr, size);
      this.stats.unassigned++;
      return ALL_ONES[size]!;
    }
    if (addr + size > s.addr + s.size || size > s.region._maxAccess) return this.splitRead(addr, size);
    return this.readIn(s, addr, size);
  }

  /** A guest write; unassigned and read-only RAM writes are dropped. Splitting as for read(). */
  write(addr: number, size: number, value: number | bigint): void {
    if (size !== 1 && size !== 2 && size !== 4 && size !== 8) badSize(size);
    const s = this.lookup(addr);
    if (s === undefined) {
      const next = this.view[~this.find(addr)];
      if (next !== undefined && addr + size > next.addr) return this.splitWrite(addr, size, value);
      this.stats.unassigned++;
      return;
    }
    if (addr + size > s.addr + s.size || size > s.region._maxAccess) return this.splitWrite(addr, size, value);
    this.writeIn(s, addr, size, value);
  }

  /** One access wholly inside `s` (within the region's max access size). */
  private readIn(s: Section, addr: number, size: number): number | bigint {
    const r = s.region;
    const off = s.offsetInRegion + (addr - s.addr);
    if (r.kind === 'io') {
      if (size < r._minAccess || (r._alignCheck && off % size !== 0)) {
        this.stats.invalid++;
        return ALL_ONES[size]!;
      }
      return r.ops!.read(off, size);
    }
    if (r.ops) return r.ops.read(off, size); // ramDevice served by callbacks
    const v = r._view(off, size);
    if (v === null) {
      // straddles two chunks of a large RAM region
      let acc = 0n;
      for (let i = 0; i < size; i++) acc |= BigInt(this.readIn(s, addr + i, 1) as number) << BigInt(i * 8);
      return size === 8 ? acc : Number(acc);
    }
    if (v === undefined) {
      this.stats.unassigned++;
      return ALL_ONES[size]!;
    }
    const { dv, at } = v;
    switch (size) {
      case 1:
        return dv.getUint8(at);
      case 2:
        return dv.getUint16(at, true);
      case 4:
        return dv.getUint32(at, true);
      default:
        return dv.getBigUint64(at, true);
    }
  }

  private writeIn(s: Section, addr: number, size: number, value: number | bigint): void {
    const r = s.region;
    const off = s.offsetInRegion + (addr - s.addr);
    if (r.kind === 'io') {
      if (size < r._minAccess || (r._alignCheck && off % size !== 0)) {
        this.stats.invalid++;
        return;
      }
      r.ops!.write(off, size, value);
      return;
    }
    if (s.readonly) return;
    if (r.ops) {
      r.ops.write(off, size, value);
      return;
    }
    const v = r._view(off, size);
    if (v === null) {
      // straddles two chunks of a large RAM region
      const all = toBig(value);
      for (let i = 0; i < size; i++) this.writeIn(s, addr + i, 1, Number((all >> BigInt(i * 8)) & 0xffn));
      return;
    }
    if (v === undefined) {
      this.stats.unassigned++;
      return;
    }
    const { dv, at } = v;
    switch (size) {
      case 1:
        dv.setUint8(at, typeof value === 'bigint' ? Number(value & 0xffn) : value);
        break;
      case 2:
        dv.setUint16(at, typeof value === 'bigint' ? Number(value & 0xffffn) : value, true);
        break;
      case 4:
        dv.setUint32(at, typeof value === 'bigint' ? Number(value & 0xffffffffn) : value, true);
        break;
      default:
        dv.setBigUint64(at, toBig(value), true);
    }
  }

  /**
   * The piece of an access at `addr` with `left` bytes to go: the largest power of two that is
   * aligned at addr, fits in what is left, does not cross the end of the section (or gap), and
   * is within the region's max access size.
   */
  private piece(addr: number, left: number): { s: Section | undefined; len: number } {
    const i = this.find(addr);
    let limit: number;
    let s: Section | undefined;
    if (i >= 0) {
      s = this.view[i]!;
      limit = Math.min(s.addr + s.size - addr, s.region._maxAccess);
    } else {
      const next = this.view[~i];
      limit = next === undefined ? left : next.addr - addr;
    }
    let len = 8;
    while (len > left || len > limit || addr % len !== 0) len >>= 1;
    return { s, len };
  }

  private splitRead(addr: number, size: number): number | bigint {
    let acc = 0n;
    for (let done = 0; done < size; ) {
      const { s, len } = this.piece(addr + done, size - done);
      let v: number | bigint;
      if (s === undefined) {
        this.stats.unassigned++;
        v = ALL_ONES[len]!;
      } else v = this.readIn(s, addr + done, len);
      acc |= BigInt.asUintN(len * 8, toBig(v)) << BigInt(done * 8);
      done += len;
    }
    return size === 8 ? acc : Number(acc);
  }

  private splitWrite(addr: number, size: number, value: number | bigint): void {
    const all = BigInt.asUintN(size * 8, toBig(value));
    for (let done = 0; done < size; ) {
      const { s, len } = this.piece(addr + done, size - done);
      if (s === undefined) this.stats.unassigned++;
      else {
        const v = BigInt.asUintN(len * 8, all >> BigInt(done * 8));
        this.writeIn(s, addr + done, len, len === 8 ? v : Number(v));
      }
      done += len;
    }
  }

  /** The flat view as text, one section a line (like QEMU's `info mtree -f`). */
  describe(): string {
    const hex = (n: number) => n.toString(16).padStart(16, '0');
    return this.view
      .map(
        (s) =>
          `${hex(s.addr)}-${hex(s.addr + s.size - 1)} (${s.region.kind}${s.readonly ? ', ro' : ''}): ${s.region.name} @0x${s.offsetInRegion.toString(16)}`,
      )
      .join('\n');
  }
}
