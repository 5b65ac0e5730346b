// Non-overlapping intervals kept in address order, for the maps of a DMA domain (iova-map.ts) and
// of the virtio-iommu's domains (hw/virtio/interval-map.ts). Held in chunks of at most 2 × CHUNK
// items so an insert or a removal moves at most a chunk's items and a pointer per chunk, not every
// later interval: a guest in lazy mode keeps thousands of mappings live (Linux defers its unmaps up
// to a second), and one sorted array made each MAP and UNMAP cost time in proportion to them
// (4 µs more per MAP+UNMAP pair per 1,000 live mappings, natively). QEMU keeps them in a GTree.
// Pure data: no host calls.

/** Where an interval sits: chunk c, item i. */
export interface Cursor {
  c: number;
  i: number;
}

const CHUNK = 64;

export class OrderedIntervals<T> {
  /** Never empty: a map with no interval keeps one empty chunk (no array made and dropped per MAP and UNMAP in strict mode). */
  private chunks: T[][] = [[]];
  private count = 0;

  /** `endsBefore(t, addr)`: t lies wholly below addr (monotone in the order the intervals are kept). */
  constructor(private readonly endsBefore: (t: T, addr: number) => boolean) {}

  get size(): number {
    return this.count;
  }

  /** The first interval that does not end before addr (a cursor past the end when none). */
  lowerBound(addr: number): Cursor {
    const chunks = this.chunks;
    if (this.count === 0) return { c: 0, i: 0 };
    let lo = 0,
      hi = chunks.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const ch = chunks[mid]!;
      if (this.endsBefore(ch[ch.length - 1]!, addr)) lo = mid + 1;
      else hi = mid;
    }
    if (lo === chunks.length) return { c: lo, i: 0 };
    const ch = chunks[lo]!;
    let a = 0,
      b = ch.length;
    while (a < b) {
      const mid = (a + b) >>> 1;
      if (this.endsBefore(ch[mid]!, addr)) a = mid + 1;
      else b = mid;
    }
    return { c: lo, i: a };
  }

  /** The interval at the cursor, or undefined past the end. */
  at(p: Cursor): T | undefined {
    return this.chunks[p.c]?.[p.i];
  }

  /** Moves the cursor to the next interval. */
  next(p: Cursor): void {
    if (++p.i >= this.chunks[p.c]!.length) {
      p.c++;
      p.i = 0;
    }
  }

  /** Inserts t at the cursor (the caller found the place with lowerBound and checked for overlap). */
  insertAt(p: Cursor, t: T): void {
    const chunks = this.chunks;
    this.count++;
    if (p.c === chunks.length) {
      const last = chunks[chunks.length - 1]!;
      if (last.length < 2 * CHUNK) last.push(t);
      else chunks.push([t]);
      return;
    }
    const ch = chunks[p.c]!;
    if (p.i === ch.length) ch.push(t);
    else ch.splice(p.i, 0, t);
    if (ch.length > 2 * CHUNK) chunks.splice(p.c + 1, 0, ch.splice(CHUNK));
  }

  /** Removes n intervals from the cursor on (they may span chunks). */
  removeAt(p: Cursor, n: number): void {
    const chunks = this.chunks;
    let c = p.c,
      i = p.i;
    while (n > 0 && c < chunks.length) {
      const ch = chunks[c]!;
      const k = Math.min(n, ch.length - i);
      if (k === ch.length) ch.length = 0;
      else ch.splice(i, k);
      n -= k;
      this.count -= k;
      if (ch.length === 0 && chunks.length > 1) chunks.splice(c, 1);
      else c++;
      i = 0;
    }
  }

  /** Every interval, in order (a copy). */
  values(): T[] {
    return this.chunks.flat();
  }

  /** Removes every interval; returns them in order. */
  clear(): T[] {
    const all = this.values();
    this.chunks = [[]];
    this.count = 0;
    return all;
  }
}
