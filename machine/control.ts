// What front ends (the command layer, QMP, the library, the CLI) may do with a machine: run it,
// pause and resume it, reset it, press its power button, add and remove devices, look at it, and
// hear what happens in it. Nothing else of the machine is reachable from outside machine/.
import type { ViommuInspect } from '../core/vfio/viommu.js';
import type { VcpuStop } from '../core/kvm/exit-channel.js';
import type { PassedFd } from '../core/fdpass.js';
import type { DeviceSpec } from './config/config.js';
import type { ByteSink, ByteSource } from './migration/stream.js';
import type { MigrationProgress } from './migration/machine-state.js';

/** The run state: QMP query-status's status. */
export type MachineStatus = 'running' | 'paused' | 'internal-error';

/** Who ended the machine (QEMU's ShutdownCause names): the guest (or a vCPU failing), or the host. */
export type ExitCause = 'guest' | 'host-signal' | 'host-ui' | 'host-qmp-quit';

export interface MachineResult {
  status: number;
  /** Why the machine stopped, in words. */
  reason: string;
  cause: ExitCause;
  stops: VcpuStop[];
}

/** What happens in a machine that no one asked for, or that ends later than the request. */
export type MachineEvent =
  /** A device reported an unrecoverable error: the machine paused until resume(). */
  | { type: 'stopped'; reason: 'internal-error' }
  /** A device left the machine (after the guest's eject, or a surprise removal). */
  | { type: 'device-deleted'; device: string }
  /** The host asked for a device back (VFIO request): the guest is asked to eject it. */
  | { type: 'device-requested'; device: string; host: string }
  /** VFIO reported an unrecoverable error of a device (a 'stopped' follows). */
  | { type: 'device-error'; device: string; host: string };
export type MachineListener = (event: MachineEvent) => void;

/** A device to add: the machine's device spec, with its id. */
export type DeviceAddSpec = DeviceSpec & { id: string };

/** One PCI device as the guest sees it (QMP query-pci, the library's inspect()). */
export interface PciDeviceState {
  slot: number;
  function: number;
  id: string;
  vendor: number;
  device: number;
  /** Class code, subclass and programming interface (24 bits). */
  class: number;
  headerType: number;
  subsystemVendor: number;
  subsystem: number;
  interruptLine: number;
  interruptPin: number;
  /** The host device behind it (assigned devices). */
  host?: string;
  /** Behind the vIOMMU (its DMA goes where the guest's domains say). */
  iommu?: boolean;
  bars: {
    index: number;
    type: 'io' | 'mem32' | 'mem64' | 'rom';
    address: number | undefined;
    size: number;
    prefetchable: boolean;
  }[];
}

export interface MachineDevices {
  /** Every device on the PCI bus, the host bridge first. */
  list(): PciDeviceState[];
  /** Hot-plugs a device; `fds` (group, cdev, iommufd) are the machine's from here, also on failure. */
  add(spec: DeviceAddSpec, fds?: PassedFd[]): void;
  /** Unplugs a device (with ACPI the guest is asked, and 'device-deleted' follows its eject);
   *  false when no device has that id. */
  remove(id: string): boolean;
  /** Has VFIO signal a device's request or error notifier through its loopback; false when no
   *  device has that id. */
  signalNotifier(id: string, which: 'request' | 'error'): boolean;
}

/** A read-only snapshot (the library's inspect()). */
export interface MachineInspection {
  memory: { size: number; backing: string };
  memslots: { slot: number; guestAddr: number; size: number; readonly: boolean }[];
  dmaMappings: { iova: number; size: number; readonly: boolean; region: string }[];
  pinnedBytes: number;
  exits: { io: number; mmio: number; total: number };
  interrupts: { device: string; host: string; msi: number; msix: number; intx: number }[];
  pciDevices: {
    slot: number;
    id: string;
    vendor: number;
    device: number;
    class: number;
    host?: string;
    /** Behind the vIOMMU. */
    iommu?: boolean;
    bars: { index: number; type: 'io' | 'mem32' | 'mem64' | 'rom'; address: number | undefined; size: number }[];
  }[];
  vcpus: number;
  /** The vIOMMU (config.iommu): bypass, the guest's domains with their endpoints and mapping counts, requests by type. */
  viommu?: {
    bypass: boolean;
    domains: { id: number; bypass: boolean; endpoints: number[]; mappings: number }[];
    requests: Record<string, number>;
    refused: number;
    /** The host side: the domains as DMA address spaces (endpoints, mapping counts), host groups, counters. */
    host: ViommuInspect;
  };
}

/** The one interface front ends have to a machine. */
export interface MachineControl {
  readonly name: string;
  /** Runs the guest; resolves when the machine ends, however it does. */
  run(): Promise<MachineResult>;
  status(): MachineStatus;
  /** Pauses every vCPU; false when it was paused already. */
  pause(): boolean;
  /** Resumes (also after a device error paused it); false when it was running already. */
  resume(): boolean;
  /** vCPUs, irqchip and devices to their power-on state, the guest image loaded again. */
  reset(): Promise<void>;
  /** The ACPI power button; false when the guest has no ACPI to hear it. */
  powerdown(): boolean;
  /** Ends the machine with a status (the first caller wins). */
  exit(status: number, reason: string, cause?: Exclude<ExitCause, 'guest'>): void;
  readonly devices: MachineDevices;
  inspect(): MachineInspection;
  /** Adds a listener; returns what removes it. */
  on(listener: MachineListener): () => void;
  /** Releases every fd and mapping, whatever happened (idempotent). */
  close(): void;
  /** Why a snapshot or migration is refused now (one line per device that cannot migrate). */
  migrationBlockers(): string[];
  /** Writes the machine's state to `sink` (live: RAM first while the guest runs); the vCPUs
   *  stop (onStop says when) and stay stopped. */
  saveState(
    sink: ByteSink,
    opts?: {
      progress?: (p: MigrationProgress) => void;
      cancelled?: () => boolean;
      live?: boolean;
      onStop?: () => void;
      /** Each RAM pass as it starts (numbered from 1). */
      onPass?: (pass: number) => void;
      downtimeLimitMs?: number;
      maxBandwidth?: number;
    },
  ): Promise<MigrationProgress>;
  /** Loads a saved state into a machine that has not run yet. */
  loadState(source: ByteSource, opts?: { progress?: (p: MigrationProgress) => void }): Promise<MigrationProgress>;
}
