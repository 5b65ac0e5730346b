// MemoryRegion: a node of the memory tree, plus the transaction machinery that turns region
// changes into re-renders of the address spaces that can see them. See index.ts.
import type { AccessConstraints, IoOps, RamBacking } from './types.js';

/** A view of RAM for one emulated access: `dv` at byte `at`. */
export interface RamView {
  dv: DataView;
  at: number;
}

export type RegionKind = 'ram' | 'ramDevice' | 'io' | 'container' | 'alias';

/** Something rendered from a region tree (an AddressSpace). @internal */
export interface RenderTarget {
  /** Re-renders and notifies listeners; listener errors are appended to `errors`, never thrown. */
  _rerender(errors: unknown[]): void;
}

// ---------------------------------------------------------------------------------------------
// Transactions

let depth = 0;
const pending = new Set<RenderTarget>();
/** Listeners that keep changing the map from their callbacks would otherwise loop forever. */
const MAX_ROUNDS = 64;

/** Throws the collected listener errors: the error itself if one, an AggregateError if more. */
export function throwCollected(errors: unknown[]): void {
  if (errors.length === 1) throw errors[0];
  if (errors.length > 1) throw new AggregateError(errors, `${errors.length} memory listener callbacks failed`);
}

function flush(): void {
  if (pending.size === 0) return;
  // Changes made by listeners while we notify are batched into another round.
  depth++;
  const errors: unknown[] = [];
  try {
    for (let round = 0; pending.size > 0; round++) {
      if (round === MAX_ROUNDS) {
        pending.clear();
        errors.push(new Error(`memory listeners changed the memory map ${MAX_ROUNDS} times in a row; giving up`));
        break;
      }
      const batch = [...pending];
      pending.clear();
      for (const t of batch) t._rerender(errors);
    }
  } finally {
    depth--;
  }
  throwCollected(errors);
}

/**
 * Runs `fn` as one memory transaction (QEMU's memory_region_transaction_begin/commit).
 * Nestable. Region changes inside it only mark the affected address spaces; at the outermost
 * end each of them re-renders once and its listeners see one diff (none if the net change is
 * nothing). Until then flatView()/lookup()/read()/write() keep using the previous view, as in
 * QEMU. If `fn` throws, the changes it made are still committed and `fn`'s error is rethrown
 * (a listener error from that commit is then dropped).
 */
export function memoryTransaction<T>(fn: () => T): T {
  depth++;
  let result: T;
  try {
    result = fn();
  } catch (e) {
    if (--depth === 0) {
      try {
        flush();
      } catch {
        /* fn's error is the one to report */
      }
    }
    throw e;
  }
  if (--depth === 0) flush();
  return result;
}

/** True while inside memoryTransaction (or while listeners are being notified). */
export function inMemoryTransaction(): boolean {
  return depth > 0;
}

function collectTargets(r: MemoryRegion, out: Set<RenderTarget>, seen: Set<MemoryRegion>): void {
  for (let a: MemoryRegion | null = r; a !== null; a = a.parent) {
    if (seen.has(a)) return;
    seen.add(a);
    if (a._targets) for (const t of a._targets) out.add(t);
    if (a._aliasedBy) for (const al of a._aliasedBy) collectTargets(al, out, seen);
  }
}

/** Marks every address space that can see `r` (through its ancestors or aliases) for re-render. */
function changed(r: MemoryRegion): void {
  collectTargets(r, pending, new Set());
  if (depth === 0) flush();
}

// ---------------------------------------------------------------------------------------------
// Validation

function checkUint(who: string, what: string, v: number): void {
  if (!Number.isSafeInteger(v) || v < 0)
    throw new RangeError(`memory region ${who}: ${what} must be a non-negative safe integer, got ${String(v)}`);
}

function checkBacking(who: string, size: number, b: RamBacking): void {
  if (b === null || typeof b !== 'object' || typeof b.hostAddr !== 'bigint')
    throw new TypeError(`memory region ${who}: backing.hostAddr must be a bigint`);
  if (b.chunks !== undefined && (!Number.isSafeInteger(b.chunks.size) || b.chunks.size <= 0 || b.bytes !== undefined)) {
    throw new RangeError(`memory region ${who}: backing.chunks needs a positive chunk size, and no backing.bytes`);
  }
  if (b.bytes !== undefined && b.bytes.byteLength < size) {
    throw new RangeError(
      `memory region ${who}: backing.bytes has ${b.bytes.byteLength} bytes, smaller than the region (${size})`,
    );
  }
}

const ACCESS_SIZES = [1, 2, 4, 8];

// ---------------------------------------------------------------------------------------------

export class MemoryRegion {
  readonly name: string;
  readonly kind: RegionKind;
  /** ram / ramDevice only. */
  readonly backing: RamBacking | undefined;
  /** io; ramDevice when its emulated accesses go through callbacks. */
  readonly ops: IoOps | undefined;
  /** io only, when given at creation. */
  readonly valid: Readonly<AccessConstraints> | undefined;
  /** alias only: the region the alias shows a window of. */
  readonly aliasTarget: MemoryRegion | undefined;

