// The iommufd backend: the device-centric model. A device is opened through its cdev
// (/dev/vfio/devices/vfioN) and bound to an iommufd (/dev/iommu); its DMA goes through an IO
// address space (IOAS) that the same memory listener as the legacy container fills, here with
// IOMMU_IOAS_MAP. Group isolation is the kernel's business: binding a device whose group-mates
// are in use elsewhere fails, and we explain the refusal.
import { closeSync, existsSync, openSync } from 'node:fs';
import { native, isSyscallError } from '../native.js';
import { DmaListener, explainMapError, type DmaMapping } from './dma.js';
import { VfioSetupError, groupMembers, type HostDevice } from './sysfs.js';

export const IOMMU_PATH = '/dev/iommu';
const ALL = 0xffff_ffff_ffff_ffffn;

/**
 * IOMMU_OPTION_RLIMIT_MODE=1 on an iommufd: pins are charged to the mapping process's mm (VmPin)
 * rather than its user, as type1 charges VmLck, so a per-process memlock limit means what it says.
 * Setting it needs CAP_SYS_RESOURCE (a manager sets it before passing the fd). Returns true when
 * the mode is (now) per-process, else the error (EPERM: the user's locked_vm is charged instead).
 */
export function setPerProcessAccounting(iommufd: number): true | Error {
  const n = native(),
    c = n.constants;
  try {
    if (n.iommuOption(iommufd, { option: c.IOMMU_OPTION_RLIMIT_MODE, op: c.IOMMU_OPTION_OP_GET }) !== 1n)
      n.iommuOption(iommufd, { option: c.IOMMU_OPTION_RLIMIT_MODE, op: c.IOMMU_OPTION_OP_SET, val64: 1 });
    return true;
  } catch (e) {
    return e as Error;
  }
}

/** One IOAS: a DMA listener over guest memory, shared by the devices attached to it. */
export class IommufdIoas extends DmaListener {
  readonly name = 'iommufd-dma';
  /** Devices attached (reference count). */
  readonly devices = new Set<string>();

  constructor(
    readonly iommufd: number,
    readonly id: number,
  ) {
    super();
  }

  /** The IOAS's allowed IOVAs shrink as devices with reserved regions attach: read them again. */
  refreshRanges(): void {
    const r = native().iommuIoasIovaRanges(this.iommufd, this.id);
    if (r.ranges.length)
      this.iovaRanges = r.ranges.map((x) => ({
        start: Number(x.start),
        end: x.last >= BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(x.last),
      }));
    this.minPage = Math.max(4096, Number(r.outIovaAlignment));
  }

  protected mapRange(m: DmaMapping): void {
    const n = native();
    const c = n.constants;
    const req = {
      ioasId: this.id,
      userVa: m.vaddr,
      length: m.size,
      iova: m.iova,
      flags: c.IOMMU_IOAS_MAP_FIXED_IOVA | c.IOMMU_IOAS_MAP_READABLE | (m.readonly ? 0 : c.IOMMU_IOAS_MAP_WRITEABLE),
    };
    try {
      n.iommuIoasMap(this.iommufd, req);
    } catch (e) {
      if (!isSyscallError(e, 'EEXIST') && !isSyscallError(e, 'EBUSY')) throw explainMapError('IOMMU_IOAS_MAP', e, m);
      this.stats.busyRetries++;
      n.iommuIoasUnmap(this.iommufd, { ioasId: this.id, iova: m.iova, length: m.size });
      n.iommuIoasMap(this.iommufd, req);
    }
  }

  protected unmapRange(m: DmaMapping): void {
    native().iommuIoasUnmap(this.iommufd, { ioasId: this.id, iova: m.iova, length: m.size });
  }

  protected unmapEverything(): boolean {
    native().iommuIoasUnmap(this.iommufd, { ioasId: this.id, iova: 0, length: ALL });
    return true;
  }

