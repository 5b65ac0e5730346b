// Multiboot (v1) loading of ELF32 kernels, and flat binaries entered the same way: 32-bit
// protected mode, paging off, flat segments, EAX = 0x2BADB002, EBX = the multiboot info.
// QEMU's -kernel loads the same images, so a guest can run side by side under both.
import { TsvmmError, type TsvmmErrorOptions } from '../../core/errors.js';
import type { Vcpu } from '../../core/kvm/vcpu.js';
import type { Regs } from '../../core/native.js';

export const MULTIBOOT_HEADER_MAGIC = 0x1badb002;
export const MULTIBOOT_BOOTLOADER_MAGIC = 0x2badb002;

export class LoaderError extends TsvmmError {
  constructor(message: string, opts?: TsvmmErrorOptions) {
    super('ERR_LOADER', message, opts);
  }
}

export interface LoadedImage {
  entry: number;
  end: number;
}
export interface E820Entry {
  addr: number;
  size: number;
  type: 1 | 2;
}

/** Copies an ELF32 image's PT_LOAD segments into guest RAM (by physical address). */
export function loadElf32(image: Uint8Array, ram: Uint8Array, path: string): LoadedImage {
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (image.length < 52 || v.getUint32(0, false) !== 0x7f454c46) throw new LoaderError(`${path}: not an ELF file`);
  if (image[4] !== 1)
    throw new LoaderError(`${path}: ELF64 is not loadable by multiboot v1 (link it as ELF32, e.g. -m elf_i386)`);
  if (v.getUint16(18, true) !== 3) throw new LoaderError(`${path}: ELF machine is not i386`);
  const phoff = v.getUint32(28, true),
    phentsize = v.getUint16(42, true),
    phnum = v.getUint16(44, true);
  let end = 0;
  for (let i = 0; i < phnum; i++) {
    const p = phoff + i * phentsize;
    if (p + 32 > image.length) throw new LoaderError(`${path}: truncated program header ${i}`);
    if (v.getUint32(p, true) !== 1) continue; // PT_LOAD
    const off = v.getUint32(p + 4, true),
      paddr = v.getUint32(p + 12, true);
    const filesz = v.getUint32(p + 16, true),
      memsz = v.getUint32(p + 20, true);
    if (off + filesz > image.length) throw new LoaderError(`${path}: segment ${i} extends past the end of the file`);
    if (paddr + memsz > ram.length)
      throw new LoaderError(
        `${path}: segment ${i} at 0x${paddr.toString(16)} (+0x${memsz.toString(16)}) does not fit in ${ram.length >> 20} MiB of RAM`,
        { fix: 'give the VM more memory' },
      );
    ram.set(image.subarray(off, off + filesz), paddr);
    ram.fill(0, paddr + filesz, paddr + memsz);
    end = Math.max(end, paddr + memsz);
  }
  if (end === 0) throw new LoaderError(`${path}: no loadable segments`);
  return { entry: v.getUint32(24, true), end };
}

/** True when the first 8 KiB hold a valid multiboot v1 header. */
export function hasMultibootHeader(image: Uint8Array): boolean {
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  for (let off = 0; off + 12 <= Math.min(image.length, 8192); off += 4) {
    if (v.getUint32(off, true) !== MULTIBOOT_HEADER_MAGIC) continue;
    const flags = v.getUint32(off + 4, true);
    if ((MULTIBOOT_HEADER_MAGIC + flags + v.getUint32(off + 8, true)) >>> 0 === 0) return true;
  }
  return false;
}

/**
 * Writes the multiboot info (mem, cmdline, mmap) at `at` and returns its address.
 * Layout: info (88 bytes) then the memory map then the command line.
 */
