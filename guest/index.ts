// Where the test guest's images are, for tests and the CLI. Paths are absolute, under the
// project root (core/paths.ts).
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { projectRoot } from '../core/paths.js';

export interface GuestPaths {
  /** Multiboot v1 ELF32 (QEMU -kernel, tsvmm kernel.format "multiboot"/"auto"). */
  elf: string;
  /** The same program as a flat binary (tsvmm kernel.format "flat"). */
  bin: string;
  /** GuestImageInfo for the flat binary. */
  json: string;
}

/** Contents of tsvmm-guest.json: how to load and enter the flat binary. */
export interface GuestImageInfo {
  /** Physical address of the binary's first byte. */
  loadAddress: number;
  /** Physical entry address (multiboot machine state: EAX = 0x2BADB002, EBX = info). */
  entry: number;
  /** Offset of the multiboot header within the binary. */
  multibootHeaderOffset: number;
  /** First physical address past the image including .bss (which the guest clears itself). */
  end: number;
}

export const guestSourceDir = resolve(projectRoot, 'guest/src');
export const guestOutDir = resolve(projectRoot, 'guest/out');

export function guestPaths(): GuestPaths {
  return {
    elf: resolve(guestOutDir, 'tsvmm-guest.elf'),
    bin: resolve(guestOutDir, 'tsvmm-guest.bin'),
    json: resolve(guestOutDir, 'tsvmm-guest.json'),
  };
}

/** Reads tsvmm-guest.json (throws if the guest has not been built: run `npm run build`). */
export function readGuestImageInfo(): GuestImageInfo {
  return JSON.parse(readFileSync(guestPaths().json, 'utf8')) as GuestImageInfo;
}
