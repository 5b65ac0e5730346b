// Hot reset (VFIO_DEVICE_PCI_HOT_RESET): a secondary bus or slot reset for devices that have no
// function-level reset of their own (VFIO_DEVICE_FLAGS_RESET clear: no FLR/PM reset, and a bus
// shared with other functions). It resets every device of the "dev set" the kernel names in
// VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, so the VMM must prove it owns them all: legacy passes
// the fds of every affected group; a cdev-opened device passes none and the kernel checks that
// every affected device is bound to the same iommufd (devid ≥ 0). QEMU's vfio_pci_hot_reset.
import { native, type VfioHotResetInfo } from '../native.js';
import type { AssignedDevice } from './vfio.js';
import { VfioSetupError } from './sysfs.js';

const bdf = (d: { segment: number; bus: number; devfn: number }) =>
  `${d.segment.toString(16).padStart(4, '0')}:${d.bus.toString(16).padStart(2, '0')}:${(d.devfn >> 3).toString(16).padStart(2, '0')}.${d.devfn & 7}`;

export interface HotResetPlan {
  /** The device whose fd performs the reset. */
  via: AssignedDevice;
  /** Every function the reset hits (BDFs). */
  affected: string[];
  /** Group fds proving ownership (legacy); empty for cdev-opened devices. */
  groupFds: number[];
}

/**
 * Plans the hot reset of `a`: which functions it hits and the fds that prove they are ours, or
 * an explained refusal naming the functions this VM does not own and the fix.
 */
export function planHotReset(a: AssignedDevice, groups: ReadonlyMap<number, { fd: number }>): HotResetPlan {
  const n = native();
  let info;
  try {
    info = n.vfioDeviceGetPciHotResetInfo(a.device.fd);
  } catch (e) {
    throw new VfioSetupError(
      `${a.host.name}: no reset mechanism: no function-level reset, and the kernel offers no bus or slot reset ` +
        `(${(e as { code?: string }).code ?? (e as Error).message}; a device on the root bus cannot be bus-reset)`,
      { cause: e },
    );
  }
  return planFromInfo(a, info, groups);
}

/** The decision of planHotReset, from the kernel's answer (pure: unit-tested). */
export function planFromInfo(
  a: AssignedDevice,
  info: VfioHotResetInfo,
  groups: ReadonlyMap<number, { fd: number }>,
): HotResetPlan {
  const c = native().constants;
  const affected = info.devices.map(bdf);
  if (info.flags & c.VFIO_PCI_HOT_RESET_FLAG_DEV_ID) {
    const foreign = info.devices.filter((d) => (d.devid ?? -1) < 0).map(bdf);
    if (foreign.length || !(info.flags & c.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED)) {
      throw new VfioSetupError(
        `${a.host.name}: a hot reset also resets ${foreign.join(', ') || 'devices'}, which this VM's iommufd does not own`,
        {
          fix: `assign ${foreign.join(' and ') || 'them'} to this VM too (same iommufd), or unbind them from vfio-pci`,
        },
      );
    }
    return { via: a, affected, groupFds: [] };
  }
  const ids = [...new Set(info.devices.map((d) => d.groupId!))];
  const missing = ids.filter((g) => !groups.has(g));
  if (missing.length) {
    const who = info.devices.filter((d) => missing.includes(d.groupId!)).map((d) => `${bdf(d)} (group ${d.groupId})`);
    throw new VfioSetupError(
      `${a.host.name}: a hot reset also resets ${who.join(', ')}, whose VFIO group this VM does not hold`,
      {
        fix: `assign a device of group ${missing.join(', ')} to this VM too, so tsvmm holds the group, or move the device to a slot of its own`,
      },
    );
  }
  return { via: a, affected, groupFds: ids.map((g) => groups.get(g)!.fd) };
}

/** Performs a planned hot reset. */
export function hotReset(plan: HotResetPlan): void {
  native().vfioDevicePciHotReset(plan.via.device.fd, plan.groupFds);
}

/**
 * Resets, once per dev set, the devices of `devices` that have no reset of their own (system
 * reset). Returns what was reset and, for each device that could not be, why.
 */
export function hotResetAll(
  devices: AssignedDevice[],
  groups: ReadonlyMap<number, { fd: number }>,
): { reset: string[][]; failed: { device: string; error: Error }[] } {
  const done = new Set<string>();
  const reset: string[][] = [];
  const failed: { device: string; error: Error }[] = [];
  for (const a of devices) {
    if (!a.device.isPci || a.device.canReset || done.has(a.host.name)) continue;
    try {
      const plan = planHotReset(a, groups);
      hotReset(plan);
      for (const d of plan.affected) done.add(d);
      reset.push(plan.affected);
    } catch (e) {
      failed.push({ device: a.host.name, error: e as Error });
    }
  }
  return { reset, failed };
}
