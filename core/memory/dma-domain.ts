// Guest DMA domains: the address spaces a vIOMMU gives devices. A domain's mappings are guest
// IOVA → guest-physical ranges; each is resolved against the guest's memory (an AddressSpace)
// into host pieces (IOVA → the host virtual address of the guest RAM behind it, one piece per RAM
// section crossed), and the domain's listeners (a VFIO container, an iommufd IOAS) map exactly
// those pieces into the host IOMMU.
//
// Why not a MemoryRegion tree of aliases: the flat view merges adjacent sections, so two guest
// mappings of neighbouring RAM would become one host mapping, and unmapping one of them would
// unmap (or, on type1, fail to bisect) the other. Here one guest mapping is one set of host
// mappings, mapped and unmapped as a unit.
//
// - map() refuses what the host cannot or must not map, with a reason: a range that is not all
//   guest RAM (MMIO, a hole, beyond the end of RAM), writes to read-only memory, overlaps with a
//   mapping already there, a listener out of room (its DMA-entry limit named), a kernel error
//   (every listener is rolled back: nothing is half-mapped).
// - The guest's memory can change under a domain (RAM removed, a BAR placed over RAM): a RAM
//   section the domain's pieces point into that leaves the view unmaps those mappings at once
//   (they stay in the domain, orphaned, so the guest's later UNMAP still finds them); at the end
//   of the change they are resolved again and mapped if the range is RAM again.
import { TsvmmError } from '../errors.js';
import type { AddressSpace } from './address-space.js';
import { IovaMap } from './iova-map.js';
import type { MemoryListener, Section } from './types.js';

/** The vIOMMU's granule: IOVAs, guest addresses and sizes are multiples of it. */
export const DMA_PAGE = 4096;

/** Refusal kinds, named after the virtio-iommu request statuses the device model returns. */
export type RefusalStatus = 'inval' | 'range' | 'noent' | 'nomem' | 'devErr' | 'unsupp';
export interface Refusal {
  ok: false;
  status: RefusalStatus;
  reason: string;
}
export type HostResult = { readonly ok: true } | Refusal;

export function refuse(status: RefusalStatus, reason: string): Refusal {
  return { ok: false, status, reason };
}

/** Done: one shared object (a guest's every MAP and UNMAP returns it). */
export const OK: { readonly ok: true } = Object.freeze({ ok: true });

export interface DmaPerm {
  read: boolean;
  write: boolean;
}

/** One host mapping: a piece of a guest mapping that lies in one RAM section. */
export interface HostPiece {
  readonly iova: number;
  readonly size: number;
  readonly vaddr: bigint;
  /** The guest RAM region's name (for messages). */
  readonly region: string;
  readonly section: Section;
}

export interface DomainMapping {
  readonly iova: number;
  readonly size: number;
  readonly gpa: number;
  readonly read: boolean;
  readonly write: boolean;
  /** Host pieces, or null while orphaned (the guest RAM it points to is gone). */
  pieces: HostPiece[] | null;
}

/** A host IOMMU address space that mirrors a domain (VFIO container, iommufd IOAS). */
export interface DomainListener {
  readonly name: string;
  /** Host mappings it can still take (Infinity when unlimited). */
  room(): number;
  /** Its limit, for a refusal ("vfio_iommu_type1 dma_entry_limit 65535"). */
  limitText(): string;
  /** Maps one piece; throws (a kernel error) and maps nothing on failure. */
  map(p: HostPiece, perm: DmaPerm): void;
  unmap(p: HostPiece): void;
  /**
   * Unmaps `count` pieces that exactly cover [iova, iova+size) in one call; throws (a kernel
   * error) having unmapped none of them, or some (the caller then unmaps piece by piece).
   */
  unmapRange?(iova: number, size: number, count: number): void;
}

