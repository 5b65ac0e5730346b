// A VFIO container (/dev/vfio/vfio), the legacy model's IOMMU address space shared by its groups.
// Its DMA listener (dma.ts) maps guest RAM with VFIO_IOMMU_MAP_DMA.
import { closeSync, openSync, existsSync } from 'node:fs';
import { native, isSyscallError } from '../native.js';
import { VfioSetupError } from './sysfs.js';
import { DmaListener, explainMapError, type DmaMapping } from './dma.js';

export type { DmaMapping, IovaRange } from './dma.js';

export class VfioContainer extends DmaListener {
  readonly name = 'vfio-dma';
  iommuType = 0;
  /** Groups using this container (reference count). */
  readonly groups = new Set<number>();
  /** A container of one group behind the vIOMMU: no other group joins it. */
  isolated = false;
  /** DMA_AVAIL as read when the IOMMU was set, before any mapping: the container's entry limit. */
  dmaLimit: number | undefined;
  private unmapAll = false;

  private constructor(readonly fd: number) {
    super();
  }

  static open(path = '/dev/vfio/vfio'): VfioContainer {
    if (!existsSync(path))
      throw new VfioSetupError(`${path} does not exist: the vfio modules are not loaded`, {
        fix: 'load them (modprobe vfio-pci), with the IOMMU enabled (intel_iommu=on / amd_iommu=on)',
      });
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
    const types = [c.VFIO_TYPE1v2_IOMMU!, c.VFIO_TYPE1_IOMMU];
    const type = types.find((t) => n.vfioCheckExtension(this.fd, t) > 0);
    if (type === undefined)
      throw new VfioSetupError(
        'the VFIO container supports neither type1v2 nor type1 IOMMU (is vfio_iommu_type1 loaded?)',
      );
    n.vfioSetIommu(this.fd, type);
    this.iommuType = type;
    this.unmapAll = n.vfioCheckExtension(this.fd, c.VFIO_UNMAP_ALL) > 0;
    const info = n.vfioIommuGetInfo(this.fd);
    if (info.iovaPgsizes) {
      const pg = info.iovaPgsizes & -info.iovaPgsizes; // lowest set bit
      this.minPage = Math.max(4096, Number(pg));
    }
    if (info.iovaRanges?.length)
      this.iovaRanges = info.iovaRanges.map((r) => ({ start: Number(r.start), end: Number(r.end) }));
    if (info.dmaAvail !== undefined) this.dmaAvail = this.dmaLimit = info.dmaAvail;
  }

  protected mapRange(m: DmaMapping): void {
    const n = native();
    const c = n.constants;
    const flags = c.VFIO_DMA_MAP_FLAG_READ | (m.readonly ? 0 : c.VFIO_DMA_MAP_FLAG_WRITE);
    const req = { vaddr: m.vaddr, iova: m.iova, size: m.size, flags };
    try {
      n.vfioIommuMapDma(this.fd, req);
    } catch (e) {
      if (!isSyscallError(e, 'EBUSY') && !isSyscallError(e, 'EEXIST'))
        throw explainMapError('VFIO_IOMMU_MAP_DMA', e, m);
      // Something is still mapped there (a stale or overlapping mapping): unmap and retry once.
      this.stats.busyRetries++;
      n.vfioIommuUnmapDma(this.fd, { iova: m.iova, size: m.size, flags: 0 });
      n.vfioIommuMapDma(this.fd, req);
    }
  }

  protected unmapRange(m: DmaMapping): void {
    native().vfioIommuUnmapDma(this.fd, { iova: m.iova, size: m.size, flags: 0 });
  }

  protected unmapEverything(): boolean {
    if (!this.unmapAll) return false;
    native().vfioIommuUnmapDma(this.fd, { iova: 0, size: 0, flags: native().constants.VFIO_DMA_UNMAP_FLAG_ALL });
    return true;
  }

  /** Whether VFIO_DMA_UNMAP_FLAG_ALL empties it in one call. */
  get canUnmapAll(): boolean {
    return this.unmapAll;
  }

  /** One MAP_DMA of a vIOMMU domain's piece (no retry: the domain never maps over itself). */
  mapRaw(iova: number, size: number, vaddr: bigint, read: boolean, write: boolean): void {
    const n = native();
    const c = n.constants;
    const flags = (read ? c.VFIO_DMA_MAP_FLAG_READ : 0) | (write ? c.VFIO_DMA_MAP_FLAG_WRITE : 0);
    n.vfioIommuMapDmaAt(this.fd, iova, size, vaddr, flags);
  }

  /** Unmaps every mapping wholly inside [iova, iova+size); returns the bytes the kernel unmapped. */
  unmapRaw(iova: number, size: number): number {
    return native().vfioIommuUnmapDmaAt(this.fd, iova, size);
  }

  /** Drops every mapping in one call; false when the kernel cannot (no VFIO_UNMAP_ALL). */
  unmapAllRaw(): boolean {
    return this.unmapEverything();
  }

  close(): void {
    this.detach();
    closeSync(this.fd);
  }
}