  /** @internal fast-path copies of `valid` */
  readonly _minAccess: number;
  /** @internal */
  readonly _maxAccess: number;
  /** @internal */
  readonly _alignCheck: boolean;
  /** @internal address spaces whose root this is */
  _targets: Set<RenderTarget> | undefined;
  /** @internal aliases whose target this is */
  _aliasedBy: Set<MemoryRegion> | undefined;
  /** @internal lazily created views of backing.bytes / backing.chunks */
  _dv: DataView[] | undefined;

  private _size: number;
  private _addr = 0;
  private _priority = 0;
  private _enabled = true;
  private _readonly: boolean;
  private _aliasOffset: number;
  private _parent: MemoryRegion | null = null;
  /** Sorted by priority, highest first; equal priorities newest first (QEMU's list order). */
  private readonly subs: MemoryRegion[] = [];

  private constructor(
    name: string,
    kind: RegionKind,
    size: number,
    init: {
      backing?: RamBacking;
      ops?: IoOps;
      valid?: AccessConstraints;
      target?: MemoryRegion;
      aliasOffset?: number;
      readonly?: boolean;
    },
  ) {
    if (typeof name !== 'string') throw new TypeError('memory region name must be a string');
    checkUint(name, 'size', size);
    this.name = name;
    this.kind = kind;
    this._size = size;
    this.backing = init.backing;
    if (init.backing) checkBacking(name, size, init.backing);
    this.ops = init.ops;
    this.valid = init.valid ? Object.freeze({ ...init.valid }) : undefined;
    this.aliasTarget = init.target;
    this._aliasOffset = init.aliasOffset ?? 0;
    this._readonly = init.readonly ?? false;
    const v = init.valid;
    this._minAccess = v?.minAccessSize ?? 1;
    this._maxAccess = v?.maxAccessSize ?? 8;
    this._alignCheck = v !== undefined && !v.unaligned;
    if (
      v &&
      (!ACCESS_SIZES.includes(this._minAccess) ||
        !ACCESS_SIZES.includes(this._maxAccess) ||
        this._minAccess > this._maxAccess)
    ) {
      throw new RangeError(
        `memory region ${name}: valid access sizes must be 1, 2, 4 or 8 with min <= max, got ${this._minAccess}..${this._maxAccess}`,
      );
    }
  }

  /** Guest RAM (or ROM with `readonly`). */
  static ram(name: string, size: number, backing: RamBacking, opts: { readonly?: boolean } = {}): MemoryRegion {
    return new MemoryRegion(name, 'ram', size, { backing, readonly: opts.readonly ?? false });
  }

  /**
   * A device's memory mapped into the host (a VFIO BAR mmap): RAM-like, but not guest RAM.
   * With `ops`, accesses that have to be emulated (no KVM memslot there) go to them rather than
   * to backing.bytes (QEMU's ram_device_mem_ops): a device may refuse the mmap (decode off,
   * reset, D3) with SIGBUS, which a VMM must never take on the guest's behalf.
   */
  static ramDevice(
    name: string,
    size: number,
    backing: RamBacking,
    opts: { readonly?: boolean; ops?: IoOps } = {},
  ): MemoryRegion {
    return new MemoryRegion(name, 'ramDevice', size, {
      backing,
      readonly: opts.readonly ?? false,
      ...(opts.ops ? { ops: opts.ops } : {}),
    });
  }

  /** MMIO or port I/O emulated by callbacks. */
  static io(name: string, size: number, ops: IoOps, opts: { valid?: AccessConstraints } = {}): MemoryRegion {
    if (!ops || typeof ops.read !== 'function' || typeof ops.write !== 'function')
      throw new TypeError(`memory region ${name}: ops needs read and write functions`);
    return new MemoryRegion(name, 'io', size, { ops, ...(opts.valid ? { valid: opts.valid } : {}) });
  }

  /** A pure container: shows nothing itself; holes fall through to lower-priority siblings. */
  static container(name: string, size: number): MemoryRegion {
    return new MemoryRegion(name, 'container', size, {});
  }

  /** A window `[offset, offset+size)` of `target`, which can be placed anywhere. */
  static alias(
    name: string,
    target: MemoryRegion,
    offset: number,
    size: number,
    opts: { readonly?: boolean } = {},
  ): MemoryRegion {
    if (!(target instanceof MemoryRegion))
      throw new TypeError(`memory region ${name}: alias target must be a MemoryRegion`);
    checkUint(name, 'alias offset', offset);
    const a = new MemoryRegion(name, 'alias', size, { target, aliasOffset: offset, readonly: opts.readonly ?? false });
    (target._aliasedBy ??= new Set()).add(a);
    return a;
  }

