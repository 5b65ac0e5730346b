// Plain data types shared by the memory API (see index.ts for the overview).
import type { MemoryRegion } from './region.js';

/** The host memory behind a `ram` / `ramDevice` region. */
export interface RamBacking {
  /** Host virtual address of offset 0 of the region (KVM memslots, VFIO DMA maps). */
  hostAddr: bigint;
  /** A file descriptor the memory can be re-mapped from (memfd, VFIO device fd). */
  fd?: number;
  /** Offset of region offset 0 within `fd`. */
  fdOffset?: number;
  /** A JS view of the same memory, used when an access has to be emulated. */
  bytes?: Uint8Array;
  /**
   * Instead of `bytes`, for regions larger than one typed array can be (4 GiB): the memory as
   * consecutive views of `size` bytes each (the last may be shorter); `get(i)` is piece i.
   */
  chunks?: RamChunks;
}

export interface RamChunks {
  readonly size: number;
  get(i: number): Uint8Array;
}

/**
 * MMIO / port I/O callbacks. `offset` is relative to the region, `size` is 1, 2, 4 or 8.
 * 8-byte writes carry a bigint; smaller ones a number. A read may return either; the value is
 * passed to the caller as-is (not masked to `size`) unless the access had to be split.
 */
export interface IoOps {
  read(offset: number, size: number): number | bigint;
  write(offset: number, size: number, value: number | bigint): void;
}

/**
 * Which accesses an `io` region accepts (QEMU's `MemoryRegionOps.valid`). Only applies when
 * given: a region without it accepts every access. With it, an access bigger than
 * `maxAccessSize` is split into `maxAccessSize` pieces (as QEMU's memory_access_size does);
 * one smaller than `minAccessSize`, or unaligned to its size while `unaligned` is false (the
 * default, as in QEMU), is invalid: reads give all-ones, writes are dropped, `stats.invalid`
 * counts it.
 */
export interface AccessConstraints {
  minAccessSize?: 1 | 2 | 4 | 8;
  maxAccessSize?: 1 | 2 | 4 | 8;
  unaligned?: boolean;
}

/**
 * One piece of an address space's flat view: `[addr, addr+size)` shows `region` (always a
 * leaf: ram, ramDevice or io — aliases are resolved) starting at `offsetInRegion`.
 * `readonly` is true if the region or any region on the path to it (aliases, containers) is
 * read-only. Sections are frozen; a section that stays unchanged across a re-render keeps its
 * identity, so the object given to regionDel is the one earlier given to regionAdd.
 */
export interface Section {
  readonly addr: number;
  readonly size: number;
  readonly region: MemoryRegion;
  readonly offsetInRegion: number;
  readonly readonly: boolean;
}

/**
 * Observer of an AddressSpace's flat view (QEMU's MemoryListener). Listeners are ordered by
 * ascending `priority` (default 0; equal priorities keep registration order).
 */
export interface MemoryListener {
  name?: string;
  priority?: number;
  begin?(): void;
  regionAdd?(s: Section): void;
  regionDel?(s: Section): void;
  regionNop?(s: Section): void;
  commit?(): void;
}
