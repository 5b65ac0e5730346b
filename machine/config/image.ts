// The checks of a config that need its files but no KVM and no host device: the guest image's
// format and size against the RAM and the guest-physical layout, the initrd against the format,
// the devices' ids, host addresses and slots. `tsvmm validate` and `tsvmm run` both run them
// (through checkConfig), so a config that validates does not fail later for any of these.
// Loading checks reuse the loaders' own (loadElf32 into a sink, the Linux fit), so the two never
// disagree.
import { closeSync, openSync, statSync } from 'node:fs';
import { preadFully } from '../../core/io.js';
import { hasMultibootHeader, loadElf32, LoaderError } from '../loader/multiboot.js';
import { checkLinuxCmdline, checkLinuxFit, isBzImage, linuxCmdline, parseBzImage } from '../loader/linux.js';
import { imageFormat, isElf as isElfImage, type KernelFormat } from '../boot.js';
import { LOW_RAM_END, MULTIBOOT_INFO_ADDR, PCI_DEVICE_SLOTS } from '../board.js';
import type { DeviceSpec } from './config.js';

export interface ImageInput {
  path: string;
  format: KernelFormat;
  loadAddress: number;
  entry?: number;
  initrd?: string;
  initramfs?: boolean;
  memoryBytes: number;
  cmdline: string;
}

const hex = (n: number) => `0x${n.toString(16)}`;
const FORMATS_FIX = 'tsvmm boots a multiboot ELF32 kernel, a Linux bzImage, or a raw binary with "format": "flat"';

/** Checks the guest image; returns the format it will load as (undefined when it cannot load). */
export function checkImage(k: ImageInput, problems: string[]): Exclude<KernelFormat, 'auto'> | undefined {
  const size = statSync(k.path).size;
  if (size === 0) {
    problems.push(`/kernel/path: ${k.path} is empty (0 bytes): ${FORMATS_FIX}`);
    return undefined;
  }
  const image = readImage(k.path, size);
  const isElf = isElfImage(image);
  const lowRam = Math.min(k.memoryBytes, LOW_RAM_END);
  const format = imageFormat(image, k.format);
  if (format === undefined) {
    const first = [...image.subarray(0, 4)].map((b) => b.toString(16).padStart(2, '0')).join(' ');
    problems.push(
      isElf
        ? `/kernel/path: ${k.path} is an ELF file without a multiboot header (a vmlinux?): ${FORMATS_FIX}`
        : `/kernel/path: ${k.path} is neither a multiboot ELF nor a Linux bzImage (it starts ${first}): if it is a raw binary to run at loadAddress, set "format": "flat"`,
    );
    return undefined;
  }
  if ((k.initrd !== undefined || k.initramfs) && format !== 'linux')
    problems.push(
      `/kernel/${k.initrd !== undefined ? 'initrd' : 'initramfs'}: ${k.path} ${k.format === 'auto' ? 'is' : 'loads as'} a ${format} image; an initrd or initramfs needs a Linux bzImage: remove it (or boot a bzImage)`,
    );
  const fail = (ptr: string, e: unknown) => {
    if (!(e instanceof LoaderError)) throw e;
    // A config problem is one line: what, and how to put it right.
    problems.push(`${ptr}: ${e.message}${e.fix ? `: ${e.fix}` : ''}`);
  };
  switch (format) {
    case 'multiboot':
      if (!isElf) {
        problems.push(
          `/kernel/path: ${k.path} is not an ELF file: multiboot images must be ELF32 (the a.out kludge is not supported); for a raw binary set "format": "flat"`,
        );
        return undefined;
      }
      if (!hasMultibootHeader(image)) {
        problems.push(`/kernel/path: ${k.path} has no multiboot header in its first 8 KiB: ${FORMATS_FIX}`);
        return undefined;
      }
      // The loader's own checks, loading into a sink the size of the RAM below the PCI hole.
      try {
        loadElf32(image, ramSink(lowRam), k.path);
      } catch (e) {
        fail('/kernel/path', e);
      }
      break;
    case 'flat': {
      if (k.loadAddress < 0x100000 && k.loadAddress + size > MULTIBOOT_INFO_ADDR)
        problems.push(
          `/kernel/loadAddress: ${size} bytes at ${hex(k.loadAddress)} overlap the boot information at ${hex(MULTIBOOT_INFO_ADDR)}: load at 0x100000 or above`,
        );
      if (k.loadAddress + size > lowRam)
        problems.push(
          `/kernel/loadAddress: ${k.path} (${size} bytes) at ${hex(k.loadAddress)} ends at ${hex(k.loadAddress + size)}, beyond the VM's ${lowRam / 2 ** 20} MiB of RAM below 3 GiB: give the VM more memory or load it lower`,
        );
      const entry = k.entry ?? k.loadAddress;
      if (entry >= lowRam)
        problems.push(
          `/kernel/entry: ${hex(entry)} is not in RAM (${lowRam / 2 ** 20} MiB below 3 GiB): point it into the image`,
        );
      break;
    }
    case 'linux':
      try {
        const hdr = parseBzImage(image, k.path);
        const initrdSize = k.initrd !== undefined ? statSync(k.initrd).size : 0;
        checkLinuxFit(hdr, size, initrdSize, lowRam, k.path, k.initrd);
        checkLinuxCmdline(hdr, Buffer.byteLength(linuxCmdline(k.cmdline)), k.path);
      } catch (e) {
        fail('/kernel', e);
      }
      break;
  }
  if (k.initrd !== undefined && format === 'linux' && statSync(k.initrd).size === 0)
    problems.push(`/kernel/initrd: ${k.initrd} is empty (0 bytes): give a cpio archive (or leave "initrd" out)`);
  return format;
}

