// Fds passed by a privileged manager (tsvmm manager) for the config's devices: the devices they
// name, and that every passed VFIO fd belongs to one of them.
import { existsSync } from 'node:fs';
import { FdPassError, type PassedFd } from '../core/fdpass.js';
import { findHostDevice } from '../core/vfio/sysfs.js';
import type { VfioPciConfig } from './config/config.js';

/**
 * Devices named by a passed fd ("fd": "name", QEMU's fd=): the fd must have been passed, be a
 * VFIO group or cdev, and agree with host/sysfsdev when those are given too; a cdev alone names
 * its device.
 */
export function resolveFdNames(devices: VfioPciConfig[], passed: readonly PassedFd[]): VfioPciConfig[] {
  return devices.map((d, i) => {
    if (d.fd === undefined) return d;
    const p = passed.find((x) => x.name === d.fd);
    const where = `/devices/${i}/fd`;
    if (!p)
      throw new FdPassError(
        `${where}: no fd named '${d.fd}' was passed (passed: ${passed.map((x) => x.name).join(', ') || 'none'}); start the VM through 'tsvmm manager' or pass it on --fd-socket`,
      );
    if (p.kind === 'vfio-cdev') {
      const sysfs = existsSync(`/sys/bus/mdev/devices/${p.device}`)
        ? `/sys/bus/mdev/devices/${p.device}`
        : `/sys/bus/pci/devices/${p.device}`;
      if ((d.host || d.sysfsdev) && findHostDevice(d).name !== p.device)
        throw new FdPassError(`${where}: fd '${d.fd}' is the cdev of ${p.device}, not of ${d.host ?? d.sysfsdev}`);
      return d.host || d.sysfsdev ? d : { ...d, sysfsdev: sysfs };
    }
    if (p.kind === 'vfio-group') {
      if (!d.host && !d.sysfsdev)
        throw new FdPassError(
          `${where}: fd '${d.fd}' is VFIO group ${p.group}: say which of its devices with "host" or "sysfsdev"`,
        );
      const g = findHostDevice(d).group;
      if (g !== p.group)
        throw new FdPassError(
          `${where}: fd '${d.fd}' is VFIO group ${p.group}, but ${d.host ?? d.sysfsdev} is in group ${g}`,
        );
      return d;
    }
    throw new FdPassError(`${where}: fd '${d.fd}' is ${p.kind}, not a VFIO group or device cdev`);
  });
}

/** Passed VFIO fds must each belong to a device of the config. */
export function checkPassedVfio(devices: VfioPciConfig[], passed: readonly PassedFd[]): void {
  const vfioFds = passed.filter((x) => x.kind === 'vfio-group' || x.kind === 'vfio-cdev');
  // sysfs is read once per device, and only when there is something to check.
  const hosts = vfioFds.length ? devices.map((d) => findHostDevice(d)) : [];
  for (const p of vfioFds) {
    if (p.kind === 'vfio-group') {
      if (!hosts.some((h) => h.group === p.group))
        throw new FdPassError(
          `passed fd '${p.name}' is VFIO group ${p.group}, but no device in the config is in that group`,
        );
    } else {
      if (!hosts.some((h) => h.name === p.device))
        throw new FdPassError(
          `passed fd '${p.name}' is the VFIO cdev of ${p.device}, but the config does not assign that device`,
        );
    }
  }
}
