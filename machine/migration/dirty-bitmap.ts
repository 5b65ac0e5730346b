// Which pages of guest RAM a pass sends: a bit per page (Uint32 words, page p is bit p % 32 of
// word p / 32, the byte order of KVM's own little-endian u64 bitmaps), filled from KVM's dirty
// log slot by slot and walked a block at a time. Pure: numbers in, numbers out (the KVM calls
// are passed in), shared by the save's main thread and its RAM worker.

/** Our page: the one KVM's log and the stream count in. */
const PAGE = 4096;

export class PageBitmap {
  readonly words: Uint32Array;
  constructor(
    readonly pages: number,
    words?: Uint32Array,
  ) {
    this.words = words ?? new Uint32Array(Math.ceil(pages / 32));
    if (this.words.length * 32 < pages)
      throw new RangeError(`${this.words.length} words hold fewer than ${pages} pages`);
  }

  setAll(): this {
    this.words.fill(0xffffffff);
    if (this.pages % 32) this.words[this.words.length - 1] = (1 << this.pages % 32) - 1;
    return this;
  }

  get(p: number): boolean {
    return (this.words[p >>> 5]! & (1 << (p & 31))) !== 0;
  }

  set(p: number): void {
    this.words[p >>> 5]! |= 1 << (p & 31);
  }

  /** How many pages are set. */
  count(): number {
    let n = 0;
    for (const w of this.words) n += popcount(w);
    return n;
  }

  /** ORs `other` (the same size) in. */
  or(other: PageBitmap): this {
    for (let i = 0; i < this.words.length; i++) this.words[i]! |= other.words[i]!;
    return this;
  }

  /**
   * ORs in a slot's bitmap as KVM gives it (`src`: bit i for the slot's page i, `pages` of them)
   * at page `first` of guest RAM; any alignment. Returns how many bits `src` had set.
   */
  orAt(first: number, src: Uint32Array, pages: number): number {
    if (first < 0 || first + pages > this.pages)
      throw new RangeError(`pages ${first}+${pages} lie outside guest RAM's ${this.pages}`);
    const dst = this.words,
      shift = first & 31,
      base = first >>> 5;
    const n = Math.ceil(pages / 32);
    let set = 0;
    for (let i = 0; i < n; i++) {
      let x = src[i]!;
      if (!x) continue; // most words of a log are empty
      if (i === n - 1 && pages % 32) x &= (1 << pages % 32) - 1;
      set += popcount(x);
      if (!shift) dst[base + i]! |= x;
      else {
        dst[base + i]! |= x << shift;
        const hi = x >>> (32 - shift);
        if (hi) dst[base + i + 1]! |= hi;
      }
    }
    return set;
  }

  /** The bits of pages [first, first + n) (first a multiple of 32) as a new bitmap, or undefined when none is set. */
  slice(first: number, n: number): Uint32Array | undefined {
    if (first & 31) throw new RangeError('a slice starts on a word');
    const w0 = first >>> 5,
      words = Math.ceil(Math.min(n, this.pages - first) / 32);
    let any = 0;
    for (let i = 0; i < words; i++) any |= this.words[w0 + i]!;
    return any ? this.words.slice(w0, w0 + words) : undefined;
  }

  /** Sets pages [first, first + n). */
  setRange(first: number, n: number): void {
    if (first < 0 || first + n > this.pages)
      throw new RangeError(`pages ${first}+${n} lie outside guest RAM's ${this.pages}`);
    for (let p = first, end = first + n; p < end; p++) this.words[p >>> 5]! |= 1 << (p & 31);
  }

  /**
   * ORs in a device's DMA dirty report (VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT: bit i, LSB first
   * in byte order, is the device page at the range's start + i * devPageSize) for a range that
   * starts at page `first` of guest RAM and spans `pages` 4 KiB pages. A device page larger than
   * ours marks each 4 KiB page in it. Returns how many of our pages it set.
   */
  orDeviceReport(first: number, pages: number, report: Uint8Array, devPageSize: number): number {
    if (devPageSize < PAGE || devPageSize % PAGE)
      throw new RangeError(`a device page of ${devPageSize} bytes is not a multiple of ${PAGE}`);
    const per = devPageSize / PAGE;
    const devPages = Math.ceil(pages / per);
    if (report.length * 8 < devPages)
      throw new RangeError(`a report of ${report.length} bytes holds fewer than ${devPages} pages`);
    if (per === 1 && report.length % 4 === 0) {
      const words = new Uint32Array(report.length / 4);
      new Uint8Array(words.buffer).set(report); // little-endian: byte order is the words' bit order
      return this.orAt(first, words, pages);
    }
    let set = 0;
    for (let i = 0; i < devPages; i++) {
      if (!(report[i >>> 3]! & (1 << (i & 7)))) continue;
      const lo = i * per,
        hi = Math.min(lo + per, pages);
      this.setRange(first + lo, hi - lo);
      set += hi - lo;
    }
    return set;
  }

  /** Indexes of the blocks of `perBlock` pages (a multiple of 32) that have a page set, in order. */
  *blocks(perBlock: number): Generator<number> {
    const wpb = perBlock / 32;
    for (let b = 0, blocks = Math.ceil(this.pages / perBlock); b < blocks; b++) {
      for (let i = b * wpb, end = Math.min(i + wpb, this.words.length); i < end; i++)
        if (this.words[i]) {
          yield b;
          break;
        }
    }
  }
}

export function popcount(v: number): number {
  v -= (v >>> 1) & 0x55555555;
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

/** A guest-RAM KVM memslot: its number, and the pages of guest RAM it maps (from `ramPage`). */
export interface DirtySlot {
  slot: number;
  ramPage: number;
  pages: number;
}

/** KVM_CLEAR_DIRTY_LOG's arguments: slot, first page (a multiple of 64), pages, a bitmap from that page. */
export type ClearDirtyLog = (slot: number, firstPage: number, numPages: number, bits: Uint32Array) => void;

/**
 * With KVM's manual dirty-log protection: clears (and write-protects again) the pages of guest
 * RAM [first, first + bits' pages) set in `bits` (first a multiple of 32), slot by slot, just
 * before they are read, so a write after that is logged for the next pass. KVM wants a first
 * page that is a multiple of 64 and a length that is too (or reaches the slot's end): the range
 * is widened with zero bits, which clear nothing.
 */
export function clearDirtyRange(
  slots: readonly DirtySlot[],
  first: number,
  bits: Uint32Array,
  pages: number,
  clear: ClearDirtyLog,
): void {
  const end = first + pages;
  for (const s of slots) {
    const lo = Math.max(first, s.ramPage),
      hi = Math.min(end, s.ramPage + s.pages);
    if (lo >= hi) continue;
    const from = Math.floor((lo - s.ramPage) / 64) * 64; // slot-relative
    const to = Math.min(Math.ceil((hi - s.ramPage) / 64) * 64, s.pages);
    const win = new Uint32Array(Math.ceil((to - from) / 64) * 2);
    let any = 0;
    for (let p = lo; p < hi; p++) {
      const q = p - first;
      if (bits[q >>> 5]! & (1 << (q & 31))) {
        const r = p - s.ramPage - from;
        win[r >>> 5]! |= 1 << (r & 31);
        any = 1;
      }
    }
    if (any) clear(s.slot, from, to - from, win);
  }
}