  /** One IOAS_MAP of a vIOMMU domain's piece (no retry: the domain never maps over itself). */
  mapRaw(iova: number, size: number, vaddr: bigint, read: boolean, write: boolean): void {
    const n = native();
    const c = n.constants;
    const flags = (read ? c.IOMMU_IOAS_MAP_READABLE : 0) | (write ? c.IOMMU_IOAS_MAP_WRITEABLE : 0);
    n.iommuIoasMapAt(this.iommufd, this.id, iova, size, vaddr, flags); // at a fixed IOVA
  }

  unmapRaw(iova: number, size: number): void {
    native().iommuIoasUnmapAt(this.iommufd, this.id, iova, size);
  }

  destroy(): void {
    this.detach();
    try {
      native().iommuDestroy(this.iommufd, this.id);
    } catch {
      /* the iommufd is closing anyway */
    }
  }
}

/**
 * A device joining a group that the vIOMMU has moved off its RAM IOAS: attach it where the group
 * is (`attachId`), count it on the group's RAM IOAS (`home`, where it returns to bypass).
 */
export interface GroupJoin {
  home: IommufdIoas;
  attachId: number;
}

export interface IommufdOpened {
  device: number;
  devid: number;
  ioas: IommufdIoas;
}

/**
 * An iommufd context: /dev/iommu (opened here or passed by a manager) and its IOASes. Devices
 * try the existing IOASes first and get a new one only when the kernel refuses (QEMU does the same).
 */
export class Iommufd {
  readonly ioases: IommufdIoas[] = [];
  /** Whether pinned pages count against this process (VmLck, like type1) rather than the user. */
  accountPerProcess = false;

  private constructor(readonly fd: number) {}

  static open(passedFd?: number, path = IOMMU_PATH): Iommufd {
    let fd = passedFd;
    if (fd === undefined) {
      if (!existsSync(path)) {
        throw new VfioSetupError(
          `${path} does not exist: this kernel has no iommufd (CONFIG_IOMMUFD) or the module is not loaded (modprobe iommufd)`,
          { fix: 'use the legacy backend ("backend": "legacy"), or a kernel with IOMMUFD and VFIO_DEVICE_CDEV' },
        );
      }
      try {
        fd = openSync(path, 'r+');
      } catch (e) {
        throw new VfioSetupError(`cannot open ${path}: ${(e as Error).message}`, {
          cause: e,
          fix: `run with access to ${path} or have a manager pass its fd ('tsvmm manager')`,
        });
      }
    }
    const ctx = new Iommufd(fd);
    ctx.accountPerProcess = setPerProcessAccounting(fd) === true;
    return ctx;
  }

