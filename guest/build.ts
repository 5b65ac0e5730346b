// Builds the test guest (guest/src → guest/out) with the system's gcc and binutils:
// tsvmm-guest.elf (multiboot v1 ELF32, linked at 1 MiB), tsvmm-guest.bin (flat image of the
// same) and tsvmm-guest.json (how to load the flat image); then the Linux guest programs (guest/programs.ts). Run from `npm run build` as
// `node dist/guest/build.js [--force]`; does nothing when the outputs are newer than every
// source and were built with the same commands.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { basename, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { projectRoot } from '../core/paths.js';
import { guestOutDir, guestPaths, guestSourceDir, type GuestImageInfo } from './index.js';
import { buildLinuxPrograms, ProgramBuildError } from './programs.js';

const CC = process.env.GUEST_CC ?? 'gcc';
const LD = process.env.GUEST_LD ?? 'ld';
const OBJCOPY = process.env.GUEST_OBJCOPY ?? 'objcopy';
const CFLAGS = [
  '-m32',
  '-march=i686',
  '-ffreestanding',
  '-fno-pic',
  '-fno-pie',
  '-nostdlib',
  '-O2',
  '-g',
  '-std=gnu11',
  '-Wall',
  '-Wextra',
  '-fno-stack-protector', // no TLS canary in a bare-metal guest
  '-fno-asynchronous-unwind-tables', // no .eh_frame to load
  '-mgeneral-regs-only', // nobody enables SSE/x87 state here
  '-fno-tree-loop-distribute-patterns', // else memset's own loop may become a call to memset
  '-fcf-protection=none',
];
const LDFLAGS = ['-m', 'elf_i386', '-nostdlib', '--build-id=none', '-z', 'noexecstack', '-z', 'max-page-size=0x1000'];
const MULTIBOOT_HEADER_MAGIC = 0x1badb002;

class BuildError extends Error {}

function run(cmd: string, args: string[]): void {
  try {
    execFileSync(cmd, args, { cwd: projectRoot, stdio: ['ignore', 'inherit', 'inherit'] });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { status?: number };
    if (err.code === 'ENOENT')
      throw new BuildError(`${cmd} not found: the test guest needs gcc (with -m32 support) and binutils`);
    throw new BuildError(
      `${cmd} ${args.map((a) => relative(projectRoot, a) || a).join(' ')} failed (exit ${err.status ?? '?'})`,
    );
  }
}

/** Offset of a valid multiboot v1 header (magic + flags + checksum == 0) in the first 8 KiB. */
function findMultibootHeader(image: Uint8Array): number {
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  for (let off = 0; off + 12 <= Math.min(image.length, 8192); off += 4) {
    if (v.getUint32(off, true) !== MULTIBOOT_HEADER_MAGIC) continue;
    if ((MULTIBOOT_HEADER_MAGIC + v.getUint32(off + 4, true) + v.getUint32(off + 8, true)) >>> 0 === 0) return off;
  }
  return -1;
}

/** Load layout from the ELF32 program headers: where the file-backed bytes start, entry, end of bss. */
function elfLayout(elf: Uint8Array): { loadAddress: number; fileEnd: number; end: number; entry: number } {
  const v = new DataView(elf.buffer, elf.byteOffset, elf.byteLength);
  if (v.getUint32(0, false) !== 0x7f454c46 || elf[4] !== 1) throw new BuildError('linker output is not ELF32');
  const phoff = v.getUint32(28, true),
    phentsize = v.getUint16(42, true),
    phnum = v.getUint16(44, true);
  let loadAddress = Infinity,
    fileEnd = 0,
    end = 0;
  for (let i = 0; i < phnum; i++) {
    const p = phoff + i * phentsize;
    if (v.getUint32(p, true) !== 1) continue; // PT_LOAD
    const paddr = v.getUint32(p + 12, true),
      filesz = v.getUint32(p + 16, true),
      memsz = v.getUint32(p + 20, true);
    if (filesz) ((loadAddress = Math.min(loadAddress, paddr)), (fileEnd = Math.max(fileEnd, paddr + filesz)));
    end = Math.max(end, paddr + memsz);
  }
  if (!Number.isFinite(loadAddress)) throw new BuildError('linker output has no loadable bytes');
  return { loadAddress, fileEnd, end, entry: v.getUint32(24, true) };
}

