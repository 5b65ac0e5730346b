// Interval bookkeeping of one DMA domain: the guest's IOVA mappings, sorted and non-overlapping,
// with the virtio-iommu rules for what a map or unmap may touch. Pure data: no host calls.
//
// - add(m): refused when [iova, iova+size) overlaps a mapping already there (the guest must unmap
//   first; virtio-iommu's MAP never replaces).
// - take(iova, size): removes and returns every mapping wholly inside the range; refused, removing
//   nothing, when a mapping straddles an end of the range (an UNMAP must not split a mapping).
//   A range that holds no mapping is fine: nothing is removed.

import { OrderedIntervals } from './ordered-intervals.js';

export interface IovaInterval {
  readonly iova: number;
  readonly size: number;
}

export type TakeResult<T> = { ok: true; taken: T[] } | { ok: false; straddling: T };

export class IovaMap<T extends IovaInterval> {
  /** In iova order; never overlapping. */
  private readonly items = new OrderedIntervals<T>((m, addr) => m.iova + m.size <= addr);

  get size(): number {
    return this.items.size;
  }

  /** Every mapping, in address order (a copy). */
  values(): readonly T[] {
    return this.items.values();
  }

  /** Mappings that share at least one byte with [iova, iova+size), in address order. */
  overlapping(iova: number, size: number): T[] {
    const out: T[] = [];
    const items = this.items;
    for (const p = items.lowerBound(iova); ; items.next(p)) {
      const m = items.at(p);
      if (m === undefined || m.iova >= iova + size) break;
      out.push(m);
    }
    return out;
  }

  /** The first mapping (in address order) that shares a byte with [iova, iova+size), if any. */
  firstOverlapping(iova: number, size: number): T | undefined {
    const m = this.items.at(this.items.lowerBound(iova));
    return m !== undefined && m.iova < iova + size ? m : undefined;
  }

  /** The mapping containing `addr`, if any. */
  at(addr: number): T | undefined {
    const m = this.items.at(this.items.lowerBound(addr));
    return m !== undefined && m.iova <= addr ? m : undefined;
  }

  /** Inserts m, or returns the mapping it would overlap (and inserts nothing). */
  add(m: T): T | undefined {
    const p = this.items.lowerBound(m.iova);
    const next = this.items.at(p);
    if (next !== undefined && next.iova < m.iova + m.size) return next;
    this.items.insertAt(p, m);
    return undefined;
  }

  /** Removes the mappings wholly inside [iova, iova+size), unless one straddles its ends. */
  take(iova: number, size: number): TakeResult<T> {
    // One search (every guest UNMAP comes here): the walk's start is where the removal starts.
    const items = this.items;
    const start = items.lowerBound(iova);
    const end = iova + size;
    const taken: T[] = [];
    for (const p = { c: start.c, i: start.i }; ; items.next(p)) {
      const m = items.at(p);
      if (m === undefined || m.iova >= end) break;
      if (m.iova < iova || m.iova + m.size > end) return { ok: false, straddling: m };
      taken.push(m);
    }
    if (taken.length) items.removeAt(start, taken.length);
    return { ok: true, taken };
  }

  /** Removes one mapping (by identity); false when it is not here. */
  delete(m: T): boolean {
    const p = this.items.lowerBound(m.iova);
    if (this.items.at(p) !== m) return false;
    this.items.removeAt(p, 1);
    return true;
  }

  clear(): T[] {
    return this.items.clear();
  }
}
