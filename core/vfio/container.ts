// A VFIO container (/dev/vfio/vfio): one IOMMU address space shared by its groups. Its DMA
// listener maps every RAM section of the guest's memory at IOVA = guest-physical address, so a
// device DMAs with the addresses the guest programs (QEMU's hw/vfio/listener.c).
import { closeSync, openSync, existsSync } from 'node:fs';
import { native, isSyscallError } from '../native.js';
import type { AddressSpace, MemoryListener, Section } from '../memory/index.js';
import { VfioSetupError, type ReservedRegion } from './sysfs.js';
import { hasCapIpcLock, memlockLimit, fmtBytes } from './limits.js';

export interface IovaRange { start: number; end: number } // inclusive end, as the kernel reports
export interface DmaMapping { iova: number; size: number; vaddr: bigint; readonly: boolean; region: string }

const big = (n: number | bigint) => BigInt(n);

export class VfioContainer implements MemoryListener {
  readonly name = 'vfio-dma';
  readonly priority = 20;
  iommuType = 0;
  /** Smallest IOMMU page: sections are trimmed inward to it. */
  minPage = 4096;
  iovaRanges: IovaRange[] = [{ start: 0, end: Number.MAX_SAFE_INTEGER }];
  /** DMA mappings the IOMMU still allows (VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL), if reported. */
  dmaAvail: number | undefined;
  readonly mappings = new Map<Section, DmaMapping>();
  /** Groups using this container (reference count). */
  readonly groups = new Set<number>();
  reserved: ReservedRegion[] = [];
  /** Counters for tests and benchmarks. */
  readonly stats = { mapCalls: 0, unmapCalls: 0, busyRetries: 0 };
  private space: AddressSpace | undefined;
  private unmapAll = false;
  private readonly pendingErrors: Error[] = [];

  private constructor(readonly fd: number) {}

  static open(path = '/dev/vfio/vfio'): VfioContainer {
    if (!existsSync(path)) throw new VfioSetupError(`${path} does not exist: load the vfio modules (modprobe vfio-pci) — is the IOMMU enabled?`);
    const fd = openSync(path, 'r+');
    const n = native();
    const v = n.vfioGetApiVersion(fd);
    if (v !== n.constants.VFIO_API_VERSION) {
      closeSync(fd);
      throw new VfioSetupError(`${path} speaks VFIO API ${v}, tsvmm needs ${n.constants.VFIO_API_VERSION}`);
    }
    return new VfioContainer(fd);
  }

  /** After the first group joined: pick the IOMMU model (type1v2 preferred) and read its limits. */
  setIommu(): void {
    const n = native();
    const c = n.constants;
    const types = [c.VFIO_TYPE1v2_IOMMU!, c.VFIO_TYPE1_IOMMU!];
    const type = types.find((t) => n.vfioCheckExtension(this.fd, t) > 0);
    if (type === undefined) throw new VfioSetupError('the VFIO container supports neither type1v2 nor type1 IOMMU (is vfio_iommu_type1 loaded?)');
    n.vfioSetIommu(this.fd, type);
    this.iommuType = type;
    this.unmapAll = n.vfioCheckExtension(this.fd, c.VFIO_UNMAP_ALL!) > 0;
    const info = n.vfioIommuGetInfo(this.fd);
    if (info.iovaPgsizes) {
      const pg = info.iovaPgsizes & -info.iovaPgsizes; // lowest set bit
      this.minPage = Math.max(4096, Number(pg));
    }
    if (info.iovaRanges?.length) this.iovaRanges = info.iovaRanges.map((r) => ({ start: Number(r.start), end: Number(r.end) }));
    if (info.dmaAvail !== undefined) this.dmaAvail = info.dmaAvail;
  }

  /** Starts mapping the address space (replays every current section). */
  attach(space: AddressSpace): void {
    if (this.space) return;
    this.checkMemlock(space);
    this.space = space;
    space.addListener(this); // replays regionAdd for the current RAM
    this.throwPending();
  }

  private checkMemlock(space: AddressSpace): void {
    const ram = space.flatView().filter((s) => this.wants(s)).reduce((a, s) => a + s.size, 0);
    const limit = memlockLimit();
    if (ram > limit && !hasCapIpcLock()) {
      throw new VfioSetupError(`device assignment pins all guest RAM (${fmtBytes(ram)}), but the locked-memory limit is ${fmtBytes(limit)}. ` +
        `fix: raise it (ulimit -l ${Math.ceil(ram / 1024)} or unlimited, LimitMEMLOCK= in a systemd unit, memlock in /etc/security/limits.conf) ` +
        `or give tsvmm CAP_IPC_LOCK`);
    }
  }