const hex = (n: number) => `0x${n.toString(16)}`;
const nonNegativeSafe = (v: number) => Number.isSafeInteger(v) && v >= 0;
/** A safe integer's alignment to DMA_PAGE without a floating-point remainder (IOVAs pass 2^31: not small integers). */
const pageAligned = (v: number) => (v & (DMA_PAGE - 1)) === 0;

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export interface DomainStats {
  /** Guest maps and unmaps that took effect (a map is counted once however many listeners). */
  maps: number;
  unmaps: number;
  /** Requests refused. */
  refused: number;
  /** Mappings unmapped because their guest RAM left, and mapped again after. */
  orphaned: number;
  remapped: number;
}

/**
 * Unmaps from `l` the run of `count` pieces that starts at piece `pi` of taken[mi] and covers
 * IOVA [iova, end): in one call where `l` can, piece by piece otherwise or when that call fails
 * (each failure recorded against its mapping in `failed`).
 */
function unmapRun(
  l: DomainListener,
  taken: readonly DomainMapping[],
  mi: number,
  pi: number,
  count: number,
  iova: number,
  end: number,
  failed: Map<DomainMapping, unknown>,
): void {
  if (count > 1 && l.unmapRange) {
    try {
      l.unmapRange(iova, end - iova, count);
      return;
    } catch {
      /* piece by piece below: each failure is then the mapping's own */
    }
  }
  for (let n = 0; n < count; mi++, pi = 0) {
    const m = taken[mi]!;
    const ps = m.pieces ?? [];
    for (; pi < ps.length && n < count; pi++, n++) {
      try {
        l.unmap(ps[pi]!);
      } catch (e) {
        if (!failed.has(m)) failed.set(m, e);
      }
    }
  }
}

export class DmaDomain {
  readonly mappings = new IovaMap<DomainMapping>();
  readonly stats: DomainStats = { maps: 0, unmaps: 0, refused: 0, orphaned: 0, remapped: 0 };
  private readonly listeners: DomainListener[] = [];
  private destroyed = false;

  /** @internal created by DmaDomains.create */
  constructor(
    readonly id: number,
    private readonly owner: DmaDomains,
  ) {}

  /** Host pieces currently mapped (what each listener holds for this domain). */
  get pieceCount(): number {
    let n = 0;
    for (const m of this.mappings.values()) n += m.pieces?.length ?? 0;
    return n;
  }

  hasListener(l: DomainListener): boolean {
    return this.listeners.includes(l);
  }

  get listenerCount(): number {
    return this.listeners.length;
  }

  private refused(r: Refusal): Refusal {
    this.stats.refused++;
    return r;
  }

  /** Maps guest [iova, iova+size) → guest-physical gpa into every listener, or refuses (nothing changed). */
  map(iova: number, gpa: number, size: number, perm: DmaPerm): HostResult {
    // The path of every guest MAP, kept small (V8 compiles it while the guest waits): the checks
    // are one expression; which one failed, and the text that says so, are worked out out of line.
    if (
      this.destroyed ||
      !nonNegativeSafe(iova) ||
      !nonNegativeSafe(gpa) ||
      !(size > 0 && Number.isSafeInteger(size)) ||
      !pageAligned(iova) ||
      !pageAligned(gpa) ||
      !pageAligned(size) ||
      !Number.isSafeInteger(iova + size) ||
      !Number.isSafeInteger(gpa + size) ||
      !(perm.read || perm.write) ||
      this.mappings.firstOverlapping(iova, size)
    )
      return this.refuseBadMap(iova, gpa, size, perm);
    const pieces = this.owner.resolve(iova, gpa, size, perm);
    if (!Array.isArray(pieces)) return this.refuseMap(pieces.status, iova, gpa, size, pieces.reason);
    const r = this.mapPieces(pieces, perm, this.listeners);
    if (!r.ok) return this.refuseMap(r.status, iova, gpa, size, r.reason);
    this.mappings.add({ iova, size, gpa, read: perm.read, write: perm.write, pieces });
    this.stats.maps++;
    return OK;
  }

