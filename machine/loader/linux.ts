// Linux x86 boot protocol (Documentation/arch/x86/boot.rst), 64-bit entry, as Firecracker and
// cloud-hypervisor enter a bzImage: the protected-mode part of the image is loaded at 1 MiB;
// boot_params (the "zero page") gets the image's setup header plus the e820 map, the command line,
// the initrd and the ACPI RSDP; the boot vCPU starts in long mode at load address + 0x200 with
// RSI = boot_params, paging on with the first 4 GiB identity-mapped (2 MiB pages) and a GDT whose
// __BOOT_CS (0x10) and __BOOT_DS (0x18) are flat 64-bit code and data.
import type { Vcpu } from '../../core/kvm/vcpu.js';
import { native } from '../../core/native.js';
import { bootRegs, LoaderError, type E820Entry } from './multiboot.js';

export const BOOT_PARAMS_ADDR = 0x7000;
export const BOOT_STACK = 0x8ff0;
export const PML4_ADDR = 0x9000; // then the PDPT at 0xa000 and four page directories at 0xb000-0xefff
export const CMDLINE_ADDR = 0x20000;
export const GDT_ADDR = 0x500;
export const KERNEL_LOAD_ADDR = 0x100000;
export const BOOT_CS = 0x10,
  BOOT_DS = 0x18;

// Offsets in boot_params / the setup header (arch/x86/include/uapi/asm/bootparam.h).
const BP = {
  acpiRsdpAddr: 0x070,
  extRamdiskImage: 0x0c0,
  extRamdiskSize: 0x0c4,
  extCmdLinePtr: 0x0c8,
  e820Entries: 0x1e8,
  sentinel: 0x1ef,
  setupSects: 0x1f1,
  vidMode: 0x1fa,
  bootFlag: 0x1fe,
  jump: 0x200,
  header: 0x202,
  version: 0x206,
  typeOfLoader: 0x210,
  loadFlags: 0x211,
  ramdiskImage: 0x218,
  ramdiskSize: 0x21c,
  cmdLinePtr: 0x228,
  initrdAddrMax: 0x22c,
  kernelAlignment: 0x230,
  relocatable: 0x234,
  xloadflags: 0x236,
  cmdlineSize: 0x238,
  hardwareSubarch: 0x23c,
  prefAddress: 0x258,
  initSize: 0x260,
  e820Table: 0x2d0,
} as const;
export const E820_MAX_ENTRIES = 128;
const HDRS = 0x53726448; // "HdrS"
const LOADED_HIGH = 0x01;
const XLF_KERNEL_64 = 0x01;
/** Boot protocol 2.12 (Linux 3.8) brought xloadflags, which announce the 64-bit entry. */
export const MIN_BOOT_PROTOCOL = 0x020c;

export interface BzImage {
  /** Boot protocol version, e.g. 0x020f. */
  version: number;
  setupSects: number;
  /** Offset of the protected-mode kernel in the file. */
  kernelOffset: number;
  /** End of the setup header in the file (0x202 + the jump's offset byte). */
  headerEnd: number;
  initrdAddrMax: number;
  cmdlineSize: number;
  /** Where the kernel decompresses itself (LOAD_PHYSICAL_ADDR) and how much memory it needs from there. */
  prefAddress: number;
  initSize: number;
}

const hex = (n: number) => `0x${n.toString(16)}`;
const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;

