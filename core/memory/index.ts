// The memory API, after QEMU's (docs/devel/memory.rst): devices build a tree of MemoryRegions;
// each AddressSpace renders its tree into a flat view (sorted, non-overlapping Sections) and
// tells its MemoryListeners (KVM memslots, VFIO DMA) only what changed.
//
// ## API
//
//   type RegionKind = 'ram' | 'ramDevice' | 'io' | 'container' | 'alias'
//   class MemoryRegion {
//     static ram(name, size, backing: RamBacking, opts?: { readonly?: boolean })   // guest RAM / ROM
//     static ramDevice(name, size, backing: RamBacking, opts?: { readonly?: boolean; ops?: IoOps }) // device mmap (VFIO BAR);
//                                                 // with ops, emulated accesses go to them, never to backing.bytes
//     static io(name, size, ops: IoOps, opts?: { valid?: AccessConstraints })      // MMIO / PIO callbacks
//     static container(name, size)
//     static alias(name, target: MemoryRegion, offset, size, opts?: { readonly?: boolean })
//     readonly name; readonly kind: RegionKind; readonly backing?; readonly ops?; readonly valid?;
//     readonly aliasTarget?; size; addr (offset in parent); priority; enabled; readonly;
//     parent: MemoryRegion | null; aliasOffset; subregions (render order); terminates
//     addSubregion(offset, child, priority = 0)   // throws if child already has a parent, if it
//                                                 // would make a cycle, or if this is an alias
//     removeSubregion(child)                      // throws if child is not a subregion of this
//     setAddress(offset); setEnabled(on); setSize(size); setReadonly(on); setAliasOffset(offset)
//   }
//   class AddressSpace {
//     constructor(name, root: MemoryRegion)
//     readonly name; readonly root; readonly stats: { unassigned: number; invalid: number }
//     flatView(): readonly Section[]
//     addListener(l); removeListener(l)      // replay regionAdd / regionDel of the whole view
//     lookup(addr): Section | undefined      // binary search (+ last-hit hint)
//     read(addr, size): number | bigint      // size 1/2/4/8; size 8 from RAM is a bigint
//     write(addr, size, value: number | bigint): void
//     describe(): string; destroy()
//   }
//   memoryTransaction<T>(fn: () => T): T; inMemoryTransaction(): boolean
//   interfaces RamBacking, IoOps, AccessConstraints, Section, MemoryListener (types.ts)
//
// All addresses, sizes and offsets are non-negative safe integers (RangeError otherwise);
// priorities are signed safe integers. Rendering clips to [0, 2^53).
//
// ## Rendering rules (QEMU's render_memory_region)
//
// - Disabled regions and size-0 regions render nothing, nor does anything below them.
// - Subregions are clipped to their parent's extent and rendered in list order: priority
//   descending; among equal priorities the most recently added first (QEMU inserts a new
//   subregion before existing ones of priority <= its own). The first leaf rendered at a point
//   owns it, so higher priority wins and, for overlapping equal priorities (undefined in QEMU's
//   docs), the sibling added last wins. Priorities are only compared between siblings: a
//   high-priority child of a low-priority container still loses to the container's siblings.
// - ram / ramDevice / io regions with subregions show their subregions over themselves; a pure
//   container shows only its subregions, and its holes fall through to lower-priority siblings.
// - An alias renders its target's [aliasOffset, aliasOffset+size) at the alias's place (target's
//   own address is ignored, its enabled flag is not); aliases of aliases compose; a cycle
//   through aliases renders nothing where it closes. Aliases cannot have subregions. A target
//   keeps a (strong) reference to its aliases, so changes below it reach every address space
//   showing it; an alias lives as long as its target.
// - Section.readonly = readonly of any region on the path (alias, container or leaf). It only
//   blocks writes to ram/ramDevice; io writes are always dispatched (as in QEMU).
// - Adjacent pieces of the same region with contiguous offsets and the same readonly merge.
//
// ## Changes, transactions and listeners
//
// Every change (add/remove subregion, setAddress/Enabled/Size/Readonly/AliasOffset) marks the
// address spaces whose root is an ancestor of the region, or of an alias of it (transitively).
// Outside memoryTransaction they re-render at once; inside, once at the outermost end. A
// re-render whose result equals the current view makes no callbacks at all. Otherwise, in
// QEMU's order (listeners sorted by ascending priority, ties in registration order):
//   1. begin() on every listener, ascending;
//   2. for each removed section, in address order: regionDel on every listener, DESCENDING;
//   3. for each section of the new view, in address order: regionAdd (new) or regionNop
//      (unchanged) on every listener, ascending;
//   4. commit() on every listener, ascending.
// A section whose region, offset, size or readonly changed is a regionDel + regionAdd.
// Unchanged sections keep their identity across re-renders (regionDel gets the same object
// regionAdd got). The new view becomes current BEFORE any callback. A throwing listener does not
// stop the others nor its own later callbacks: all callbacks run, then the error is rethrown
// from the call that made the change (an AggregateError if several threw). Changes made by
// listeners from their callbacks are applied in a further round after the current one.
//
// ## Accesses (the VM-exit path)
//
// read/write find the section of the first byte. An access wholly inside it goes straight to
// the region: io ops get offset = offsetInRegion + (addr - section.addr), values unmodified;
// RAM uses backing.bytes little-endian (a ramDevice with ops: the ops). An access straddling sections, or bigger than an io
// region's valid.maxAccessSize, is split like QEMU into the largest naturally aligned power-of-
// two pieces that stay inside one section, each dispatched separately (values reassembled
// little-endian). Unassigned bytes read as all-ones and drop writes (stats.unassigned++);
// RAM without a bytes view behaves the same; read-only RAM silently drops writes.
export { MemoryRegion, memoryTransaction, inMemoryTransaction, type RegionKind } from './region.js';
export { AddressSpace } from './address-space.js';
export type { RamBacking, RamChunks, IoOps, AccessConstraints, Section, MemoryListener } from './types.js';
