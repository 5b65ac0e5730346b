// Booting the guest image: which format a file is (multiboot ELF32, Linux bzImage, or flat bytes)
// and the load for each. The config check (machine/config/image.ts) and the machine's loader both
// detect the format here, so `tsvmm validate` and `tsvmm run` never disagree about an image.
import type { Vcpu } from '../core/kvm/vcpu.js';
import type { CpuidEntry } from '../core/native.js';
import type { PciDevice } from '../hw/pci.js';
import {
  loadElf32,
  hasMultibootHeader,
  writeMultibootInfo,
  enterProtectedMode,
  LoaderError,
  type E820Entry,
} from './loader/multiboot.js';
import { bootLinux, isBzImage, type LinuxKernel } from './loader/linux.js';
import { HOTPLUG_SLOTS, LOW_RAM_END, MULTIBOOT_INFO_ADDR, PCI_WINDOWS, pciIntxGsi } from './board.js';

export type KernelFormat = 'auto' | 'multiboot' | 'flat' | 'linux';
/** The guest image as a checked config gives it (paths absolute). */
export interface KernelSpec extends LinuxKernel {
  format: KernelFormat;
  loadAddress: number;
  entry?: number;
}

export const isElf = (image: Uint8Array): boolean =>
  image.length >= 4 && image[0] === 0x7f && image[1] === 0x45 && image[2] === 0x4c && image[3] === 0x46;

/** The format `image` loads as: the one asked for, or what "auto" finds (undefined: neither a
 *  multiboot ELF nor a bzImage). */
export function imageFormat(image: Uint8Array, asked: KernelFormat): Exclude<KernelFormat, 'auto'> | undefined {
  if (asked !== 'auto') return asked;
  if (isElf(image) && hasMultibootHeader(image)) return 'multiboot';
  if (isBzImage(image)) return 'linux';
  return undefined;
}

/** What loading writes into and reads from: memory, the boot vCPU and facts about the board. */
export interface BootTarget {
  kernel: KernelSpec;
  cmdline: string;
  /** Guest RAM below 4 GiB. */
  ram: Uint8Array;
  e820: E820Entry[];
  /** The PCI devices present now (their INTx lines go into the MP table). */
  pciDevices: Iterable<PciDevice>;
  cpus: number;
  cpuid: CpuidEntry[];
  bootVcpu: Vcpu;
}

/**
 * Loads `image` and points the boot vCPU at it. Returns whether the guest was given ACPI tables
 * (Linux: it hears of hot-plug and the power button through the GED).
 */
export function bootImage(t: BootTarget, image: Uint8Array): { acpi: boolean } {
  const k = t.kernel;
  const elf = isElf(image);
  const format = imageFormat(image, k.format) ?? 'flat';
  if (format === 'flat' && k.format === 'auto' && elf)
    throw new LoaderError(
      `${k.path}: an ELF file without a multiboot header (none in its first 8 KiB): tsvmm boots multiboot v1 ELF32 kernels and Linux bzImages; add a multiboot header, or set kernel.format to "flat" to run the file's bytes from its first one`,
    );
  if (format === 'linux') {
    // machine/loader/linux.ts: boot protocol, ACPI + MP tables, long mode.
    bootLinux(t, image, { pciMmio32: PCI_WINDOWS.mmio32, hotplugSlots: HOTPLUG_SLOTS, intxGsi: pciIntxGsi });
    return { acpi: true };
  }
  if (k.initrd || k.initramfs)
    throw new LoaderError(
      `${k.path}: kernel.initrd and kernel.initramfs need a Linux bzImage (format "linux"); this image loads as ${format}`,
    );
  let entry: number;
  if (format === 'multiboot') {
    if (!hasMultibootHeader(image)) throw new LoaderError(`${k.path}: no multiboot header in the first 8 KiB`);
    if (!elf) throw new LoaderError(`${k.path}: multiboot images must be ELF32 (the a.out kludge is not supported)`);
    entry = loadElf32(image, t.ram, k.path).entry;
  } else {
    if (k.loadAddress < 0x100000 && k.loadAddress + image.length > MULTIBOOT_INFO_ADDR)
      throw new LoaderError(
        `${k.path}: load address 0x${k.loadAddress.toString(16)} overlaps the boot info at 0x${MULTIBOOT_INFO_ADDR.toString(16)}: load at 0x100000 or above`,
      );
    if (k.loadAddress + image.length > Math.min(t.ram.length, LOW_RAM_END))
      throw new LoaderError(
        `${k.path}: ${image.length} bytes at 0x${k.loadAddress.toString(16)} do not fit in RAM below 3 GiB: give the VM more memory or load lower`,
      );
    t.ram.set(image, k.loadAddress);
    entry = k.entry ?? k.loadAddress;
  }
  const info = writeMultibootInfo(t.ram, MULTIBOOT_INFO_ADDR, t.cmdline, t.e820);
  enterProtectedMode(t.bootVcpu, entry, info, t.ram);
  return { acpi: false };
}