/** Reads and checks the setup header of a bzImage. */
export function parseBzImage(image: Uint8Array, path: string): BzImage {
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (image.length < 0x270 || v.getUint32(BP.header, true) !== HDRS) {
    const elf = image.length >= 4 && v.getUint32(0, false) === 0x7f454c46;
    throw new LoaderError(
      `${path}: not a bzImage (no "HdrS" boot protocol header at 0x202)` +
        (elf
          ? ': this is an ELF file (vmlinux?); give the compressed bzImage (arch/x86/boot/bzImage, /boot/vmlinuz-*)'
          : ': give a Linux bzImage (arch/x86/boot/bzImage, /boot/vmlinuz-*)'),
    );
  }
  if (v.getUint16(BP.bootFlag, true) !== 0xaa55)
    throw new LoaderError(`${path}: boot flag at 0x1fe is not 0xAA55: not a Linux bzImage, or a damaged one`);
  const version = v.getUint16(BP.version, true);
  const ver = `${version >> 8}.${(version & 0xff).toString().padStart(2, '0')}`;
  if (version < MIN_BOOT_PROTOCOL)
    throw new LoaderError(
      `${path}: boot protocol ${ver} is too old: tsvmm enters the 64-bit entry point, which needs protocol 2.12 (Linux 3.8) or newer`,
    );
  if (!(image[BP.loadFlags]! & LOADED_HIGH))
    throw new LoaderError(`${path}: a zImage (loads at 0x10000), not a bzImage: rebuild with 'make bzImage'`);
  if (!(v.getUint16(BP.xloadflags, true) & XLF_KERNEL_64))
    throw new LoaderError(
      `${path}: no 64-bit entry point (xloadflags lacks XLF_KERNEL_64): a 32-bit kernel? tsvmm boots x86-64 kernels`,
    );
  const setupSects = image[BP.setupSects] || 4;
  const kernelOffset = (setupSects + 1) * 512;
  if (kernelOffset >= image.length)
    throw new LoaderError(`${path}: truncated: ${setupSects} setup sectors but only ${image.length} bytes`);
  return {
    version,
    setupSects,
    kernelOffset,
    headerEnd: 0x202 + image[BP.jump + 1]!,
    initrdAddrMax: v.getUint32(BP.initrdAddrMax, true),
    cmdlineSize: version >= 0x0206 ? v.getUint32(BP.cmdlineSize, true) : 255,
    prefAddress: Number(v.getBigUint64(BP.prefAddress, true)),
    initSize: v.getUint32(BP.initSize, true),
  };
}

export interface LinuxBootOptions {
  image: Uint8Array;
  path: string;
  cmdline: string;
  initrd?: Uint8Array;
  /** Where the initrd came from, for messages. */
  initrdName?: string;
  e820: E820Entry[];
  /** End of RAM below 4 GiB (the boot structures, kernel and initrd must fit there). */
  lowRamEnd: number;
  acpiRsdp?: number;
}

export interface LinuxBootLayout {
  kernel: { addr: number; size: number };
  initrd?: { addr: number; size: number };
  cmdline: { addr: number; size: number };
  bootParams: number;
  entry: number;
}

/**
 * Whether kernel and initrd fit the RAM below 4 GiB (also run by `tsvmm validate`, without
 * loading anything); returns where the kernel's memory ends. The kernel decompresses itself at its
 * preferred address (16 MiB for x86-64) and needs init_size bytes from there; the initrd goes at
 * the top of low RAM, above all of that.
 */
export function checkLinuxFit(
  hdr: BzImage,
  imageSize: number,
  initrdSize: number,
  lowRamEnd: number,
  path: string,
  initrdName?: string,
): number {
  const kernelEnd = Math.max(
    KERNEL_LOAD_ADDR + imageSize - hdr.kernelOffset,
    Math.max(hdr.prefAddress, KERNEL_LOAD_ADDR) + hdr.initSize,
  );
  if (kernelEnd + initrdSize > lowRamEnd) {
    const need = Math.ceil((kernelEnd + initrdSize) / 2 ** 20) + 16;
    throw new LoaderError(
      `${path}: the kernel needs RAM up to ${mib(kernelEnd)} (it decompresses to ${hex(hdr.prefAddress)} and needs init_size ${mib(hdr.initSize)})` +
        (initrdSize ? ` plus ${mib(initrdSize)} of initrd${initrdName ? ` (${initrdName})` : ''}` : '') +
        `, but the VM has ${mib(lowRamEnd)} below 4 GiB`,
      { fix: `give it more memory (at least ${need}M)` },
    );
  }
  return kernelEnd;
}

/** The command line (bytes, without the NUL) against the kernel's cmdline_size. */
export function checkLinuxCmdline(hdr: BzImage, bytes: number, path: string): void {
  if (bytes + 1 > hdr.cmdlineSize)
    throw new LoaderError(
      `${path}: the command line is ${bytes} bytes; this kernel accepts at most ${hdr.cmdlineSize - 1}`,
    );
}

