// The meeting point of the virtio-iommu (hw/virtio/iommu.ts, the guest's side: requests, domains
// and mappings as the guest sees them) and the host side that makes them true for DMA (guest
// domains as DMA address spaces in the memory API, VFIO containers or IOASes). The device calls
// this interface only after its own checks pass, in an order the host can follow: a domain is
// created before anything is attached to or mapped in it, and destroyed only when no endpoint is
// attached. The host may refuse a call: the device then answers the guest with the refusal's
// status, logs its reason once, and changes nothing of its own state (nothing half-attached).
//
// Endpoint IDs are PCI requester IDs (bus << 8 | devfn), as the VIOT's PCI range node maps them.

/** virtio-iommu request statuses (virtio 1.2 §5.13.6). */
export const VIRTIO_IOMMU_S_OK = 0,
  VIRTIO_IOMMU_S_IOERR = 1,
  VIRTIO_IOMMU_S_UNSUPP = 2,
  VIRTIO_IOMMU_S_DEVERR = 3,
  VIRTIO_IOMMU_S_INVAL = 4,
  VIRTIO_IOMMU_S_RANGE = 5,
  VIRTIO_IOMMU_S_NOENT = 6,
  VIRTIO_IOMMU_S_FAULT = 7,
  VIRTIO_IOMMU_S_NOMEM = 8;

/** Why the host said no, and what the guest is told. */
export interface IommuRefusal {
  status:
    | typeof VIRTIO_IOMMU_S_UNSUPP
    | typeof VIRTIO_IOMMU_S_DEVERR
    | typeof VIRTIO_IOMMU_S_INVAL
    | typeof VIRTIO_IOMMU_S_RANGE
    | typeof VIRTIO_IOMMU_S_NOMEM;
  /** One line for the log: what was refused and why (the group and its members, the DMA limit, …). */
  reason: string;
}

/** undefined: done. */
export type IommuResult = IommuRefusal | undefined;

/** Where an endpoint's DMA goes: a guest domain, all of guest RAM (bypass), or nowhere. */
export type IommuTarget = { domain: number } | 'bypass' | 'blocked';

export interface IommuMapFlags {
  read: boolean;
  write: boolean;
}

export interface IommuHost {
  /** A guest domain is born: an empty DMA address space; `bypass` makes it an identity one (all of RAM). */
  createDomain(domain: number, opts: { bypass: boolean }): IommuResult;
  /** The last endpoint left the domain (or the device reset): its mappings go with it. */
  destroyDomain(domain: number): void;
  /** The endpoint's DMA goes to `target` from now on (a move between domains is one call). */
  attach(endpoint: number, target: IommuTarget): IommuResult;
  /** IOVA [iova, iova+size) → guest-physical [gpa, gpa+size) in the domain; never overlaps a mapping it has. */
  map(domain: number, iova: number, gpa: number, size: number, flags: IommuMapFlags): IommuResult;
  /** Removes every mapping the device made that lies wholly inside [iova, iova+size) (none straddles it). */
  unmap(domain: number, iova: number, size: number): void;
  /** Guest-physical ranges an endpoint must not use for DMA (the host's reserved regions), inclusive ends. */
  reservedRegions?(endpoint: number): readonly { start: number; end: number }[];
}