  /** map()'s refusal for arguments it does not take: the first check that failed, in words. */
  private refuseBadMap(iova: number, gpa: number, size: number, perm: DmaPerm): Refusal {
    if (this.destroyed) return this.refused(refuse('noent', `domain ${this.id} was destroyed`));
    const bad = !nonNegativeSafe(iova)
      ? 'iova'
      : !nonNegativeSafe(gpa)
        ? 'guest address'
        : !nonNegativeSafe(size)
          ? 'size'
          : '';
    if (bad) return this.refuseMap('range', iova, gpa, size, `the ${bad} is not a non-negative integer below 2^53`);
    if (size === 0 || !pageAligned(iova) || !pageAligned(gpa) || !pageAligned(size))
      return this.refuseMap('inval', iova, gpa, size, `not a whole number of 4 KiB pages (the vIOMMU's granule)`);
    if (!Number.isSafeInteger(iova + size) || !Number.isSafeInteger(gpa + size))
      return this.refuseMap('range', iova, gpa, size, `the range ends beyond 2^53`);
    if (!perm.read && !perm.write)
      return this.refuseMap('inval', iova, gpa, size, `neither read nor write access asked for`);
    const clash = this.mappings.firstOverlapping(iova, size)!;
    return this.refuseMap(
      'inval',
      iova,
      gpa,
      size,
      `overlaps the mapping at IOVA ${hex(clash.iova)}+${hex(clash.size)} (unmap it first)`,
    );
  }

  private refuseMap(status: RefusalStatus, iova: number, gpa: number, size: number, why: string): Refusal {
    return this.refused(
      refuse(status, `map of IOVA ${hex(iova)}+${hex(size)} → ${hex(gpa)} in domain ${this.id}: ${why}`),
    );
  }

  /** Maps `pieces` into `into`, all or nothing across listeners. */
  private mapPieces(pieces: HostPiece[], perm: DmaPerm, into: readonly DomainListener[]): HostResult {
    for (let li = 0; li < into.length; li++) {
      const l = into[li]!;
      if (l.room() < pieces.length)
        return refuse(
          'nomem',
          `${l.name} has room for ${l.room()} more DMA mappings, this needs ${pieces.length} (${l.limitText()})`,
        );
    }
    for (let li = 0; li < into.length; li++)
      for (let pi = 0; pi < pieces.length; pi++) {
        try {
          into[li]!.map(pieces[pi]!, perm);
        } catch (e) {
          // Undo what was mapped before this piece, newest first.
          for (let lj = li; lj >= 0; lj--)
            for (let pj = (lj === li ? pi : pieces.length) - 1; pj >= 0; pj--) {
              try {
                into[lj]!.unmap(pieces[pj]!);
              } catch {
                /* the rollback's own failure cannot be reported better than the map's */
              }
            }
          return refuse('devErr', `${into[li]!.name}: ${errorText(e)}`);
        }
      }
    return OK;
  }

  /** Unmaps `pieces` from `from`; returns the errors (every unmap is tried). */
  private unmapPieces(pieces: readonly HostPiece[], from: readonly DomainListener[]): unknown[] {
    const errors: unknown[] = [];
    // Index loops: every guest UNMAP comes here, and before V8 optimizes it a for-of is an
    // iterator object and a call per element.
    for (let li = 0; li < from.length; li++)
      for (let pi = 0; pi < pieces.length; pi++) {
        try {
          from[li]!.unmap(pieces[pi]!);
        } catch (e) {
          errors.push(e);
        }
      }
    return errors;
  }

