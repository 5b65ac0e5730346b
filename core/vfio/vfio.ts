// The VFIO state of one VM: containers, groups and devices, reference-counted and released in
// order (device → group → container). A new group joins an existing container when the kernel
// accepts it, else gets its own (QEMU's behaviour). Groups are registered with the KVM-VFIO
// pseudo device so KVM knows about non-coherent DMA.
import { closeSync } from 'node:fs';
import { native } from '../native.js';
import type { Vm } from '../kvm/vm.js';
import { VfioContainer } from './container.js';
import { VfioGroup } from './group.js';
import { VfioDevice } from './device.js';
import { findHostDevice, reservedRegions, VfioSetupError, type HostDevice } from './sysfs.js';

export interface AssignedDevice { host: HostDevice; group: VfioGroup; device: VfioDevice }

export class Vfio {
  readonly containers: VfioContainer[] = [];
  readonly groups = new Map<number, VfioGroup>();
  private kvmDeviceFd: number | undefined;

  /**
   * @param passedGroupFds group fds a manager passed, by group number; a group found here is
   *   adopted (closed with the group) instead of opened.
   */
  constructor(private readonly vm: Vm, private readonly passedGroupFds = new Map<number, number>(), private readonly containerPath = '/dev/vfio/vfio') {}

  /** Opens a host device for assignment: group (viable, in a container), DMA mappings, device fd. */
  open(spec: { host?: string; sysfsdev?: string; group?: number }): AssignedDevice {
    const host = findHostDevice(spec);
    const group = this.groups.get(host.group) ?? this.addGroup(host, this.passedGroupFds.get(host.group));
    if (group.devices.has(host.name)) throw new VfioSetupError(`${host.name} is already assigned to this VM`);
    let device: VfioDevice;
    try {
      device = new VfioDevice(host.name, group.openDevice(host.name));
    } catch (e) {
      if (group.devices.size === 0) this.dropGroup(group);
      throw e;
    }
    group.devices.add(host.name);
    return { host, group, device };
  }

  private addGroup(host: HostDevice, passedFd?: number): VfioGroup {
    const group = VfioGroup.open(host.group, passedFd, host.name);
    try {
      const reserved = reservedRegions(group.id);
      let container = this.containers.find((c) => group.tryJoin(c));
      if (container) {
        container.reserved.push(...reserved);
        const clash = [...container.mappings.values()].find((m) => reserved.some((r) => m.iova <= r.end && r.start <= m.iova + m.size - 1 && r.type !== 'direct-relaxable'));
        if (clash) throw new VfioSetupError(`group ${group.id} reserves IOVAs that guest RAM ${clash.region} already uses`);
      } else {
        container = VfioContainer.open(this.containerPath);
        try {
          if (!group.tryJoin(container)) throw new VfioSetupError(`VFIO_GROUP_SET_CONTAINER failed for group ${group.id} on a new container`);
          container.reserved = reserved;
          container.setIommu();
          container.attach(this.vm.memory);
        } catch (e) {
          group.leave();
          container.close();
          throw e;
        }
        this.containers.push(container);
      }
      this.kvmVfioGroup(group, true);
    } catch (e) {
      this.releaseContainerOf(group);
      group.close();
      throw e;
    }
    this.groups.set(group.id, group);
    return group;
  }

  private kvmVfioGroup(group: VfioGroup, add: boolean): void {
    const c = native().constants;
    if (this.kvmDeviceFd === undefined) {
      if (!add) return;
      this.kvmDeviceFd = native().kvmCreateDevice(this.vm.fd, c.KVM_DEV_TYPE_VFIO!);
    }
    native().kvmSetDeviceAttr(this.kvmDeviceFd, c.KVM_DEV_VFIO_GROUP!, add ? c.KVM_DEV_VFIO_GROUP_ADD! : c.KVM_DEV_VFIO_GROUP_DEL!, group.fd);
  }

  /** Closes a device; its group and container go when their last user does. */
  release(a: AssignedDevice): void {
    a.device.close();
    a.group.devices.delete(a.host.name);
    if (a.group.devices.size === 0) this.dropGroup(a.group);
  }

  private dropGroup(group: VfioGroup): void {
    try { this.kvmVfioGroup(group, false); } catch { /* the VM may be going away */ }
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

  /** Whether some container maps [iova, iova+size) (tests check a device's DMA target). */
  covers(iova: number, size: number): boolean {
    return this.containers.some((c) => c.covers(iova, size));
  }

  close(): void {
    for (const g of [...this.groups.values()]) this.dropGroup(g);
    if (this.kvmDeviceFd !== undefined) closeSync(this.kvmDeviceFd);
    this.kvmDeviceFd = undefined;
  }
}