/** Loads kernel, initrd, command line and boot_params into RAM; returns where each went. */
export function loadLinux(ram: Uint8Array, o: LinuxBootOptions): LinuxBootLayout {
  const hdr = parseBzImage(o.image, o.path);
  const kernel = o.image.subarray(hdr.kernelOffset);
  const kernelEnd = checkLinuxFit(hdr, o.image.length, o.initrd?.length ?? 0, o.lowRamEnd, o.path, o.initrdName);
  const cmd = new TextEncoder().encode(o.cmdline);
  checkLinuxCmdline(hdr, cmd.length, o.path);
  if (o.e820.length > E820_MAX_ENTRIES)
    throw new LoaderError(`too many e820 entries (${o.e820.length}, at most ${E820_MAX_ENTRIES})`);

  ram.set(kernel, KERNEL_LOAD_ADDR);
  ram.set(cmd, CMDLINE_ADDR);
  ram[CMDLINE_ADDR + cmd.length] = 0;
  let initrd: { addr: number; size: number } | undefined;
  if (o.initrd && o.initrd.length) {
    const top = Math.min(o.lowRamEnd, hdr.initrdAddrMax + 1);
    const addr = Math.floor((top - o.initrd.length) / 4096) * 4096;
    if (addr < kernelEnd) {
      throw new LoaderError(
        `${o.initrdName ?? 'initrd'}: ${mib(o.initrd.length)} does not fit between the kernel's end (${mib(kernelEnd)}) and ` +
          `${hex(top)} (the lower of the end of RAM below 4 GiB and the kernel's initrd_addr_max)`,
        { fix: 'give the VM more memory or use a smaller initrd' },
      );
    }
    ram.set(o.initrd, addr);
    initrd = { addr, size: o.initrd.length };
  }
  writeBootParams(ram, BOOT_PARAMS_ADDR, o.image, hdr, {
    cmdline: CMDLINE_ADDR,
    e820: o.e820,
    ...(initrd ? { initrd } : {}),
    ...(o.acpiRsdp !== undefined ? { acpiRsdp: o.acpiRsdp } : {}),
  });
  writeGdt(ram, GDT_ADDR);
  writeIdentityPageTables(ram, PML4_ADDR);
  return {
    kernel: { addr: KERNEL_LOAD_ADDR, size: kernel.length },
    cmdline: { addr: CMDLINE_ADDR, size: cmd.length + 1 },
    bootParams: BOOT_PARAMS_ADDR,
    entry: KERNEL_LOAD_ADDR + 0x200,
    ...(initrd ? { initrd } : {}),
  };
}

/** The zero page: the image's setup header, then what the boot loader fills in. */
export function writeBootParams(
  ram: Uint8Array,
  at: number,
  image: Uint8Array,
  hdr: BzImage,
  o: { cmdline: number; e820: E820Entry[]; initrd?: { addr: number; size: number }; acpiRsdp?: number },
): void {
  const v = new DataView(ram.buffer, ram.byteOffset + at, 4096);
  ram.fill(0, at, at + 4096);
  ram.set(image.subarray(BP.setupSects, hdr.headerEnd), at + BP.setupSects);
  v.setUint8(BP.typeOfLoader, 0xff); // "undefined" boot loader
  v.setUint16(BP.vidMode, 0xffff, true); // "normal" text mode: no mode change
  v.setUint32(BP.hardwareSubarch, 0, true); // a PC
  v.setUint32(BP.cmdLinePtr, o.cmdline, true);
  v.setUint32(BP.extCmdLinePtr, 0, true);
  if (o.initrd) {
    v.setUint32(BP.ramdiskImage, o.initrd.addr % 2 ** 32, true);
    v.setUint32(BP.ramdiskSize, o.initrd.size % 2 ** 32, true);
    v.setUint32(BP.extRamdiskImage, Math.floor(o.initrd.addr / 2 ** 32), true);
    v.setUint32(BP.extRamdiskSize, Math.floor(o.initrd.size / 2 ** 32), true);
  }
  if (o.acpiRsdp !== undefined) v.setBigUint64(BP.acpiRsdpAddr, BigInt(o.acpiRsdp), true);
  v.setUint8(BP.e820Entries, o.e820.length);
  o.e820.forEach((e, i) => {
    const p = BP.e820Table + 20 * i;
    v.setBigUint64(p, BigInt(e.addr), true);
    v.setBigUint64(p + 8, BigInt(e.size), true);
    v.setUint32(p + 16, e.type, true);
  });
}

