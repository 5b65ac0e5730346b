// The DMA side of device assignment, shared by both VFIO backends: a memory listener that maps
// every RAM section of the guest at IOVA = guest-physical address, so a device DMAs with the
// addresses the guest programs (QEMU's hw/vfio/listener.c). The legacy container
// (VFIO_IOMMU_MAP_DMA) and an iommufd IOAS (IOMMU_IOAS_MAP) differ only in the map/unmap calls.
// A map or unmap that fails throws from the callback: the memory API rethrows it, after the other
// listeners have run, from the change that caused it (attach, a transaction, a region added or
// removed), so the caller of that change learns that the device cannot DMA there.
import type { AddressSpace, MemoryListener, Section } from '../memory/index.js';
import { isSyscallError } from '../native.js';
import { TsvmmError } from '../errors.js';
import { VfioSetupError, type ReservedRegion } from './sysfs.js';
import { hasCapIpcLock, memlockLimit, fmtBytes } from './limits.js';

export interface IovaRange {
  start: number;
  end: number;
} // inclusive end, as the kernel reports
export interface DmaMapping {
  iova: number;
  size: number;
  vaddr: bigint;
  readonly: boolean;
  region: string;
}

export abstract class DmaListener implements MemoryListener {
  abstract readonly name: string;
  readonly priority = 20;
  /** Smallest IOMMU page: sections are trimmed inward to it. */
  minPage = 4096;
  iovaRanges: IovaRange[] = [{ start: 0, end: Number.MAX_SAFE_INTEGER }];
  /** DMA mappings the IOMMU still allows (VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL), if reported. */
  dmaAvail: number | undefined;
  readonly mappings = new Map<Section, DmaMapping>();
  reserved: ReservedRegion[] = [];
  /** Counters for tests and benchmarks. */
  readonly stats = { mapCalls: 0, unmapCalls: 0, busyRetries: 0 };
  protected space: AddressSpace | undefined;

  /** One map call for the whole mapping (the backend's ioctl). */
  protected abstract mapRange(m: DmaMapping): void;
  protected abstract unmapRange(m: DmaMapping): void;
  /** Drops every mapping in one call where the kernel can; false when it cannot. */
  protected abstract unmapEverything(): boolean;

  get attached(): boolean {
    return this.space !== undefined;
  }

  /** Starts mapping the address space (replays every current section). */
  attach(space: AddressSpace): void {
    if (this.space) return;
    this.checkMemlock(space);
    this.space = space;
    space.addListener(this); // replays regionAdd for the current RAM; throws what failed
  }

  private checkMemlock(space: AddressSpace): void {
    const ram = space
      .flatView()
      .filter((s) => this.wants(s))
      .reduce((a, s) => a + s.size, 0);
    const limit = memlockLimit();
    if (ram > limit && !hasCapIpcLock()) {
      throw new VfioSetupError(
        `device assignment pins all guest RAM (${fmtBytes(ram)}), but the locked-memory limit is ${fmtBytes(limit)}`,
        {
          fix:
            `raise it (ulimit -l ${Math.ceil(ram / 1024)} or unlimited, LimitMEMLOCK= in a systemd unit, memlock in /etc/security/limits.conf) ` +
            `or give tsvmm CAP_IPC_LOCK`,
        },
      );
    }
  }

  /** RAM is DMA-mapped; MMIO, device BAR mmaps and ROM-device sections are not. */
  private wants(s: Section): boolean {
    return s.region.kind === 'ram';
  }