export function buildGuest(opts: { force?: boolean } = {}): 'built' | 'up to date' {
  const out = guestPaths();
  const sources = readdirSync(guestSourceDir)
    .filter((f) => /\.(c|S|h|ld)$/.test(f))
    .map((f) => join(guestSourceDir, f));
  const units = sources.filter((f) => /\.(c|S)$/.test(f)).sort();
  const linkerScript = join(guestSourceDir, 'linker.ld');
  if (!units.length || !existsSync(linkerScript)) throw new BuildError(`${guestSourceDir}: no sources or no linker.ld`);
  const stampPath = join(guestOutDir, '.build-stamp');
  const stamp = JSON.stringify({ CC, LD, OBJCOPY, CFLAGS, LDFLAGS, units: units.map((u) => basename(u)) });

  // Up to date: every output exists, is newer than every source, and came from the same commands.
  const outputs = [out.elf, out.bin, out.json, stampPath];
  if (!opts.force && outputs.every((f) => existsSync(f)) && readFileSync(stampPath, 'utf8') === stamp) {
    const newestSource = Math.max(...sources.map((f) => statSync(f).mtimeMs));
    const oldestOutput = Math.min(...outputs.map((f) => statSync(f).mtimeMs));
    if (oldestOutput >= newestSource) return 'up to date';
  }

  const objDir = join(guestOutDir, 'obj');
  mkdirSync(objDir, { recursive: true });
  const objects = units.map((src) => {
    const obj = join(
      objDir,
      basename(src).replace(/\.(c|S)$/, (m) => (m === '.S' ? '-S.o' : '.o')),
    );
    run(CC, [...CFLAGS, '-c', src, '-o', obj]);
    return obj;
  });
  run(LD, [...LDFLAGS, '-T', linkerScript, '-o', out.elf, ...objects]);
  run(OBJCOPY, ['-O', 'binary', out.elf, out.bin]);

  // Check what the loaders rely on before declaring success.
  const elf = new Uint8Array(readFileSync(out.elf));
  const bin = new Uint8Array(readFileSync(out.bin));
  const layout = elfLayout(elf);
  if (findMultibootHeader(elf) < 0)
    throw new BuildError(`${out.elf}: no multiboot header in the first 8 KiB of the file`);
  const multibootHeaderOffset = findMultibootHeader(bin);
  if (multibootHeaderOffset < 0) throw new BuildError(`${out.bin}: no multiboot header in the first 8 KiB`);
  if (bin.length !== layout.fileEnd - layout.loadAddress)
    throw new BuildError(
      `${out.bin}: ${bin.length} bytes, expected ${layout.fileEnd - layout.loadAddress} (are the sections contiguous?)`,
    );
  if (layout.entry < layout.loadAddress || layout.entry >= layout.fileEnd)
    throw new BuildError(`entry 0x${layout.entry.toString(16)} is outside the image`);
  const info: GuestImageInfo = {
    loadAddress: layout.loadAddress,
    entry: layout.entry,
    multibootHeaderOffset,
    end: layout.end,
  };
  writeFileSync(out.json, JSON.stringify(info, null, 2) + '\n');
  writeFileSync(stampPath, stamp);
  return 'built';
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  try {
    const force = process.argv.includes('--force');
    const r = buildGuest({ force });
    console.log(`guest: ${r} (${relative(projectRoot, guestPaths().elf)}, .bin, .json)`);
    const programs = buildLinuxPrograms({ force });
    console.log(
      `guest programs: ${programs.length ? `built ${programs.join(', ')}` : 'up to date'} (guest/out/linux/)`,
    );
  } catch (e) {
    if (!(e instanceof BuildError) && !(e instanceof ProgramBuildError)) throw e;
    console.error(`guest: build failed: ${e.message}`);
    process.exitCode = 1;
  }
}
