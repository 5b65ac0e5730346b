// The library's typed operations as the command layer's (QMP's) arguments, and its serial patterns.
import { isAbsolute, resolve } from 'node:path';

/** A device for Vm.deviceAdd (QMP device_add's vfio-pci properties, typed). */
export interface DeviceAddOptions {
  driver: 'vfio-pci';
  id: string;
  host?: string;
  sysfsdev?: string;
  /** Guest slot: 5, "5", "0x5" or "05.0". */
  addr?: number | string;
  rombar?: boolean;
  /** Relative to the VM's baseDir. */
  romfile?: string;
}

/** device_add's arguments for `d`; relative paths resolve against `baseDir`. */
export function deviceAddArgs(d: DeviceAddOptions, baseDir: string): Record<string, unknown> {
  return {
    driver: d.driver,
    id: d.id,
    ...(d.host !== undefined ? { host: d.host } : {}),
    ...(d.sysfsdev !== undefined ? { sysfsdev: d.sysfsdev } : {}),
    ...(d.addr !== undefined ? { addr: d.addr } : {}),
    ...(d.rombar !== undefined ? { rombar: d.rombar } : {}),
    ...(d.romfile !== undefined ? { romfile: isAbsolute(d.romfile) ? d.romfile : resolve(baseDir, d.romfile) } : {}),
  };
}

/** A serial pattern as a RegExp that matches from the start of the text it is given each time
 *  (a string matches literally; a RegExp's g and y flags would carry state between calls). */
export function serialPattern(p: string | RegExp): RegExp {
  if (typeof p === 'string') return new RegExp(p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  return new RegExp(p.source, p.flags.replace(/[gy]/g, ''));
}

/** The last `n` lines of `text`, for error messages. */
export function lastLines(text: string, n = 10): string {
  const lines = text.replace(/\r/g, '').split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  return lines.slice(-n).join('\n');
}