  get size(): number {
    return this._size;
  }
  /** Offset within the parent. */
  get addr(): number {
    return this._addr;
  }
  get priority(): number {
    return this._priority;
  }
  get enabled(): boolean {
    return this._enabled;
  }
  get readonly(): boolean {
    return this._readonly;
  }
  get parent(): MemoryRegion | null {
    return this._parent;
  }
  get aliasOffset(): number {
    return this._aliasOffset;
  }
  /** Highest priority first; among equal priorities the most recently added first. */
  get subregions(): readonly MemoryRegion[] {
    return this.subs;
  }
  /** Whether the region shows something itself (ram, ramDevice, io) rather than only its subregions. */
  get terminates(): boolean {
    return this.kind === 'ram' || this.kind === 'ramDevice' || this.kind === 'io';
  }

  /**
   * Places `child` at `offset` within this region. Higher `priority` (signed) hides lower among
   * siblings; among equal priorities the child added last wins where they overlap (QEMU
   * leaves this undefined; its list insertion gives the same result).
   */
  addSubregion(offset: number, child: MemoryRegion, priority = 0): void {
    if (!(child instanceof MemoryRegion))
      throw new TypeError(`memory region ${this.name}: subregion must be a MemoryRegion`);
    checkUint(this.name, `offset of ${child.name}`, offset);
    if (!Number.isSafeInteger(priority))
      throw new RangeError(
        `memory region ${this.name}: priority of ${child.name} must be a safe integer, got ${String(priority)}`,
      );
    if (this.kind === 'alias')
      throw new Error(`memory region ${this.name}: an alias cannot have subregions (it shows its target's)`);
    if (child._parent !== null)
      throw new Error(`memory region ${child.name} is already a subregion of ${child._parent.name}`);
    for (let a: MemoryRegion | null = this; a !== null; a = a._parent) {
      if (a === child)
        throw new Error(
          `memory region ${child.name} cannot be a subregion of itself or of its own descendant ${this.name}`,
        );
    }
    child._parent = this;
    child._addr = offset;
    child._priority = priority;
    // Before the first sibling of priority <= ours (binary search: the list is sorted).
    let lo = 0,
      hi = this.subs.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.subs[mid]!._priority > priority) lo = mid + 1;
      else hi = mid;
    }
    this.subs.splice(lo, 0, child);
    if (child._enabled) changed(this);
  }

  removeSubregion(child: MemoryRegion): void {
    if (child?._parent !== this) throw new Error(`memory region ${child?.name}: not a subregion of ${this.name}`);
    this.subs.splice(this.subs.indexOf(child), 1);
    child._parent = null;
    if (child._enabled) changed(this);
  }

  /** Moves the region within its parent (a guest moving a BAR). */
  setAddress(offset: number): void {
    checkUint(this.name, 'address', offset);
    if (offset === this._addr) return;
    this._addr = offset;
    if (this._enabled) changed(this);
  }

  setEnabled(on: boolean): void {
    if (on === this._enabled) return;
    this._enabled = on;
    changed(this);
  }

  setSize(size: number): void {
    checkUint(this.name, 'size', size);
    if (size === this._size) return;
    if (this.backing) checkBacking(this.name, size, this.backing);
    this._size = size;
    if (this._enabled) changed(this);
  }

  /** Read-only regions (and everything seen through them) ignore guest writes to RAM. */
  setReadonly(on: boolean): void {
    if (on === this._readonly) return;
    this._readonly = on;
    if (this._enabled) changed(this);
  }

  /** alias only: moves the window within the target (PAM / VGA bank switching). */
  setAliasOffset(offset: number): void {
    if (this.kind !== 'alias')
      throw new Error(`memory region ${this.name}: setAliasOffset is only for alias regions, this is a ${this.kind}`);
    checkUint(this.name, 'alias offset', offset);
    if (offset === this._aliasOffset) return;
    this._aliasOffset = offset;
    if (this._enabled) changed(this);
  }

  /** @internal AddressSpace registration */
  static _attach(root: MemoryRegion, t: RenderTarget): void {
    (root._targets ??= new Set()).add(t);
  }
  /** @internal */
  static _detach(root: MemoryRegion, t: RenderTarget): void {
    root._targets?.delete(t);
    pending.delete(t);
  }

  /**
   * @internal The view for an access of `size` bytes at `off`: undefined when the region has no
   * JS view, null when the access straddles two chunks (the caller goes byte by byte).
   */
  _view(off: number, size: number): RamView | undefined | null {
    const b = this.backing;
    if (b?.bytes !== undefined) {
      const dv = (this._dv ??= [new DataView(b.bytes.buffer, b.bytes.byteOffset, b.bytes.byteLength)])[0]!;
      return off + size <= dv.byteLength ? { dv, at: off } : undefined;
    }
    if (b?.chunks === undefined || off + size > this._size) return undefined;
    const i = Math.floor(off / b.chunks.size),
      at = off - i * b.chunks.size;
    if (at + size > b.chunks.size) return null;
    const dvs = (this._dv ??= []);
    let dv = dvs[i];
    if (dv === undefined) {
      const c = b.chunks.get(i);
      dv = dvs[i] = new DataView(c.buffer, c.byteOffset, c.byteLength);
    }
    return at + size <= dv.byteLength ? { dv, at } : undefined;
  }

  toString(): string {
    return `${this.kind} ${this.name} (0x${this._size.toString(16)} bytes)`;
  }
}
