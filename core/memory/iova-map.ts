// Interval bookkeeping of one DMA domain: the guest's IOVA mappings, sorted and non-overlapping,
// with the virtio-iommu rules for what a map or unmap may touch. Pure data: no host calls.
//
// - add(m): refused when [iova, iova+size) overlaps a mapping already there (the guest must unmap
//   first; virtio-iommu's MAP never replaces).
// - take(iova, size): removes and returns every mapping wholly inside the range; refused, removing
//   nothing, when a mapping straddles an end of the range (an UNMAP must not split a mapping).
//   A range that holds no mapping is fine: nothing is removed.

export interface IovaInterval {
  readonly iova: number;
  readonly size: number;
}

export type TakeResult<T> = { ok: true; taken: T[] } | { ok: false; straddling: T };

export class IovaMap<T extends IovaInterval> {
  /** Sorted by iova; never overlapping. */
  private readonly items: T[] = [];

  get size(): number {
    return this.items.length;
  }

  values(): readonly T[] {
    return this.items;
  }

  /** Index of the first mapping that ends after `addr`. */
  private firstEndingAfter(addr: number): number {
    let lo = 0,
      hi = this.items.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const m = this.items[mid]!;
      if (m.iova + m.size <= addr) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Mappings that share at least one byte with [iova, iova+size), in address order. */
  overlapping(iova: number, size: number): T[] {
    const out: T[] = [];
    for (let i = this.firstEndingAfter(iova); i < this.items.length; i++) {
      const m = this.items[i]!;
      if (m.iova >= iova + size) break;
      out.push(m);
    }
    return out;
  }

  /** The first mapping (in address order) that shares a byte with [iova, iova+size), if any. */
  firstOverlapping(iova: number, size: number): T | undefined {
    const m = this.items[this.firstEndingAfter(iova)];
    return m !== undefined && m.iova < iova + size ? m : undefined;
  }

  /** The mapping containing `addr`, if any. */
  at(addr: number): T | undefined {
    const m = this.items[this.firstEndingAfter(addr)];
    return m !== undefined && m.iova <= addr ? m : undefined;
  }

  /** Inserts m, or returns the mapping it would overlap (and inserts nothing). */
  add(m: T): T | undefined {
    const i = this.firstEndingAfter(m.iova);
    const next = this.items[i];
    if (next !== undefined && next.iova < m.iova + m.size) return next;
    this.items.splice(i, 0, m);
    return undefined;
  }

  /** Removes the mappings wholly inside [iova, iova+size), unless one straddles its ends. */
  take(iova: number, size: number): TakeResult<T> {
    const hit = this.overlapping(iova, size);
    const bad = hit.find((m) => m.iova < iova || m.iova + m.size > iova + size);
    if (bad) return { ok: false, straddling: bad };
    if (hit.length) this.items.splice(this.items.indexOf(hit[0]!), hit.length);
    return { ok: true, taken: hit };
  }

  /** Removes one mapping (by identity); false when it is not here. */
  delete(m: T): boolean {
    const i = this.items.indexOf(m);
    if (i < 0) return false;
    this.items.splice(i, 1);
    return true;
  }

  clear(): T[] {
    return this.items.splice(0);
  }
}