  /** RAM (and ROM) is DMA-mapped; MMIO, device BAR mmaps and ROM-device sections are not. */
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
        throw new VfioSetupError(`guest RAM ${s.region.name} at IOVA 0x${start.toString(16)}-0x${(end - 1).toString(16)} is outside the IOMMU's IOVA ranges ` +
          `(${this.iovaRanges.map((r) => `0x${r.start.toString(16)}-0x${r.end.toString(16)}`).join(', ')}): give the guest less memory`);
      }
      const clash = this.reserved.find((r) => start <= r.end && r.start <= end - 1 && r.type !== 'direct-relaxable');
      if (clash) {
        throw new VfioSetupError(`guest RAM ${s.region.name} at 0x${start.toString(16)}-0x${(end - 1).toString(16)} overlaps the IOMMU's reserved ` +
          `${clash.type} region 0x${clash.start.toString(16)}-0x${clash.end.toString(16)} (sysfs reserved_regions): give the guest less memory`);
      }
      if (this.dmaAvail !== undefined && this.mappings.size >= this.dmaAvail) {
        throw new VfioSetupError(`the IOMMU allows no more DMA mappings (limit reached after ${this.mappings.size}; vfio_iommu_type1 dma_entry_limit)`);
      }
      const m: DmaMapping = { iova: start, size: end - start, vaddr: s.region.backing!.hostAddr + big(s.offsetInRegion + (start - s.addr)), readonly: s.readonly, region: s.region.name };
      this.map(m);
      this.mappings.set(s, m);
    } catch (e) {
      // Listener callbacks cannot abort the commit; keep the error for attach()/checkErrors().
      this.pendingErrors.push(e as Error);
    }
  }

  private map(m: DmaMapping): void {
    const n = native();
    const c = n.constants;
    const flags = c.VFIO_DMA_MAP_FLAG_READ! | (m.readonly ? 0 : c.VFIO_DMA_MAP_FLAG_WRITE!);
    const req = { vaddr: m.vaddr, iova: m.iova, size: m.size, flags };
    this.stats.mapCalls++;
    try {
      n.vfioIommuMapDma(this.fd, req);
    } catch (e) {
      if (!isSyscallError(e, 'EBUSY') && !isSyscallError(e, 'EEXIST')) throw this.explainMapError(e, m);
      // Something is still mapped there (a stale or overlapping mapping): unmap and retry once.
      this.stats.busyRetries++;
      n.vfioIommuUnmapDma(this.fd, { iova: m.iova, size: m.size, flags: 0 });
      n.vfioIommuMapDma(this.fd, req);
    }
  }

  private explainMapError(e: unknown, m: DmaMapping): Error {
    const where = `${m.region} (IOVA 0x${m.iova.toString(16)}, ${fmtBytes(m.size)})`;
    if (isSyscallError(e, 'ENOMEM')) {
      return new VfioSetupError(`VFIO_IOMMU_MAP_DMA of ${where} failed with ENOMEM: the locked-memory limit (${fmtBytes(memlockLimit())}) ` +
        `is too low for pinning guest RAM, or the DMA entry limit was reached. fix: ulimit -l unlimited (or CAP_IPC_LOCK)`, { cause: e });
    }
    return new VfioSetupError(`VFIO_IOMMU_MAP_DMA of ${where} failed: ${(e as Error).message}`, { cause: e });
  }

  regionDel(s: Section): void {
    const m = this.mappings.get(s);
    if (!m) return;
    this.mappings.delete(s);
    try {
      this.stats.unmapCalls++;
      native().vfioIommuUnmapDma(this.fd, { iova: m.iova, size: m.size, flags: 0 });
    } catch (e) {
      this.pendingErrors.push(new VfioSetupError(`VFIO_IOMMU_UNMAP_DMA of ${m.region} failed: ${(e as Error).message}`, { cause: e }));
    }
  }

  /** Throws (once) the errors that listener callbacks collected. */
  throwPending(): void {
    if (!this.pendingErrors.length) return;
    const errs = this.pendingErrors.splice(0);
    throw errs.length === 1 ? errs[0]! : new AggregateError(errs, errs.map((e) => e.message).join('; '));
  }

  /** Whether [iova, iova+size) lies inside one of our mappings (tests check DMA targets). */
  covers(iova: number, size: number): boolean {
    for (const m of this.mappings.values()) if (iova >= m.iova && iova + size <= m.iova + m.size) return true;
    return false;
  }

  /** Unmaps everything (UNMAP_FLAG_ALL where the kernel has it) and detaches from the address space. */
  detach(): void {
    if (!this.space) return;
    const space = this.space;
    this.space = undefined;
    if (this.unmapAll && this.mappings.size) {
      native().vfioIommuUnmapDma(this.fd, { iova: 0, size: 0, flags: native().constants.VFIO_DMA_UNMAP_FLAG_ALL! });
      this.stats.unmapCalls++;
      this.mappings.clear();
    }
    space.removeListener(this); // per-section unmaps for whatever is left
    this.pendingErrors.length = 0;
  }

  close(): void {
    this.detach();
    closeSync(this.fd);
  }
}
