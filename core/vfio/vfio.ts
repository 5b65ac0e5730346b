// The VFIO state of one VM behind one interface, whichever model each device uses: the legacy
// container/group backend (legacy.ts) or the device-centric iommufd backend (iommufd.ts). Both
// map guest RAM with the same DMA listener (dma.ts), and the vfio-pci model sees only a
// VfioDevice. Assigned files (group fds, or device cdev fds) are registered with the KVM-VFIO
// pseudo device so KVM knows about non-coherent DMA.
import { closeSync, existsSync } from 'node:fs';
import { native } from '../native.js';
import { PassedFds, type PassedFd } from '../fdpass.js';
import type { KvmVm } from '../kvm/vm.js';
import type { DmaListener, DmaMapping } from './dma.js';
import { LegacyVfio, CONTAINER_PATH } from './legacy.js';
import { Iommufd, IOMMU_PATH, type IommufdIoas } from './iommufd.js';
import type { VfioGroup } from './group.js';
import { VfioDevice } from './device.js';
import { VfioViommu } from './viommu.js';
import { cdevOf, findHostDevice, VfioSetupError, type HostDevice } from './sysfs.js';

export type VfioBackendKind = 'legacy' | 'iommufd';
export type VfioBackendChoice = VfioBackendKind | 'auto';

export interface AssignedDevice {
  host: HostDevice;
  device: VfioDevice;
  backend: VfioBackendKind;
  /** legacy: the device's group. */
  group?: VfioGroup;
  /** iommufd: the IOAS the device is attached to, its cdev and its iommufd device id. */
  ioas?: IommufdIoas;
  cdev?: string;
  devid?: number;
  /** Opened to go behind the vIOMMU (legacy: in a container of its own group). */
  viommu?: boolean;
}

export interface VfioDeviceSpec {
  host?: string;
  sysfsdev?: string;
  cdev?: string;
  group?: number;
  backend?: VfioBackendChoice;
  /** Behind the vIOMMU: its DMA follows the guest's domains (viommu.ts) instead of all RAM 1:1. */
  viommu?: boolean;
}

/** VFIO fds passed with a device_add, by what they open (PassedFds holds them from there). */
export interface VfioPassedFds {
  /** VFIO group fds by group number (legacy). */
  groups?: Map<number, number>;
  /** /dev/iommu. */
  iommufd?: number;
  /** Device cdev fds by device name (BDF or mdev UUID). */
  cdevs?: Map<string, number>;
}

/** The fds of a VfioPassedFds as passed-fd descriptions (named after what they open). */
export function vfioPassedFdList(fds: VfioPassedFds): PassedFd[] {
  return [
    ...[...(fds.groups ?? [])].map(
      ([group, fd]): PassedFd => ({ name: `vfio-group-${group}`, kind: 'vfio-group', group, fd }),
    ),
    ...[...(fds.cdevs ?? [])].map(
      ([device, fd]): PassedFd => ({ name: `vfio-cdev-${device}`, kind: 'vfio-cdev', device, fd }),
    ),
    ...(fds.iommufd !== undefined ? [{ name: 'iommufd', kind: 'iommufd', fd: fds.iommufd } as PassedFd] : []),
  ];
}

export interface VfioOptions {
  /** The VM's default (a device's own "backend" wins). Default auto. */
  backend?: VfioBackendChoice;
  /** Fds a manager passed: groups, cdevs and /dev/iommu are taken from there as devices need them. */
  passed?: PassedFds;
  containerPath?: string;
  iommuPath?: string;
  /** Where the vIOMMU's host side logs refusals worth an operator's eye (default stderr). */
  log?: (line: string) => void;
}

/** Available (true) or why not. */
export interface BackendAvailability {
  legacy: true | string;
  iommufd: true | string;
}

/**
 * Which backend a device uses. An explicit choice must be available; auto takes legacy when both
 * are (QEMU's default: iommufd only when asked), else whichever one is.
 */
export function chooseBackend(want: VfioBackendChoice, have: BackendAvailability, name: string): VfioBackendKind {
  if (want !== 'auto') {
    const why = have[want];
    if (why !== true)
      throw new VfioSetupError(
        `${name}: the ${want} VFIO backend is not available: ${why}` +
          (have[want === 'legacy' ? 'iommufd' : 'legacy'] === true
            ? `. The ${want === 'legacy' ? 'iommufd' : 'legacy'} backend is`
            : ''),
        have[want === 'legacy' ? 'iommufd' : 'legacy'] === true ? { fix: 'use "backend": "auto"' } : {},
      );
    return want;
  }
  if (have.legacy === true) return 'legacy';
  if (have.iommufd === true) return 'iommufd';
  throw new VfioSetupError(
    `${name}: VFIO is not available on this host.\n  - legacy (container/group): ${have.legacy}\n  - iommufd (device cdev): ${have.iommufd}`,
    {
      fix: 'load vfio-pci (modprobe vfio-pci) with the IOMMU enabled (intel_iommu=on / amd_iommu=on) and bind the device to vfio-pci',
    },
  );
}

