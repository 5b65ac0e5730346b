// A VFIO group (/dev/vfio/N): the unit of ownership. It must be viable (every member bound to
// vfio-pci or driverless) and attached to a container before its devices can be opened.
import { closeSync, openSync, existsSync } from 'node:fs';
import { native } from '../native.js';
import { VfioSetupError, notViableError } from './sysfs.js';
import type { VfioContainer } from './container.js';

export class VfioGroup {
  container: VfioContainer | undefined;
  /** Devices opened from this group (reference count). */
  readonly devices = new Set<string>();

  private constructor(
    readonly id: number,
    readonly fd: number,
  ) {}

  /** Opens /dev/vfio/<id>, or takes an fd passed by a manager: either way the group closes it. */
  static open(id: number, passedFd?: number, wanted = `group ${id}`): VfioGroup {
    let fd = passedFd;
    if (fd === undefined) {
      const path = `/dev/vfio/${id}`;
      if (!existsSync(path)) throw new VfioSetupError(`${path} does not exist: is ${wanted} bound to vfio-pci?`);
      try {
        fd = openSync(path, 'r+');
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EACCES' || code === 'EPERM') {
          throw new VfioSetupError(`no permission to open ${path} (${code})`, {
            cause: e,
            fix: `give your user the group device (chown $USER ${path}) or have a manager pass its fd ('tsvmm manager')`,
          });
        }
        if (code === 'EBUSY')
          throw new VfioSetupError(`${path} is busy: another process (another VMM?) has the group open`, { cause: e });
        throw new VfioSetupError(`cannot open ${path}: ${(e as Error).message}`, { cause: e });
      }
    }
    const g = new VfioGroup(id, fd);
    try {
      const st = native().vfioGroupGetStatus(fd);
      if (!(st.flags & native().constants.VFIO_GROUP_FLAGS_VIABLE)) throw notViableError(id, wanted);
    } catch (e) {
      closeSync(fd); // a passed fd was handed over to the group: it is closed on failure too
      throw e;
    }
    return g;
  }

  /** Tries to join the container; false when the kernel refuses (incompatible IOMMU domain). */
  tryJoin(container: VfioContainer): boolean {
    try {
      native().vfioGroupSetContainer(this.fd, container.fd);
    } catch {
      return false;
    }
    this.container = container;
    container.groups.add(this.id);
    return true;
  }

  openDevice(name: string): number {
    try {
      return native().vfioGroupGetDeviceFd(this.fd, name);
    } catch (e) {
      throw new VfioSetupError(
        `VFIO_GROUP_GET_DEVICE_FD(${name}) on group ${this.id} failed: ${(e as Error).message}` +
          ((e as { code?: string }).code === 'EBUSY' ? ' (the device is already open elsewhere)' : ''),
        { cause: e },
      );
    }
  }

  /** Leaves the container; the caller releases the container when its last group left. */
  leave(): void {
    if (!this.container) return;
    try {
      native().vfioGroupUnsetContainer(this.fd);
    } catch {
      /* closing the fd unsets it too */
    }
    this.container.groups.delete(this.id);
    this.container = undefined;
  }

  close(): void {
    this.leave();
    closeSync(this.fd);
  }
}