  /**
   * Unmaps every mapping wholly inside [iova, iova+size) (none is fine). Refused, unmapping
   * nothing, when a mapping straddles an end of the range; a kernel error keeps that mapping.
   */
  unmap(iova: number, size: number): HostResult & { unmapped?: number } {
    if (this.destroyed || !Number.isSafeInteger(iova) || !Number.isSafeInteger(size) || iova < 0 || size <= 0)
      return this.refuseUnmap(iova, size, undefined);
    const end = Math.min(iova + size, Number.MAX_SAFE_INTEGER);
    const t = this.mappings.take(iova, end - iova);
    if (!t.ok) return this.refuseUnmap(iova, size, t.straddling);
    let anyFailed = false,
      failed: unknown;
    const kept = t.taken.length > 1 ? this.unmapRuns(t.taken) : undefined;
    for (let i = 0; i < t.taken.length; i++) {
      const m = t.taken[i]!;
      let bad = false,
        err: unknown;
      if (kept) {
        if (kept.size && kept.has(m)) {
          bad = true;
          err = kept.get(m);
        }
      } else if (m.pieces) {
        const errors = this.unmapPieces(m.pieces, this.listeners);
        if (errors.length) {
          bad = true;
          err = errors[0];
        }
      }
      if (bad) {
        if (!anyFailed) {
          anyFailed = true;
          failed = err;
        }
        this.mappings.add(m); // the host still has (some of) it: keep it, so a retry can finish
      } else this.stats.unmaps++;
    }
    if (anyFailed) return this.refused(refuse('devErr', `${this.unmapText(iova, size)}: ${errorText(failed)}`));
    return { ok: true, unmapped: t.taken.length };
  }

  /** unmap()'s refusal (out of line: every guest UNMAP runs unmap()): its arguments, or the mapping it would split. */
  private refuseUnmap(iova: number, size: number, straddling: DomainMapping | undefined): Refusal {
    if (this.destroyed) return this.refused(refuse('noent', `domain ${this.id} was destroyed`));
    if (!straddling)
      return this.refused(
        refuse('range', `${this.unmapText(iova, size)}: not a range of non-negative integers below 2^53`),
      );
    return this.refused(
      refuse(
        'range',
        `${this.unmapText(iova, size)}: the mapping at IOVA ${hex(straddling.iova)}+${hex(straddling.size)} is not wholly inside it (an unmap may not split a mapping)`,
      ),
    );
  }

  private unmapText(iova: number, size: number): string {
    return `unmap of IOVA ${hex(iova)}+${hex(size)} in domain ${this.id}`;
  }

  /**
   * Unmaps several mappings (in IOVA order) from every listener: each run of pieces that abut in
   * IOVA goes in one host call where the listener can (a guest unmaps a whole scatter-gather
   * list's range at once: one ioctl instead of one per page; the kernel still unmaps each), piece by piece
   * otherwise or when that call fails. Returns the mappings that failed, with their first error.
   * (Index loops and no object per piece: a strict-mode guest's every multi-page DMA ends here.)
   */
  private unmapRuns(taken: readonly DomainMapping[]): Map<DomainMapping, unknown> {
    const failed = new Map<DomainMapping, unknown>();
    for (let li = 0; li < this.listeners.length; li++) {
      const l = this.listeners[li]!;
      // The run so far: `count` pieces from piece `pi` of taken[mi], covering IOVA [iova, end).
      let mi = 0,
        pi = 0,
        count = 0,
        iova = 0,
        end = 0;
      for (let m = 0; m < taken.length; m++) {
        const ps = taken[m]!.pieces;
        if (!ps) continue;
        for (let p = 0; p < ps.length; p++) {
          const piece = ps[p]!;
          if (count && piece.iova !== end) {
            unmapRun(l, taken, mi, pi, count, iova, end, failed);
            count = 0;
          }
          if (!count) {
            mi = m;
            pi = p;
            iova = piece.iova;
          }
          count++;
          end = piece.iova + piece.size;
        }
      }
      if (count) unmapRun(l, taken, mi, pi, count, iova, end, failed);
    }
    return failed;
  }

