// virtio-iommu requests as Linux's driver lays them out (include/uapi/linux/virtio_iommu.h): the
// device's unit tests and the in-process request bench (bench/viommu-inprocess.ts) send these.
import {
  VIRTIO_IOMMU_T_ATTACH,
  VIRTIO_IOMMU_T_DETACH,
  VIRTIO_IOMMU_T_MAP,
  VIRTIO_IOMMU_T_UNMAP,
  VIRTIO_IOMMU_T_PROBE,
} from '../../hw/virtio/iommu.js';

export const req = {
  attach: (domain: number, ep: number, flags = 0) => {
    const b = new Uint8Array(20);
    const v = new DataView(b.buffer);
    b[0] = VIRTIO_IOMMU_T_ATTACH;
    v.setUint32(4, domain, true);
    v.setUint32(8, ep, true);
    v.setUint32(12, flags, true);
    return b;
  },
  detach: (domain: number, ep: number) => {
    const b = new Uint8Array(20);
    const v = new DataView(b.buffer);
    b[0] = VIRTIO_IOMMU_T_DETACH;
    v.setUint32(4, domain, true);
    v.setUint32(8, ep, true);
    return b;
  },
  map: (domain: number, start: bigint | number, end: bigint | number, phys: bigint | number, flags = 3) => {
    const b = new Uint8Array(36);
    const v = new DataView(b.buffer);
    b[0] = VIRTIO_IOMMU_T_MAP;
    v.setUint32(4, domain, true);
    v.setBigUint64(8, BigInt(start), true);
    v.setBigUint64(16, BigInt(end), true);
    v.setBigUint64(24, BigInt(phys), true);
    v.setUint32(32, flags, true);
    return b;
  },
  unmap: (domain: number, start: bigint | number, end: bigint | number) => {
    const b = new Uint8Array(28);
    const v = new DataView(b.buffer);
    b[0] = VIRTIO_IOMMU_T_UNMAP;
    v.setUint32(4, domain, true);
    v.setBigUint64(8, BigInt(start), true);
    v.setBigUint64(16, BigInt(end), true);
    return b;
  },
  probe: (ep: number) => {
    const b = new Uint8Array(72);
    b[0] = VIRTIO_IOMMU_T_PROBE;
    new DataView(b.buffer).setUint32(4, ep, true);
    return b;
  },
};