export function writeMultibootInfo(ram: Uint8Array, at: number, cmdline: string, e820: E820Entry[]): number {
  const v = new DataView(ram.buffer, ram.byteOffset, ram.byteLength);
  ram.fill(0, at, at + 88);
  const mmapAt = at + 88;
  e820.forEach((e, i) => {
    const p = mmapAt + i * 24;
    v.setUint32(p, 20, true); // size of the rest of the entry
    v.setBigUint64(p + 4, BigInt(e.addr), true);
    v.setBigUint64(p + 12, BigInt(e.size), true);
    v.setUint32(p + 20, e.type, true);
  });
  const cmdAt = mmapAt + e820.length * 24;
  const cmd = new TextEncoder().encode(cmdline);
  ram.set(cmd, cmdAt);
  ram[cmdAt + cmd.length] = 0;
  const low = e820.find((e) => e.addr === 0 && e.type === 1);
  const high = e820.find((e) => e.addr === 0x100000 && e.type === 1);
  v.setUint32(at, 0x1 | 0x4 | 0x40, true); // mem_*, cmdline, mmap_*
  v.setUint32(at + 4, low ? Math.min(low.size, 640 * 1024) >> 10 : 0, true);
  v.setUint32(at + 8, high ? Math.floor(high.size / 1024) : 0, true);
  v.setUint32(at + 16, cmdAt, true);
  v.setUint32(at + 44, e820.length * 24, true);
  v.setUint32(at + 48, mmapAt, true);
  return at;
}

const flat = (selector: number, type: number) => ({
  base: 0,
  limit: 0xffffffff,
  selector,
  type,
  present: 1,
  dpl: 0,
  db: 1,
  s: 1,
  l: 0,
  g: 1,
  avl: 0,
});

/** Where the boot GDT goes: the start of the reserved area below 1 MiB (e820 type 2). */
export const MULTIBOOT_GDT_ADDR = 0x9fc00;

/**
 * The flat GDT QEMU's multiboot loader and GRUB leave loaded: null, 4 GiB code at 0x08, 4 GiB
 * data at 0x10 (accessed bits set, matching the cached segments below). Multiboot v1 leaves
 * GDTR undefined, but guests written against those loaders reload segments (or take an
 * interrupt) before installing their own, which must not triple-fault.
 */
const BOOT_GDT = [0n, 0x00cf9b000000ffffn, 0x00cf93000000ffffn];

/** Puts the boot vCPU in the multiboot machine state and points it at `entry`; writes the
 *  boot GDT into guest RAM at `gdtAddr` (keep it in reserved memory). */
export function enterProtectedMode(
  vcpu: Vcpu,
  entry: number,
  infoAddr: number,
  ram: Uint8Array,
  gdtAddr = MULTIBOOT_GDT_ADDR,
): void {
  const v = new DataView(ram.buffer, ram.byteOffset, ram.byteLength);
  BOOT_GDT.forEach((d, i) => v.setBigUint64(gdtAddr + 8 * i, d, true));
  const data = flat(0x10, 0x3);
  vcpu.setSregs({
    cs: flat(0x08, 0xb),
    ds: data,
    es: data,
    fs: data,
    gs: data,
    ss: data,
    tr: { base: 0, limit: 0xffff, selector: 0, type: 0xb, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0 },
    gdt: { base: gdtAddr, limit: BOOT_GDT.length * 8 - 1 },
    cr0: 0x11,
    cr3: 0,
    cr4: 0,
    efer: 0,
  });
  vcpu.setRegs(bootRegs({ rax: MULTIBOOT_BOOTLOADER_MAGIC, rbx: infoAddr, rip: entry }));
}

/** The general registers a loader hands the boot vCPU: the ones it names, every other one 0
 *  (RFLAGS: only its reserved bit 1). */
export function bootRegs(set: Partial<Regs>): Regs {
  return {
    rax: 0,
    rbx: 0,
    rcx: 0,
    rdx: 0,
    rsi: 0,
    rdi: 0,
    rsp: 0,
    rbp: 0,
    r8: 0,
    r9: 0,
    r10: 0,
    r11: 0,
    r12: 0,
    r13: 0,
    r14: 0,
    r15: 0,
    rip: 0,
    rflags: 0x2,
    ...set,
  };
}