/** GDT entries as the boot protocol wants them: null, null, __BOOT_CS (64-bit code), __BOOT_DS, a TSS. */
export const GDT_ENTRIES = [0n, 0n, 0x00af9b000000ffffn, 0x00cf93000000ffffn, 0x008f8b000000ffffn];

export function writeGdt(ram: Uint8Array, at: number): void {
  const v = new DataView(ram.buffer, ram.byteOffset + at, GDT_ENTRIES.length * 8);
  GDT_ENTRIES.forEach((e, i) => v.setBigUint64(8 * i, e, true));
}

/** PML4 → one PDPT → four page directories of 2 MiB pages: virtual = physical for 0-4 GiB. */
export function writeIdentityPageTables(ram: Uint8Array, pml4: number): void {
  const pdpt = pml4 + 0x1000,
    pd = pml4 + 0x2000;
  const v = new DataView(ram.buffer, ram.byteOffset + pml4, 6 * 0x1000);
  ram.fill(0, pml4, pml4 + 6 * 0x1000);
  const PRESENT_RW = 0x3n,
    PS = 0x80n;
  v.setBigUint64(0, BigInt(pdpt) | PRESENT_RW, true);
  for (let i = 0; i < 4; i++) v.setBigUint64(0x1000 + 8 * i, BigInt(pd + i * 0x1000) | PRESENT_RW, true);
  for (let i = 0; i < 4 * 512; i++) v.setBigUint64(0x2000 + 8 * i, (BigInt(i) << 21n) | PRESENT_RW | PS, true);
}

const seg = (selector: number, type: number, l: number) => ({
  base: 0,
  limit: 0xffffffff,
  selector,
  type,
  present: 1,
  dpl: 0,
  db: l ? 0 : 1,
  s: 1,
  l,
  g: 1,
  avl: 0,
});

// MSRs a BIOS would leave set up (Firecracker's list, trimmed): fast strings on, MTRRs enabled
// with write-back as the default memory type (VFIO's non-coherent DMA makes KVM honour MTRRs).
const MSR_IA32_MISC_ENABLE = 0x1a0,
  MSR_MTRR_DEF_TYPE = 0x2ff;

/** Puts the boot vCPU in 64-bit mode at the kernel's 64-bit entry with RSI = boot_params. */
export function enterLongMode(vcpu: Vcpu, layout: LinuxBootLayout): void {
  const data = seg(BOOT_DS, 0x3, 0);
  vcpu.setSregs({
    cs: seg(BOOT_CS, 0xb, 1),
    ds: data,
    es: data,
    fs: data,
    gs: data,
    ss: data,
    tr: { base: 0, limit: 0xffff, selector: 0x20, type: 0xb, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0 },
    gdt: { base: GDT_ADDR, limit: GDT_ENTRIES.length * 8 - 1 },
    idt: { base: 0, limit: 0 },
    cr0: 0x80000011, // PG | ET | PE
    cr3: PML4_ADDR,
    cr4: 0x20, // PAE
    efer: 0x500, // LMA | LME
  });
  vcpu.setRegs(bootRegs({ rsi: layout.bootParams, rsp: BOOT_STACK, rbp: BOOT_STACK, rip: layout.entry }));
  native().kvmSetFpu(vcpu.fd, { fcw: 0x37f, mxcsr: 0x1f80 });
  vcpu.setMsrs([
    { index: MSR_IA32_MISC_ENABLE, data: 1 },
    { index: MSR_MTRR_DEF_TYPE, data: 0x806 },
  ]);
}

/** The command line as the guest gets it (whitespace normalised; nothing is added). */
export function linuxCmdline(cmdline: string): string {
  return cmdline.split(/\s+/).filter(Boolean).join(' ');
}

export const RESET_VECTOR = 0xffff0;
/** mov al, 6; mov dx, 0xcf9; out dx, al; 1: hlt; jmp 1b */
export const RESET_VECTOR_STUB = Uint8Array.from([0xb0, 0x06, 0xba, 0xf9, 0x0c, 0xee, 0xf4, 0xeb, 0xfd]);

/** True when the image carries the boot protocol's "HdrS" signature (a bzImage). */
export function isBzImage(image: Uint8Array): boolean {
  return (
    image.length >= 0x270 &&
    new DataView(image.buffer, image.byteOffset, image.byteLength).getUint32(BP.header, true) === HDRS
  );
}