  /**
   * Starts mirroring into `l`: replays every mapping. All or nothing: refused (nothing left in
   * `l`) when `l` lacks room or the kernel refuses one.
   */
  addListener(l: DomainListener): HostResult {
    if (this.listeners.includes(l)) return { ok: true };
    const pieces = this.mappings.values().flatMap((m) => m.pieces ?? []);
    if (l.room() < pieces.length)
      return refuse(
        'nomem',
        `domain ${this.id} has ${pieces.length} host mappings but ${l.name} has room for ${l.room()} (${l.limitText()})`,
      );
    const done: DomainMapping[] = [];
    for (const m of this.mappings.values()) {
      if (!m.pieces) continue;
      const r = this.mapPieces(m.pieces, m, [l]);
      if (!r.ok) {
        for (const d of done) this.unmapPieces(d.pieces!, [l]);
        return refuse(r.status, `replaying domain ${this.id} into ${l.name}: ${r.reason}`);
      }
      done.push(m);
    }
    this.listeners.push(l);
    return { ok: true };
  }

  /**
   * Stops mirroring into `l`. With `unmapEach` every piece is unmapped from it; without, the
   * caller empties it in one call (VFIO_DMA_UNMAP_FLAG_ALL, IOAS unmap-all, or closing it).
   * Returns the unmap errors.
   */
  removeListener(l: DomainListener, unmapEach = true): unknown[] {
    const i = this.listeners.indexOf(l);
    if (i < 0) return [];
    this.listeners.splice(i, 1);
    if (!unmapEach) return [];
    return this.unmapPieces(
      this.mappings.values().flatMap((m) => m.pieces ?? []),
      [l],
    );
  }

  /** @internal a RAM section left the guest's view: unmap what points into it. */
  _sectionGone(s: Section, orphans: Set<DomainMapping>, errors: unknown[]): void {
    for (const m of this.mappings.values()) {
      if (!m.pieces || !m.pieces.some((p) => p.section === s)) continue;
      errors.push(...this.unmapPieces(m.pieces, this.listeners));
      m.pieces = null;
      this.stats.orphaned++;
      orphans.add(m);
    }
  }

  /** @internal at the end of a memory change: map orphans whose range is RAM again. */
  _remapOrphans(only: Set<DomainMapping> | undefined): void {
    for (const m of this.mappings.values()) {
      if (m.pieces || (only && !only.has(m))) continue;
      const pieces = this.owner.resolve(m.iova, m.gpa, m.size, m);
      if (!Array.isArray(pieces)) continue;
      if (this.mapPieces(pieces, m, this.listeners).ok) {
        m.pieces = pieces;
        this.stats.remapped++;
      }
    }
  }

  /** Unmaps everything from every listener and forgets the mappings (the listeners stay). */
  clear(): unknown[] {
    const errors: unknown[] = [];
    for (const m of this.mappings.clear()) if (m.pieces) errors.push(...this.unmapPieces(m.pieces, this.listeners));
    return errors;
  }

  /** @internal */
  _destroy(): unknown[] {
    const errors = this.clear();
    this.listeners.length = 0;
    this.destroyed = true;
    return errors;
  }
}

/**
 * The domains of one guest memory: creates and destroys them, resolves guest-physical ranges,
 * and follows the guest's memory (a MemoryListener on it) so that no host mapping outlives the
 * guest RAM it points into.
 */
export class DmaDomains {
  private readonly domains = new Map<number, DmaDomain>();
  private readonly listener: MemoryListener;
  private orphans = new Set<DomainMapping>();
  private ramAdded = false;
  private roundErrors: unknown[] = [];
  private closed = false;

  constructor(readonly memory: AddressSpace) {
    this.listener = {
      name: 'dma-domains',
      priority: 20,
      begin: () => {
        this.orphans = new Set();
        this.ramAdded = false;
        this.roundErrors = [];
      },
      regionDel: (s) => {
        if (s.region.kind !== 'ram') return;
        for (const d of this.domains.values()) d._sectionGone(s, this.orphans, this.roundErrors);
      },
      regionAdd: (s) => {
        if (s.region.kind === 'ram') this.ramAdded = true;
      },
      commit: () => {
        if (this.orphans.size || this.ramAdded)
          for (const d of this.domains.values()) d._remapOrphans(this.ramAdded ? undefined : this.orphans);
        const errors = this.roundErrors;
        this.roundErrors = [];
        if (errors.length)
          throw new TsvmmError(
            'ERR_VM_SETUP',
            `unmapping DMA that pointed into removed guest RAM failed: ${errorText(errors[0])}`,
            {
              cause: errors[0],
            },
          );
      },
    };
    memory.addListener(this.listener);
  }

