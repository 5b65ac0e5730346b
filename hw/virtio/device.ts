// What a virtio device type (virtio-iommu, later net, block, …) gives the transport and gets from
// it (hw/virtio/pci.ts). The device knows its requests; the transport owns feature negotiation,
// status, the queues' set-up and interrupts.
import type { GuestMemory } from './guest-memory.js';
import type { SplitVirtqueue } from './virtqueue.js';

// Device status bits (§2.1).
export const VIRTIO_STATUS_ACKNOWLEDGE = 1,
  VIRTIO_STATUS_DRIVER = 2,
  VIRTIO_STATUS_DRIVER_OK = 4,
  VIRTIO_STATUS_FEATURES_OK = 8,
  VIRTIO_STATUS_DEVICE_NEEDS_RESET = 0x40,
  VIRTIO_STATUS_FAILED = 0x80;

// Transport feature bits (§6), as bigints: they reach beyond bit 31.
export const VIRTIO_F_INDIRECT_DESC = 1n << 28n,
  VIRTIO_F_EVENT_IDX = 1n << 29n,
  VIRTIO_F_VERSION_1 = 1n << 32n,
  VIRTIO_F_ACCESS_PLATFORM = 1n << 33n;
/** What this transport implements itself, offered with every device's own features. */
export const VIRTIO_TRANSPORT_FEATURES = VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX | VIRTIO_F_VERSION_1;

/** What a device gets from the transport while the driver runs it (DRIVER_OK). */
export interface VirtioContext {
  readonly mem: GuestMemory;
  /** The features the driver accepted. */
  readonly features: bigint;
  /** Enabled queues (undefined where the driver did not enable one). */
  readonly queues: readonly (SplitVirtqueue | undefined)[];
  /** Interrupts the driver for queue q if it wants one (after used buffers were pushed). */
  interruptQueue(q: number): void;
  /** Tells the driver the device config changed. */
  configChanged(): void;
}

export interface VirtioDevice {
  /** Virtio device ID (§5): the PCI device ID is 0x1040 + this. */
  readonly deviceId: number;
  /** Device-specific feature bits offered (the transport adds its own). */
  readonly features: bigint;
  /** Maximum size of each queue (its index is the queue index). */
  readonly queueSizes: readonly number[];
  /** Bytes of device config (§4.1.4.6). */
  readonly configSize: number;
  readConfig(offset: number, size: number): number;
  writeConfig(offset: number, size: number, value: number): void;
  /** The driver wrote FEATURES_OK with these: the device may still refuse a combination (return a reason). */
  checkFeatures?(features: bigint): string | undefined;
  /** DRIVER_OK: the device starts with these queues and features. */
  activate(ctx: VirtioContext): void;
  /** The driver notified queue q. Errors (VirtqueueError or others) make the device NEEDS_RESET. */
  queueNotify(q: number): void;
  /** Virtio reset (status 0, or the PCI function's): back to the state before the driver came. */
  reset(): void;
}
