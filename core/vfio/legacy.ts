// The legacy backend: containers and groups. A device is opened through its group
// (/dev/vfio/N), which must be viable and in a container; a new group joins an existing
// container when the kernel accepts it, else gets its own (QEMU's behaviour). Reference-counted
// and released in order (device → group → container).
import type { AddressSpace } from '../memory/index.js';
import { VfioContainer } from './container.js';
import { VfioGroup } from './group.js';
import { reservedRegions, VfioSetupError, type HostDevice } from './sysfs.js';

export const CONTAINER_PATH = '/dev/vfio/vfio';

export class LegacyVfio {
  readonly containers: VfioContainer[] = [];
  readonly groups = new Map<number, VfioGroup>();

  /**
   * @param kvmFile registers a group with the KVM-VFIO device (add) or removes it.
   * @param takePassedGroup a group fd a manager passed, if any: taken (owned from then on), not opened.
   */
  constructor(
    private readonly memory: AddressSpace,
    private readonly kvmFile: (fd: number, add: boolean) => void,
    private readonly takePassedGroup: (group: number) => number | undefined = () => undefined,
    private readonly containerPath = CONTAINER_PATH,
  ) {}

  /**
   * Group (viable, in a container, RAM mapped), then the device fd. `isolated`: the device is
   * behind the vIOMMU, so its group gets a container of its own (the vIOMMU changes what that
   * container maps; a group cannot change containers while its device fds are open).
   */
  openDevice(host: HostDevice, isolated = false): { group: VfioGroup; fd: number } {
    const open = this.groups.get(host.group);
    if (open && open.container && open.container.isolated !== isolated)
      throw new VfioSetupError(
        `${host.name} is in IOMMU group ${host.group}, whose other devices (${[...open.devices].join(', ')}) are ` +
          `${open.container.isolated ? '' : 'not '}behind the vIOMMU: a group has one address space`,
        { fix: `put every device of group ${host.group} behind the vIOMMU ("iommu": true), or none` },
      );
    const group = open ?? this.addGroup(host, this.takePassedGroup(host.group), isolated);
    if (group.devices.has(host.name)) throw new VfioSetupError(`${host.name} is already assigned to this VM`);
    let fd: number;
    try {
      fd = group.openDevice(host.name);
    } catch (e) {
      if (group.devices.size === 0) this.dropGroup(group);
      throw e;
    }
    group.devices.add(host.name);
    return { group, fd };
  }

  private addGroup(host: HostDevice, passedFd: number | undefined, isolated: boolean): VfioGroup {
    const group = VfioGroup.open(host.group, passedFd, host.name); // owns a passed fd now
    try {
      const reserved = reservedRegions(group.id);
      let container = isolated ? undefined : this.containers.find((c) => !c.isolated && group.tryJoin(c));
      if (container) {
        container.reserved.push(...reserved);
        const clash = [...container.mappings.values()].find((m) =>
          reserved.some((r) => m.iova <= r.end && r.start <= m.iova + m.size - 1 && r.type !== 'direct-relaxable'),
        );
        if (clash)
          throw new VfioSetupError(`group ${group.id} reserves IOVAs that guest RAM ${clash.region} already uses`);
      } else {
        container = VfioContainer.open(this.containerPath);
        container.isolated = isolated;
        try {
          if (!group.tryJoin(container))
            throw new VfioSetupError(`VFIO_GROUP_SET_CONTAINER failed for group ${group.id} on a new container`);
          container.reserved = reserved;
          container.setIommu();
          container.attach(this.memory);
        } catch (e) {
          group.leave();
          container.close();
          throw e;
        }
        this.containers.push(container);
      }
      this.kvmFile(group.fd, true);
    } catch (e) {
      this.releaseContainerOf(group);
      group.close();
      throw e;
    }
    this.groups.set(group.id, group);
    return group;
  }

  /** A device's fd is closed by its owner; its group and container go when their last user does. */
  releaseDevice(name: string, group: VfioGroup): void {
    group.devices.delete(name);
    if (group.devices.size === 0) this.dropGroup(group);
  }

  private dropGroup(group: VfioGroup): void {
    try {
      this.kvmFile(group.fd, false);
    } catch {
      /* the VM may be going away */
    }
    this.releaseContainerOf(group);
    group.close();
    this.groups.delete(group.id);
  }

  private releaseContainerOf(group: VfioGroup): void {
    const c = group.container;
    // Unmap while the IOMMU is still there: it goes when the container's last group leaves.
    if (c && c.groups.size === 1) c.detach();
    group.leave();
    if (c && c.groups.size === 0) {
      c.close();
      const i = this.containers.indexOf(c);
      if (i >= 0) this.containers.splice(i, 1);
    }
  }

  close(): void {
    for (const g of [...this.groups.values()]) this.dropGroup(g);
  }
}