/** What each model needs: legacy the container device (the group it opens itself, or was
 *  passed); iommufd /dev/iommu and the device's cdev (or passed fds for them). */
export function backendAvailability(
  host: HostDevice,
  spec: VfioDeviceSpec,
  passed: PassedFds = new PassedFds(),
  containerPath = CONTAINER_PATH,
  iommuPath = IOMMU_PATH,
): BackendAvailability {
  const legacy =
    passed.has({ kind: 'vfio-group', group: host.group }) || existsSync(containerPath)
      ? true
      : `${containerPath} does not exist (a kernel without CONFIG_VFIO_CONTAINER, or vfio is not loaded)`;
  let iommufd: true | string = true;
  if (!passed.has({ kind: 'iommufd' }) && !existsSync(iommuPath))
    iommufd = `${iommuPath} does not exist (a kernel without CONFIG_IOMMUFD)`;
  else if (!passed.has({ kind: 'vfio-cdev', device: host.name }) && !spec.cdev && !cdevOf(host.sysfs))
    iommufd = `${host.name} has no VFIO device cdev (a kernel without CONFIG_VFIO_DEVICE_CDEV)`;
  return { legacy, iommufd };
}

/** The backend for a device: its own choice, else the VM's; with auto, a passed fd decides
 *  (a passed cdev means iommufd, a passed group legacy), else chooseBackend's rule. */
export function resolveBackend(
  host: HostDevice,
  spec: VfioDeviceSpec,
  vmDefault: VfioBackendChoice,
  passed: PassedFds = new PassedFds(),
  containerPath = CONTAINER_PATH,
  iommuPath = IOMMU_PATH,
): VfioBackendKind {
  let want = spec.backend ?? 'auto';
  if (want === 'auto')
    want = passed.has({ kind: 'vfio-cdev', device: host.name })
      ? 'iommufd'
      : passed.has({ kind: 'vfio-group', group: host.group })
        ? 'legacy'
        : vmDefault;
  return chooseBackend(want, backendAvailability(host, spec, passed, containerPath, iommuPath), host.name);
}

export class Vfio {
  private legacyBackend: LegacyVfio | undefined;
  private iommufdBackend: Iommufd | undefined;
  private readonly assigned = new Set<AssignedDevice>();
  private kvmDeviceFd: number | undefined;
  private viommuHost: VfioViommu | undefined;
  private readonly passed: PassedFds;
  private readonly containerPath: string;
  private readonly iommuPath: string;

  constructor(
    private readonly vm: KvmVm,
    private readonly opts: VfioOptions = {},
  ) {
    this.passed = opts.passed ?? new PassedFds();
    this.containerPath = opts.containerPath ?? CONTAINER_PATH;
    this.iommuPath = opts.iommuPath ?? IOMMU_PATH;
  }

  /** Why fds passed at run time (QMP getfd before device_add) cannot be used here, if they
   *  cannot: a second fd for a group or cdev this VM has, a second iommufd. */
  refusePassed(fds: readonly PassedFd[]): string | undefined {
    for (const p of fds) {
      if (
        p.kind === 'vfio-group' &&
        (this.passed.has({ kind: 'vfio-group', group: p.group }) || this.groups.has(p.group!))
      )
        return `VFIO group ${p.group} is already open in this VM: pass no second fd for it`;
      if (p.kind === 'vfio-cdev' && this.passed.has({ kind: 'vfio-cdev', device: p.device }))
        return `a cdev fd for ${p.device} was already passed`;
      if (p.kind === 'iommufd' && (this.iommufdBackend || this.passed.has({ kind: 'iommufd' })))
        return 'this VM already has an iommufd';
    }
    return undefined;
  }

  /** Legacy groups in use, by number (the machine adopts passed group fds through them). */
  get groups(): ReadonlyMap<number, VfioGroup> {
    return this.legacyBackend?.groups ?? new Map();
  }
  get iommufd(): Iommufd | undefined {
    return this.iommufdBackend;
  }

  /** The devices this VM holds, in assignment order (a migration asks each for its state or its blocker). */
  get devices(): readonly AssignedDevice[] {
    return [...this.assigned];
  }

  /** The vIOMMU's host side (made on first use): devices opened with `viommu: true` are added to it as endpoints. */
  get viommu(): VfioViommu {
    return (this.viommuHost ??= new VfioViommu(this.vm.memory, this.opts.log ? { log: this.opts.log } : {}));
  }

  /** Every DMA listener (containers and IOASes). */
  get listeners(): DmaListener[] {
    return [...(this.legacyBackend?.containers ?? []), ...(this.iommufdBackend?.ioases ?? [])];
  }

  dmaMappings(): DmaMapping[] {
    return this.listeners.flatMap((l) => [...l.mappings.values()]);
  }