/**
 * A bzImage is checked from its setup header alone, so only its first 256 KiB are read (the largest
 * setup, 255 sectors, ends at 128 KiB; the kernel, often tens of MiB, is read once, by the loader).
 * Multiboot and flat images are read whole (up to 64 MiB): their checks load them.
 */
function readImage(path: string, size: number): Uint8Array {
  const fd = openSync(path, 'r');
  // [from, into.length) of the file into the same place of `into`; what the file had up to there.
  const fill = (into: Uint8Array, from: number) => into.subarray(0, from + preadFully(fd, into.subarray(from), from));
  try {
    const head = fill(new Uint8Array(Math.min(size, 256 * 1024)), 0);
    if (head.length === size || isBzImage(head)) return head;
    const whole = new Uint8Array(Math.min(size, 64 * 2 ** 20));
    whole.set(head);
    return fill(whole, head.length);
  } finally {
    closeSync(fd);
  }
}

/** A stand-in for guest RAM that takes writes and keeps nothing: the loader's bounds checks run. */
function ramSink(length: number): Uint8Array {
  return {
    length,
    set() {},
    fill() {
      return this;
    },
  } as unknown as Uint8Array;
}

/** PCI address as sysfs names it: 0000:bb:dd.f, lower case. */
function canonicalBdf(host: string): string {
  const h = host.toLowerCase();
  return /^[0-9a-f]{4}:/.test(h) ? h : `0000:${h}`;
}

/** What a device opens on the host, as a comparable key (host BDF, sysfs device, or cdev). */
function hostKey(d: DeviceSpec): string | undefined {
  if (d.host) return canonicalBdf(d.host);
  if (d.sysfsdev) {
    const last = d.sysfsdev.replace(/\/+$/, '').split('/').pop()!;
    return /^([0-9a-f]{4}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/i.test(last)
      ? canonicalBdf(last)
      : d.sysfsdev.replace(/\/+$/, '');
  }
  return d.cdev;
}

/** Ids unique (QMP and logs find devices by them), each host device assigned once, slots enough. */
export function checkDevices(devices: DeviceSpec[], problems: string[]): void {
  const ids = new Map<string, number>(),
    hosts = new Map<string, number>();
  devices.forEach((d, i) => {
    const id = d.id ?? `vfio${i}`; // machine.ts's default name
    const other = ids.get(id);
    if (other !== undefined)
      problems.push(
        `/devices/${i}${d.id ? '/id' : ''}: id "${id}" is also the id of /devices/${other}${d.id ? '' : ' (the default id of device ' + i + ')'}: give each device its own "id"`,
      );
    else ids.set(id, i);
    const key = hostKey(d);
    if (key === undefined) return;
    const dup = hosts.get(key);
    if (dup !== undefined)
      problems.push(
        `/devices/${i}: ${key} is already assigned by /devices/${dup}: a host device can be assigned once; remove one of them`,
      );
    else hosts.set(key, i);
  });
  if (devices.length > PCI_DEVICE_SLOTS)
    problems.push(
      `/devices: ${devices.length} devices, but the PCI bus has ${PCI_DEVICE_SLOTS} slots for them (1-31; slot 0 is the host bridge): remove ${devices.length - PCI_DEVICE_SLOTS}`,
    );
}
