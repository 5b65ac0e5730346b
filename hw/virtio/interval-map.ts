// Non-overlapping inclusive ranges [start, end] kept sorted by start, with what each maps to: a
// guest IOMMU domain's mappings. Lookups are binary searches; inserts and removals splice.

export interface Interval<T> {
  start: number;
  /** Inclusive. */
  end: number;
  value: T;
}

export class IntervalMap<T> {
  private readonly items: Interval<T>[] = [];

  get size(): number {
    return this.items.length;
  }

  /** Index of the first interval whose end is ≥ addr. */
  private firstEndingAtOrAfter(addr: number): number {
    let lo = 0,
      hi = this.items.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.items[mid]!.end < addr) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The intervals that share a byte with [start, end], in order. */
  intersecting(start: number, end: number): Interval<T>[] {
    const out: Interval<T>[] = [];
    for (let i = this.firstEndingAtOrAfter(start); i < this.items.length && this.items[i]!.start <= end; i++)
      out.push(this.items[i]!);
    return out;
  }

  overlaps(start: number, end: number): boolean {
    const i = this.firstEndingAtOrAfter(start);
    return i < this.items.length && this.items[i]!.start <= end;
  }

  /** Adds an interval; throws if it overlaps one (callers check first). */
  insert(start: number, end: number, value: T): void {
    if (!(start <= end)) throw new RangeError(`interval [${start}, ${end}] is empty`);
    const i = this.firstEndingAtOrAfter(start);
    if (i < this.items.length && this.items[i]!.start <= end)
      throw new RangeError(`interval [${start}, ${end}] overlaps`);
    this.items.splice(i, 0, { start, end, value });
  }

  /** Removes the interval that starts at `start`; whether there was one. */
  remove(start: number): boolean {
    const i = this.firstEndingAtOrAfter(start);
    if (i >= this.items.length || this.items[i]!.start !== start) return false;
    this.items.splice(i, 1);
    return true;
  }

  values(): readonly Interval<T>[] {
    return this.items;
  }

  clear(): void {
    this.items.length = 0;
  }
}