  /**
   * Opens (or adopts) the device cdev, binds it to this iommufd and attaches it to an IOAS that
   * maps guest RAM. `start` maps RAM into a new IOAS once its first device is attached.
   */
  openDevice(
    host: HostDevice,
    cdev: string,
    passedFd: number | undefined,
    start: (ioas: IommufdIoas) => void,
    join?: GroupJoin,
  ): IommufdOpened {
    const fd = passedFd ?? openCdev(host, cdev);
    try {
      let devid: number;
      try {
        devid = native().vfioDeviceBindIommufd(fd, this.fd);
      } catch (e) {
        throw bindError(host, cdev, e);
      }
      const ioas = join ? this.joinGroup(host, fd, join) : this.attach(host, fd, start);
      ioas.devices.add(host.name);
      return { device: fd, devid, ioas };
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  /** Attaches to the page table the device's group-mates use now (the kernel wants one per group). */
  private joinGroup(host: HostDevice, fd: number, join: GroupJoin): IommufdIoas {
    try {
      native().vfioDeviceAttachIommufdPt(fd, join.attachId);
    } catch (e) {
      throw new VfioSetupError(
        `VFIO_DEVICE_ATTACH_IOMMUFD_PT of ${host.name} to IOAS ${join.attachId}, where its IOMMU group ${host.group} is, failed: ${(e as Error).message}`,
        { cause: e },
      );
    }
    return join.home;
  }

  private attach(host: HostDevice, fd: number, start: (ioas: IommufdIoas) => void): IommufdIoas {
    const n = native();
    let lastError: unknown;
    for (const ioas of this.ioases) {
      try {
        n.vfioDeviceAttachIommufdPt(fd, ioas.id);
        ioas.refreshRanges();
        return ioas;
      } catch (e) {
        lastError = e; // incompatible with this IOAS (e.g. its mappings hit our reserved regions): try the next
      }
    }
    const ioas = new IommufdIoas(this.fd, n.iommuIoasAlloc(this.fd));
    try {
      try {
        n.vfioDeviceAttachIommufdPt(fd, ioas.id);
      } catch (e) {
        throw new VfioSetupError(
          `VFIO_DEVICE_ATTACH_IOMMUFD_PT of ${host.name} to a new IOAS failed: ${(e as Error).message}` +
            (lastError ? ` (and the existing IOAS refused it: ${(lastError as Error).message})` : ''),
          { cause: e },
        );
      }
      ioas.refreshRanges();
      start(ioas);
    } catch (e) {
      try {
        n.vfioDeviceDetachIommufdPt(fd);
      } catch {
        /* not attached */
      }
      ioas.destroy();
      throw e;
    }
    this.ioases.push(ioas);
    return ioas;
  }

  /** Detaches and closes a device; its IOAS goes with its last device. */
  closeDevice(name: string, fd: number, ioas: IommufdIoas): void {
    try {
      native().vfioDeviceDetachIommufdPt(fd);
    } catch {
      /* closing unbinds anyway */
    }
    ioas.devices.delete(name);
    if (ioas.devices.size === 0) {
      ioas.destroy();
      const i = this.ioases.indexOf(ioas);
      if (i >= 0) this.ioases.splice(i, 1);
    }
  }

  close(): void {
    for (const ioas of this.ioases.splice(0)) ioas.destroy();
    closeSync(this.fd);
  }
}

function openCdev(host: HostDevice, cdev: string): number {
  if (!existsSync(cdev)) {
    throw new VfioSetupError(
      `${cdev} does not exist: ${host.name} has no VFIO device cdev (the kernel lacks CONFIG_VFIO_DEVICE_CDEV, ` +
        `or the device is not bound to vfio-pci)`,
      { fix: 'use the legacy backend, or bind the device to vfio-pci' },
    );
  }
  try {
    return openSync(cdev, 'r+');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM') {
      throw new VfioSetupError(`no permission to open ${cdev} (${code})`, {
        cause: e,
        fix: `give your user the device (chown $USER ${cdev}) or have a manager pass its fd ('tsvmm manager')`,
      });
    }
    throw new VfioSetupError(`cannot open ${cdev}: ${(e as Error).message}`, { cause: e });
  }
}

/** The kernel refuses a bind when the IOMMU group is not wholly ours — EPERM when another owner
 *  (an iommufd, a host driver) has claimed it, EBUSY when it is open through the legacy group
 *  device: explain who is in the group. */
function bindError(host: HostDevice, cdev: string, e: unknown): Error {
  if (isSyscallError(e, 'EPERM') || isSyscallError(e, 'EBUSY')) {
    const mates = groupMembers(host.group).filter((m) => m.name !== host.name);
    const lines = mates.map((m) => `  - ${m.name}: ${m.driver ? `bound to ${m.driver}` : 'no driver'}`);
    return new VfioSetupError(
      `VFIO_DEVICE_BIND_IOMMUFD of ${host.name} (${cdev}) was refused (${(e as { code: string }).code}): the kernel gives a device to ` +
        `iommufd only when its whole IOMMU group ${host.group} is free for it. Another process has ${host.name} or one of its group-mates ` +
        `open (through /dev/vfio/${host.group} or a device cdev), or a group-mate is bound to a host driver.` +
        (lines.length ? `\n${lines.join('\n')}` : ''),
      {
        cause: e,
        fix:
          `close the other user (see 'fuser -v /dev/vfio/${host.group} /dev/vfio/devices/*'), ` +
          `bind every group member to vfio-pci, and assign group-mates to the same VM`,
      },
    );
  }
  return new VfioSetupError(`VFIO_DEVICE_BIND_IOMMUFD of ${host.name} (${cdev}) failed: ${(e as Error).message}`, {
    cause: e,
  });
}
