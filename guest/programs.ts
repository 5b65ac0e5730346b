// Builds the small static Linux programs that tests run inside Linux guests (guest/linux/*.c →
// guest/out/linux/<name>): `gcc -static`, so the busybox initramfs needs no libc. A config puts them in the
// guest with "kernel": {"initramfs": {"programs": [...]}} (machine/loader/initramfs.ts). Needs gcc and the
// static C library (Debian: libc6-dev's libc.a, which gcc's -m32 multilib set-up for the test guest pulls in).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { projectRoot } from '../core/paths.js';
import { LINUX_PROGRAMS, linuxProgramPath, linuxProgramsDir } from '../machine/loader/initramfs.js';

const CC = process.env.GUEST_LINUX_CC ?? 'gcc';
const CFLAGS = ['-static', '-O2', '-g0', '-std=gnu11', '-Wall', '-Wextra'];
export const linuxProgramSourceDir = join(projectRoot, 'guest/linux');

export class ProgramBuildError extends Error {}

function compile(src: string, out: string): void {
  try {
    execFileSync(CC, [...CFLAGS, '-o', out, src], { cwd: projectRoot, stdio: ['ignore', 'inherit', 'pipe'] });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { status?: number; stderr?: Buffer };
    if (err.code === 'ENOENT') throw new ProgramBuildError(`${CC} not found: the guest programs need gcc`);
    const text = err.stderr?.toString() ?? '';
    process.stderr.write(text);
    const fix = /cannot find -lc\b/.test(text)
      ? ': no static C library (libc.a): install libc6-dev (apt-get install libc6-dev)'
      : '';
    throw new ProgramBuildError(`${CC} ${relative(projectRoot, src)} failed (exit ${err.status ?? '?'})${fix}`);
  }
}

/** Builds every program whose binary is missing, older than its source, or made with other flags. */
export function buildLinuxPrograms(opts: { force?: boolean } = {}): string[] {
  const dir = linuxProgramsDir();
  mkdirSync(dir, { recursive: true });
  const stampPath = join(dir, '.build-stamp');
  const stamp = JSON.stringify({ CC, CFLAGS });
  const sameFlags = existsSync(stampPath) && readFileSync(stampPath, 'utf8') === stamp;
  const built: string[] = [];
  for (const name of LINUX_PROGRAMS) {
    const src = join(linuxProgramSourceDir, `${name}.c`);
    const out = linuxProgramPath(name);
    if (!opts.force && sameFlags && existsSync(out) && statSync(out).mtimeMs >= statSync(src).mtimeMs) continue;
    compile(src, out);
    built.push(name);
  }
  writeFileSync(stampPath, stamp);
  return built;
}
