// What sysfs says about host PCI devices and IOMMU groups. Everything VFIO needs to explain
// itself comes from here: which group a device is in, who else is in it, which drivers they
// are bound to, and the IOVA regions the IOMMU reserves.
import { TsvmmError, type TsvmmErrorOptions } from '../errors.js';
import { existsSync, readdirSync, readFileSync, readlinkSync, realpathSync } from 'node:fs';
import { basename } from 'node:path';

export const SYS_PCI_DEVICES = '/sys/bus/pci/devices';
export const SYS_IOMMU_GROUPS = '/sys/kernel/iommu_groups';

export class VfioSetupError extends TsvmmError {
  constructor(message: string, opts?: TsvmmErrorOptions) {
    super('ERR_VFIO_SETUP', message, opts);
  }
}

/** Drivers a VFIO group may contain without being non-viable (the kernel tolerates these). */
const HARMLESS_DRIVERS = new Set(['vfio-pci', 'pci-stub', 'pcieport', 'vfio_mdev', 'vfio-mdev']);

/** "00:03.0" → "0000:00:03.0". */
export function normalizeBdf(bdf: string): string {
  const b = bdf.toLowerCase();
  return /^[0-9a-f]{4}:/.test(b) ? b : `0000:${b}`;
}

export function readTrim(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

export interface HostDevice {
  /** sysfs path (PCI device or mdev). */
  sysfs: string;
  /** Name VFIO knows the device by (VFIO_GROUP_GET_DEVICE_FD): the BDF or the mdev UUID. */
  name: string;
  group: number;
  driver: string | undefined;
  vendor?: number;
  device?: number;
}

export function driverOf(sysfs: string): string | undefined {
  try {
    return basename(readlinkSync(`${sysfs}/driver`));
  } catch {
    return undefined;
  }
}

export function groupOf(sysfs: string): number | undefined {
  try {
    return Number(basename(readlinkSync(`${sysfs}/iommu_group`)));
  } catch {
    return undefined;
  }
}

function hexFile(path: string): number | undefined {
  const t = readTrim(path);
  return t === undefined ? undefined : parseInt(t, 16);
}

export function bindFix(name: string): string {
  const d = `${SYS_PCI_DEVICES}/${name}`;
  return `echo ${name} > ${d}/driver/unbind; echo vfio-pci > ${d}/driver_override; echo ${name} > /sys/bus/pci/drivers_probe`;
}

/** Resolves a config's host= or sysfsdev= to the device VFIO will open, with explained errors. */
export function findHostDevice(spec: { host?: string; sysfsdev?: string; cdev?: string; group?: number }): HostDevice {
  let sysfs: string;
  if (spec.sysfsdev) sysfs = spec.sysfsdev.replace(/\/$/, '');
  else if (spec.host) sysfs = `${SYS_PCI_DEVICES}/${normalizeBdf(spec.host)}`;
  else {
    const s = spec.cdev ? sysfsOfCdev(spec.cdev) : undefined;
    if (!s)
      throw new VfioSetupError(
        `${spec.cdev ?? '(no device given)'} is not a VFIO device cdev (no /sys/class/vfio-dev/${basename(spec.cdev ?? '')}): ` +
          `give "host" or "sysfsdev", or the /dev/vfio/devices/vfioN of a device bound to vfio-pci`,
      );
    sysfs = s;
  }
  const name = basename(sysfs);
  if (!existsSync(sysfs)) {
    throw new VfioSetupError(
      spec.host ? `no PCI device ${name} on this host (${sysfs} does not exist)` : `${sysfs} does not exist`,
      {
        fix: spec.host
          ? "check the address: 'lspci -D' or 'tsvmm groups' lists the host's devices"
          : 'for a PCI device use /sys/bus/pci/devices/<bdf>, for an mdev /sys/bus/mdev/devices/<uuid>',
      },
    );
  }
  const group = groupOf(sysfs);
  if (group === undefined) {
    throw new VfioSetupError(`${name} has no IOMMU group: the IOMMU is off or absent`, {
      fix: 'enable VT-d/AMD-Vi in the firmware and boot with intel_iommu=on (or amd_iommu=on)',
    });
  }
  if (spec.group !== undefined && spec.group !== group)
    throw new VfioSetupError(`${name} is in IOMMU group ${group}, not ${spec.group} as the config says`);
  const driver = driverOf(sysfs);
  const isMdev = sysfs.includes('/mdev/') || existsSync(`${sysfs}/mdev_type`);
  if (!isMdev && driver !== 'vfio-pci') {
    throw new VfioSetupError(`${name} is ${driver ? `bound to ${driver}` : 'not bound to any driver'}, not vfio-pci`, {
      fix: bindFix(name),
    });
  }
  if (spec.cdev && (spec.host || spec.sysfsdev)) {
    const owner = sysfsOfCdev(spec.cdev);
    let self: string | undefined;
    try {
      self = realpathSync(sysfs);
    } catch {
      /* checked above */
    }
    if (owner !== self)
      throw new VfioSetupError(
        `${spec.cdev} is ${owner ? `the cdev of ${basename(owner)}` : 'not a VFIO device cdev'}, not of ${name}${cdevOf(sysfs) ? ` (that is ${cdevOf(sysfs)})` : ''}`,
      );
  }
  return { sysfs, name, group, driver, ...optionalIds(sysfs) };
}

function optionalIds(sysfs: string): { vendor?: number; device?: number } {
  const vendor = hexFile(`${sysfs}/vendor`),
    device = hexFile(`${sysfs}/device`);
  return { ...(vendor !== undefined ? { vendor } : {}), ...(device !== undefined ? { device } : {}) };
}

export interface GroupMember {
  name: string;
  driver: string | undefined;
  vendor?: number;
  device?: number;
}

export function groupMembers(group: number): GroupMember[] {
  const dir = `${SYS_IOMMU_GROUPS}/${group}/devices`;
  let names: string[];
  try {
    names = readdirSync(dir).sort();
  } catch {
    return [];
  }
  return names.map((name) => ({ name, driver: driverOf(`${dir}/${name}`), ...optionalIds(`${dir}/${name}`) }));
}

/** Group members that make the group non-viable (bound to a driver that owns DMA). */
export function blockers(group: number): GroupMember[] {
  return groupMembers(group).filter((m) => m.driver !== undefined && !HARMLESS_DRIVERS.has(m.driver));
}

export function notViableError(group: number, wanted: string): VfioSetupError {
  const bad = blockers(group);
  const lines = bad.map((m) => `  - ${m.name} is bound to ${m.driver}`);
  return new VfioSetupError(
    `IOMMU group ${group} (of ${wanted}) is not viable: every device in a group must be bound ` +
      `to vfio-pci (or have no driver) before any of them can be assigned.\n` +
      (lines.length
        ? lines.join('\n')
        : `  (no member is bound to another driver now; check 'ls -l ${SYS_IOMMU_GROUPS}/${group}/devices')`),
    bad.length
      ? { fix: `bind ${bad.length > 1 ? 'each' : 'it'} to vfio-pci: ${bad.map((m) => bindFix(m.name)).join('; ')}` }
      : {},
  );
}

export interface ReservedRegion {
  start: number;
  end: number;
  type: string;
}

/** /sys/kernel/iommu_groups/N/reserved_regions: IOVA ranges guest RAM must stay out of. */
export function reservedRegions(group: number): ReservedRegion[] {
  const t = readTrim(`${SYS_IOMMU_GROUPS}/${group}/reserved_regions`);
  if (!t) return [];
  return t.split('\n').map((l) => {
    const [s, e, type] = l.trim().split(/\s+/);
    return { start: Number(BigInt(s!)), end: Number(BigInt(e!)), type: type ?? 'reserved' };
  });
}

export interface GroupInfo {
  group: number;
  viable: boolean;
  members: GroupMember[];
}

/** Every IOMMU group on the host (for `tsvmm groups`). */
export function listGroups(): GroupInfo[] {
  let groups: number[];
  try {
    groups = readdirSync(SYS_IOMMU_GROUPS)
      .map(Number)
      .filter((n) => Number.isInteger(n))
      .sort((a, b) => a - b);
  } catch {
    return [];
  }
  return groups.map((group) => ({ group, viable: blockers(group).length === 0, members: groupMembers(group) }));
}

/** The device's VFIO cdev (/dev/vfio/devices/vfioN, from sysfs vfio-dev/), if the kernel has cdevs. */
export function cdevOf(sysfs: string): string | undefined {
  try {
    const n = readdirSync(`${sysfs}/vfio-dev`).find((x) => /^vfio\d+$/.test(x));
    return n ? `/dev/vfio/devices/${n}` : undefined;
  } catch {
    return undefined;
  }
}

/** The sysfs device behind a VFIO cdev path (/dev/vfio/devices/vfioN → /sys/class/vfio-dev/vfioN/device). */
export function sysfsOfCdev(cdev: string): string | undefined {
  try {
    return realpathSync(`/sys/class/vfio-dev/${basename(cdev)}/device`);
  } catch {
    return undefined;
  }
}
