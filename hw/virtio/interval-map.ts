// Non-overlapping inclusive ranges [start, end] kept sorted by start, with what each maps to: a
// guest IOMMU domain's mappings (kept as core/memory's OrderedIntervals: no insert or removal
// moves every later mapping).
import { OrderedIntervals } from '../../core/memory/ordered-intervals.js';

export interface Interval<T> {
  start: number;
  /** Inclusive. */
  end: number;
  value: T;
}

export class IntervalMap<T> {
  private readonly items = new OrderedIntervals<Interval<T>>((m, addr) => m.end < addr);

  get size(): number {
    return this.items.size;
  }

  /** The intervals that share a byte with [start, end], in order. */
  intersecting(start: number, end: number): Interval<T>[] {
    const out: Interval<T>[] = [];
    const items = this.items;
    for (const p = items.lowerBound(start); ; items.next(p)) {
      const m = items.at(p);
      if (m === undefined || m.start > end) break;
      out.push(m);
    }
    return out;
  }

  overlaps(start: number, end: number): boolean {
    const m = this.items.at(this.items.lowerBound(start));
    return m !== undefined && m.start <= end;
  }

  /** Adds an interval; throws if it overlaps one (callers check first). */
  insert(start: number, end: number, value: T): void {
    if (!(start <= end)) throw new RangeError(`interval [${start}, ${end}] is empty`);
    const p = this.items.lowerBound(start);
    const next = this.items.at(p);
    if (next !== undefined && next.start <= end) throw new RangeError(`interval [${start}, ${end}] overlaps`);
    this.items.insertAt(p, { start, end, value });
  }

  /** Removes the interval that starts at `start`; whether there was one. */
  remove(start: number): boolean {
    return this.removeRun(start, 1);
  }

  /** Removes `n` intervals in order from the one that starts at `start` (an `intersecting` run); false, removing none, when none starts there. */
  removeRun(start: number, n: number): boolean {
    const p = this.items.lowerBound(start);
    if (this.items.at(p)?.start !== start) return false;
    this.items.removeAt(p, n);
    return true;
  }

  /** Every interval, in order (a copy). */
  values(): readonly Interval<T>[] {
    return this.items.values();
  }

  clear(): void {
    this.items.clear();
  }
}