  /** Opens a host device for assignment on its backend: DMA mappings in place, device fd open. */
  open(spec: VfioDeviceSpec): AssignedDevice {
    const host = findHostDevice(spec);
    if ([...this.assigned].some((a) => a.host.name === host.name))
      throw new VfioSetupError(`${host.name} is already assigned to this VM`);
    const mate = [...this.assigned].find((a) => a.host.group === host.group && !!a.viommu !== !!spec.viommu);
    if (mate)
      throw new VfioSetupError(
        `${host.name} and ${mate.host.name} share IOMMU group ${host.group} (one address space), but ${mate.host.name} is ` +
          `${mate.viommu ? '' : 'not '}behind the vIOMMU`,
        { fix: `put every device of group ${host.group} behind the vIOMMU ("iommu": true), or none` },
      );
    const backend = resolveBackend(
      host,
      spec,
      this.opts.backend ?? 'auto',
      this.passed,
      this.containerPath,
      this.iommuPath,
    );
    const a = backend === 'legacy' ? this.openLegacy(host, !!spec.viommu) : this.openIommufd(host, spec);
    if (spec.viommu) a.viommu = true;
    this.assigned.add(a);
    return a;
  }

  private openLegacy(host: HostDevice, isolated: boolean): AssignedDevice {
    this.legacyBackend ??= new LegacyVfio(
      this.vm.memory,
      (fd, add) => this.kvmFile(fd, add),
      (group) => this.passed.take({ kind: 'vfio-group', group }),
      this.containerPath,
    );
    const { group, fd } = this.legacyBackend.openDevice(host, isolated);
    let device: VfioDevice;
    try {
      device = new VfioDevice(host.name, fd);
    } catch (e) {
      closeSync(fd);
      this.legacyBackend.releaseDevice(host.name, group);
      throw e;
    }
    return { host, device, backend: 'legacy', group };
  }

  private openIommufd(host: HostDevice, spec: VfioDeviceSpec): AssignedDevice {
    // A passed /dev/iommu or cdev is taken: the backend or device closes it, even on failure.
    this.iommufdBackend ??= Iommufd.open(this.passed.take({ kind: 'iommufd' }), this.iommuPath);
    const ctx = this.iommufdBackend;
    const cdev = spec.cdev ?? cdevOf(host.sysfs) ?? `/dev/vfio/devices/(none for ${host.name})`;
    const passedFd = this.passed.take({ kind: 'vfio-cdev', device: host.name });
    const join = spec.viommu ? this.viommuHost?.groupJoin(host.group) : undefined;
    const opened = ctx.openDevice(host, cdev, passedFd, (ioas) => ioas.attach(this.vm.memory), join);
    let device: VfioDevice | undefined;
    try {
      device = new VfioDevice(host.name, opened.device);
      this.kvmFile(opened.device, true);
    } catch (e) {
      ctx.closeDevice(host.name, opened.device, opened.ioas);
      if (device) device.close();
      else closeSync(opened.device);
      throw e;
    }
    return { host, device, backend: 'iommufd', ioas: opened.ioas, cdev, devid: opened.devid };
  }

  private kvmFile(fd: number, add: boolean): void {
    const c = native().constants;
    if (this.kvmDeviceFd === undefined) {
      if (!add) return;
      this.kvmDeviceFd = native().kvmCreateDevice(this.vm.fd, c.KVM_DEV_TYPE_VFIO);
    }
    // KVM_DEV_VFIO_FILE_ADD/DEL (alias of the _GROUP_ names): a group fd or a device cdev fd.
    native().kvmSetDeviceAttr(
      this.kvmDeviceFd,
      c.KVM_DEV_VFIO_GROUP,
      add ? c.KVM_DEV_VFIO_GROUP_ADD : c.KVM_DEV_VFIO_GROUP_DEL,
      fd,
    );
  }

  /** Closes a device; on legacy its group and container go when their last user does, on
   *  iommufd its IOAS goes with its last device. */
  release(a: AssignedDevice): void {
    if (!this.assigned.delete(a)) return;
    const ep = a.viommu ? this.viommuHost?.endpointOf(a) : undefined;
    if (ep !== undefined) this.viommuHost!.removeEndpoint(ep);
    if (a.backend === 'legacy') {
      a.device.close();
      this.legacyBackend!.releaseDevice(a.host.name, a.group!);
    } else {
      try {
        this.kvmFile(a.device.fd, false);
      } catch {
        /* the VM may be going away */
      }
      this.iommufdBackend!.closeDevice(a.host.name, a.device.fd, a.ioas!);
      a.device.close();
    }
  }

  /** Whether some DMA listener maps [iova, iova+size) (tests check a device's DMA target). */
  covers(iova: number, size: number): boolean {
    return this.listeners.some((l) => l.covers(iova, size));
  }

  close(): void {
    for (const a of [...this.assigned]) this.release(a);
    this.viommuHost?.close(); // its domain IOASes go before the iommufd they live in
    this.viommuHost = undefined;
    this.legacyBackend?.close();
    this.iommufdBackend?.close();
    this.legacyBackend = this.iommufdBackend = undefined;
    if (this.kvmDeviceFd !== undefined) closeSync(this.kvmDeviceFd);
    this.kvmDeviceFd = undefined;
  }
}