  get(id: number): DmaDomain | undefined {
    return this.domains.get(id);
  }

  values(): IterableIterator<DmaDomain> {
    return this.domains.values();
  }

  get size(): number {
    return this.domains.size;
  }

  create(id: number): DmaDomain | Refusal {
    if (this.closed) return refuse('devErr', 'the vIOMMU is closed');
    if (!Number.isSafeInteger(id) || id < 0)
      return refuse('range', `domain id ${String(id)} is not a non-negative integer`);
    if (this.domains.has(id)) return refuse('inval', `domain ${id} already exists`);
    const d = new DmaDomain(id, this);
    this.domains.set(id, d);
    return d;
  }

  /** Unmaps all of a domain's mappings from its listeners and drops it; returns the unmap errors. */
  destroy(id: number): unknown[] {
    const d = this.domains.get(id);
    if (!d) return [];
    this.domains.delete(id);
    return d._destroy();
  }

  /**
   * The host pieces for guest [gpa, gpa+size) at IOVA `iova`: one per RAM section crossed, or a
   * refusal naming what is there instead of RAM.
   */
  resolve(iova: number, gpa: number, size: number, perm: DmaPerm): HostPiece[] | Refusal {
    const pieces: HostPiece[] = [];
    for (let at = gpa; at < gpa + size; ) {
      const s = this.memory.lookup(at);
      if (!s || s.region.kind !== 'ram' || !s.region.backing || (perm.write && s.readonly)) return this.notRam(at, s);
      const end = Math.min(s.addr + s.size, gpa + size);
      const offset = s.offsetInRegion + (at - s.addr);
      pieces.push({
        iova: iova + (at - gpa),
        size: end - at,
        vaddr: s.region.backing.hostAddr + BigInt(offset),
        region: s.region.name,
        section: s,
      });
      at = end;
    }
    return pieces;
  }

  /** resolve()'s refusal at guest address `at`: what is there instead of (writable) RAM. */
  private notRam(at: number, s: Section | undefined): Refusal {
    if (!s) {
      const view = this.memory.flatView();
      const next = view.find((v) => v.addr > at);
      const ramEnd = view.filter((v) => v.region.kind === 'ram').reduce((a, v) => Math.max(a, v.addr + v.size), 0);
      return refuse(
        'inval',
        at >= ramEnd
          ? `guest address ${hex(at)} is beyond guest RAM (which ends at ${hex(ramEnd)})`
          : `guest address ${hex(at)} is a hole (nothing there${next ? ` until ${next.region.name} at ${hex(next.addr)}` : ''})`,
      );
    }
    if (s.region.kind !== 'ram' || !s.region.backing)
      return refuse(
        'inval',
        `guest address ${hex(at)} is ${s.region.kind === 'io' ? 'MMIO' : s.region.kind === 'ramDevice' ? 'device memory (a BAR)' : 'not RAM'} (${s.region.name}), not RAM: only guest RAM is DMA-mapped`,
      );
    return refuse('inval', `guest address ${hex(at)} is read-only memory (${s.region.name}): no write access`);
  }

  /** Destroys every domain (unmapping everything) and stops following the guest's memory. */
  close(): unknown[] {
    if (this.closed) return [];
    this.closed = true;
    const errors = [...this.domains.keys()].flatMap((id) => this.destroy(id));
    try {
      this.memory.removeListener(this.listener);
    } catch {
      /* the address space may already be gone */
    }
    return errors;
  }
}
