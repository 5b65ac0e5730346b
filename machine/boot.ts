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
import { readFileSync } from 'node:fs';
import {
  enterLongMode,
  isBzImage,
  KERNEL_LOAD_ADDR,
  linuxCmdline,
  loadLinux,
  RESET_VECTOR,
  RESET_VECTOR_STUB,
} from './loader/linux.js';
import { buildInitramfs } from './loader/initramfs.js';
import { ACPI_TABLES_ADDR, buildAcpiTables, type ViotOptions } from '../hw/acpi.js';
import { buildMpTable, MP_TABLE_ADDR, type MpPciIrq } from '../hw/mptable.js';
import { PCI_INTERRUPT_LINE, PCI_INTERRUPT_PIN } from '../hw/pci.js';
import { HOTPLUG_SLOTS, LOW_RAM_END, MULTIBOOT_INFO_ADDR, PCI_WINDOWS, pciIntxGsi } from './board.js';

export type KernelFormat = 'auto' | 'multiboot' | 'flat' | 'linux';
/** The guest image as a checked config gives it (paths absolute). */
export interface KernelSpec {
  path: string;
  format: KernelFormat;
  initrd?: string;
  /** Linux: an initramfs built at start-up (machine/loader/initramfs.ts). */
  initramfs?: {
    script: string;
    modules?: string;
    busybox?: string;
    /** tsvmm's guest programs for /bin (guest/out/linux/). */
    programs?: string[];
    /** Host files copied in at absolute paths. */
    files?: { path: string; source: string }[];
  };
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
  /** A vIOMMU and the endpoints behind it: the ACPI tables get a VIOT. */
  viot?: ViotOptions;
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
    bootLinux(t, image);
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

/**
 * Everything a Linux guest needs in memory and registers, on top of the board's devices (i8042,
 * ACPI sleep registers: machine/board.ts): the initrd (a file, or the initramfs built from the
 * config), ACPI and MP tables in the BIOS area (they describe the board: its PCI window, the slots
 * a device may be hot-plugged into, each slot's INTx line), and the boot vCPU in long mode at the
 * kernel's 64-bit entry (machine/loader/linux.ts). Wires no devices, so loading again
 * (system_reset) adds nothing.
 */
function bootLinux(m: BootTarget, image: Uint8Array): void {
  const k = m.kernel;
  let initrd: Uint8Array | undefined, initrdName: string | undefined;
  if (k.initramfs) {
    initrd = buildInitramfs({
      script: k.initramfs.script,
      ...(k.initramfs.modules ? { modulesDir: k.initramfs.modules } : {}),
      ...(k.initramfs.busybox ? { busybox: k.initramfs.busybox } : {}),
      ...(k.initramfs.programs ? { programs: k.initramfs.programs } : {}),
      ...(k.initramfs.files ? { files: k.initramfs.files } : {}),
    });
    initrdName = 'the initramfs built from kernel.initramfs';
  } else if (k.initrd) {
    initrd = new Uint8Array(readFileSync(k.initrd));
    initrdName = k.initrd;
  }
  // The reset vector: Linux reboots by jumping to F000:FFF0 in real mode when it has no other way
  // (with a hardware-reduced FADT it skips the ACPI reset register, tries EFI, then the BIOS), so
  // the "BIOS" there resets the way the FADT says: 6 to port 0xCF9, which ends the VM.
  m.ram.set(RESET_VECTOR_STUB, RESET_VECTOR);
  const low = m.e820.find((e) => e.addr === KERNEL_LOAD_ADDR && e.type === 1);
  if (!low) throw new LoaderError('no RAM at 1 MiB in the e820 map');

  // PCI INTx: each device's pin arrives on the IOAPIC input its interrupt line names (machine.ts
  // gives assigned devices GSIs 16-23); ACPI's _PRT and the MP table both say so.
  const pciIrqs: MpPciIrq[] = [];
  for (const d of m.pciDevices) {
    const pin = d.configRead(PCI_INTERRUPT_PIN, 1);
    if (pin >= 1 && pin <= 4) pciIrqs.push({ slot: d.slot, pin, ioapicPin: d.configRead(PCI_INTERRUPT_LINE, 1) });
  }
  // ACPI's _PRT covers every slot a device may arrive in later, not only those filled now.
  const prt = [...new Set([...pciIrqs.map((p) => p.slot), ...HOTPLUG_SLOTS])]
    .sort((a, b) => a - b)
    .flatMap((slot) => [1, 2, 3, 4].map((pin) => ({ slot, pin, gsi: pciIntxGsi(slot) })));
  const acpi = buildAcpiTables(
    {
      cpus: m.cpus,
      pciMmio32: PCI_WINDOWS.mmio32,
      pciIrqs: prt,
      hotplugSlots: HOTPLUG_SLOTS,
      ...(m.viot ? { viot: m.viot } : {}),
    },
    ACPI_TABLES_ADDR,
  );
  m.ram.set(acpi.bytes, ACPI_TABLES_ADDR);
  const cpuid1 = m.cpuid.find((e) => e.function === 1);
  m.ram.set(
    buildMpTable(MP_TABLE_ADDR, {
      cpus: m.cpus,
      cpuSignature: cpuid1?.eax ?? 0,
      cpuFeatures: cpuid1?.edx ?? 0,
      pciIrqs,
    }),
    MP_TABLE_ADDR,
  );

  const layout = loadLinux(m.ram, {
    image,
    path: k.path,
    cmdline: linuxCmdline(m.cmdline),
    e820: m.e820,
    lowRamEnd: low.addr + low.size,
    acpiRsdp: acpi.rsdp,
    ...(initrd ? { initrd } : {}),
    ...(initrdName ? { initrdName } : {}),
  });
  enterLongMode(m.bootVcpu, layout);
}