  regionAdd(s: Section): void {
    if (!this.wants(s)) return;
    const start = Math.ceil(s.addr / this.minPage) * this.minPage;
    const end = Math.floor((s.addr + s.size) / this.minPage) * this.minPage;
    if (end <= start) return;
    try {
      const inRange = this.iovaRanges.some((r) => start >= r.start && end - 1 <= r.end);
      if (!inRange) {
        throw new VfioSetupError(
          `guest RAM ${s.region.name} at IOVA 0x${start.toString(16)}-0x${(end - 1).toString(16)} is outside the IOMMU's IOVA ranges ` +
            `(${this.iovaRanges.map((r) => `0x${r.start.toString(16)}-0x${r.end.toString(16)}`).join(', ')})`,
          { fix: 'give the guest less memory' },
        );
      }
      const clash = this.reserved.find((r) => start <= r.end && r.start <= end - 1 && r.type !== 'direct-relaxable');
      if (clash) {
        throw new VfioSetupError(
          `guest RAM ${s.region.name} at 0x${start.toString(16)}-0x${(end - 1).toString(16)} overlaps the IOMMU's reserved ` +
            `${clash.type} region 0x${clash.start.toString(16)}-0x${clash.end.toString(16)} (sysfs reserved_regions)`,
          { fix: 'give the guest less memory' },
        );
      }
      if (this.dmaAvail !== undefined && this.mappings.size >= this.dmaAvail) {
        throw new VfioSetupError(
          `the IOMMU allows no more DMA mappings (limit reached after ${this.mappings.size}; vfio_iommu_type1 dma_entry_limit)`,
        );
      }
      const m: DmaMapping = {
        iova: start,
        size: end - start,
        vaddr: s.region.backing!.hostAddr + BigInt(s.offsetInRegion + (start - s.addr)),
        readonly: s.readonly,
        region: s.region.name,
      };
      this.stats.mapCalls++;
      this.mapRange(m);
      this.mappings.set(s, m);
    } catch (e) {
      // Thrown to the memory API, which finishes the commit and rethrows it from the change.
      throw e instanceof TsvmmError
        ? e
        : new VfioSetupError(`${this.name}: DMA map of ${s.region.name} failed: ${(e as Error).message}`, { cause: e });
    }
  }

  regionDel(s: Section): void {
    const m = this.mappings.get(s);
    if (!m) return;
    this.mappings.delete(s);
    try {
      this.stats.unmapCalls++;
      this.unmapRange(m);
    } catch (e) {
      throw new VfioSetupError(
        `${this.name}: DMA unmap of ${m.region} (IOVA 0x${m.iova.toString(16)}) failed: ${(e as Error).message}`,
        { cause: e },
      );
    }
  }

  /** Whether [iova, iova+size) lies inside one of our mappings (tests check DMA targets). */
  covers(iova: number, size: number): boolean {
    for (const m of this.mappings.values()) if (iova >= m.iova && iova + size <= m.iova + m.size) return true;
    return false;
  }

  /** Unmaps everything (in one call where the kernel can) and detaches from the address space. */
  detach(): void {
    if (!this.space) return;
    const space = this.space;
    this.space = undefined;
    if (this.mappings.size && this.unmapEverything()) {
      this.stats.unmapCalls++;
      this.mappings.clear();
    }
    try {
      space.removeListener(this); // per-section unmaps for whatever is left
    } catch {
      /* the owner closes the container or IOAS next, which drops any mapping left */
    }
  }
}

/** ENOMEM from a DMA map is nearly always the locked-memory limit: say so, with the fix. */
export function explainMapError(call: string, e: unknown, m: DmaMapping): Error {
  const where = `${m.region} (IOVA 0x${m.iova.toString(16)}, ${fmtBytes(m.size)})`;
  if (isSyscallError(e, 'ENOMEM')) {
    return new VfioSetupError(
      `${call} of ${where} failed with ENOMEM: the locked-memory limit (${fmtBytes(memlockLimit())}) ` +
        `is too low for pinning guest RAM, or the DMA entry limit was reached`,
      { cause: e, fix: 'ulimit -l unlimited (or CAP_IPC_LOCK)' },
    );
  }
  return new VfioSetupError(`${call} of ${where} failed: ${(e as Error).message}`, { cause: e });
}
