// Rendering a region tree into a flat view, and diffing two flat views (QEMU's
// render_memory_region + flatview_simplify, address_space_update_topology_pass).
import type { MemoryRegion } from './region.js';
import type { Section } from './types.js';

/** Addresses are clipped to [0, 2^53): everything stays an exact JS number. */
const CLIP_END = Number.MAX_SAFE_INTEGER + 1;

/** A leaf that wants to be visible over [start, end); the lowest `seq` wins a point. */
interface Candidate {
  start: number;
  end: number;
  region: MemoryRegion;
  /** Address of the region's offset 0, so offsetInRegion = addr - base. */
  base: number;
  readonly: boolean;
  seq: number;
}

/**
 * QEMU renders depth-first — subregions in list order (priority descending), then the region
 * itself — each leaf only filling the gaps left by what was rendered before it. So a point
 * belongs to the first leaf, in that order, that covers it. We collect the leaves with their
 * clipped ranges in that order (O(n)), then sweep with a heap (O(n log n)) instead of QEMU's
 * gap-filling insertions.
 */
function collect(
  mr: MemoryRegion,
  base: number,
  clipStart: number,
  clipEnd: number,
  ro: boolean,
  out: Candidate[],
  aliasStack: Set<MemoryRegion>,
): void {
  if (!mr.enabled) return;
  base += mr.addr;
  ro ||= mr.readonly;
  const start = Math.max(base, clipStart);
  const end = Math.min(base + mr.size, clipEnd);
  if (start >= end) return;
  const target = mr.aliasTarget;
  if (target !== undefined) {
    // A cycle through aliases renders nothing at the point where it closes (QEMU would recurse forever).
    if (aliasStack.has(mr)) return;
    aliasStack.add(mr);
    collect(target, base - target.addr - mr.aliasOffset, start, end, ro, out, aliasStack);
    aliasStack.delete(mr);
    return;
  }
  for (const sub of mr.subregions) collect(sub, base, start, end, ro, out, aliasStack);
  if (mr.terminates) out.push({ start, end, region: mr, base, readonly: ro, seq: out.length });
}

class SeqHeap {
  private readonly a: Candidate[] = [];
  get size(): number {
    return this.a.length;
  }
  top(): Candidate {
    return this.a[0]!;
  }
  push(c: Candidate): void {
    const a = this.a;
    let i = a.length;
    a.push(c);
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (a[p]!.seq <= c.seq) break;
      a[i] = a[p]!;
      i = p;
    }
    a[i] = c;
  }
  pop(): void {
    const a = this.a;
    const last = a.pop()!;
    if (a.length === 0) return;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1,
        r = l + 1;
      let m = i;
      let mSeq = last.seq;
      if (l < a.length && a[l]!.seq < mSeq) {
        m = l;
        mSeq = a[l]!.seq;
      }
      if (r < a.length && a[r]!.seq < mSeq) m = r;
      if (m === i) break;
      a[i] = a[m]!;
      i = m;
    }
    a[i] = last;
  }
}

/** The flat view of `root`: sorted, non-overlapping, adjacent contiguous pieces merged. */
export function renderFlatView(root: MemoryRegion): Section[] {
  const cands: Candidate[] = [];
  collect(root, 0, 0, CLIP_END, false, cands, new Set());
  if (cands.length === 0) return [];
  const points = new Float64Array(cands.length * 2);
  cands.forEach((c, i) => {
    points[2 * i] = c.start;
    points[2 * i + 1] = c.end;
  });
  points.sort();
  const byStart = [...cands].sort((x, y) => x.start - y.start);
  const heap = new SeqHeap();
  const out: { start: number; end: number; region: MemoryRegion; base: number; readonly: boolean }[] = [];
  let ci = 0;
  for (let k = 0; k < points.length - 1; k++) {
    const p = points[k]!;
    const q = points[k + 1]!;
    if (p === q) continue;
    while (ci < byStart.length && byStart[ci]!.start <= p) heap.push(byStart[ci++]!);
    while (heap.size > 0 && heap.top().end <= p) heap.pop();
    if (heap.size === 0) continue;
    const c = heap.top();
    const last = out[out.length - 1];
    // Merge with the previous piece when it is the same region at a contiguous offset.
    if (
      last !== undefined &&
      last.end === p &&
      last.region === c.region &&
      last.base === c.base &&
      last.readonly === c.readonly
    )
      last.end = q;
    else out.push({ start: p, end: q, region: c.region, base: c.base, readonly: c.readonly });
  }
  return out.map((f) =>
    Object.freeze({
      addr: f.start,
      size: f.end - f.start,
      region: f.region,
      offsetInRegion: f.start - f.base,
      readonly: f.readonly,
    }),
  );
}

export function sameSection(a: Section, b: Section): boolean {
  return (
    a.addr === b.addr &&
    a.size === b.size &&
    a.region === b.region &&
    a.offsetInRegion === b.offsetInRegion &&
    a.readonly === b.readonly
  );
}

export interface ViewDiff {
  /** Sections of the old view that are gone (or changed), in address order. */
  dels: Section[];
  /** The new view in address order, each flagged added or unchanged (nop). */
  pass: { s: Section; nop: boolean }[];
  changed: boolean;
}

/**
 * QEMU's symmetric difference of two flat views. Unchanged sections of `next` are replaced
 * (in place) by the identical objects of `old`, so a section keeps its identity.
 */
export function diffViews(old: readonly Section[], next: Section[]): ViewDiff {
  const dels: Section[] = [];
  const pass: { s: Section; nop: boolean }[] = [];
  let io = 0,
    inw = 0,
    adds = 0;
  while (io < old.length || inw < next.length) {
    const o = old[io],
      n = next[inw];
    if (o !== undefined && (n === undefined || o.addr < n.addr || (o.addr === n.addr && !sameSection(o, n)))) {
      dels.push(o);
      io++;
    } else if (o !== undefined && n !== undefined && sameSection(o, n)) {
      next[inw] = o;
      pass.push({ s: o, nop: true });
      io++;
      inw++;
    } else {
      pass.push({ s: n!, nop: false });
      adds++;
      inw++;
    }
  }
  return { dels, pass, changed: dels.length > 0 || adds > 0 };
}
