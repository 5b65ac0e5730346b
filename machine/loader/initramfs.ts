// A tiny initramfs for Linux guests, built in memory (no cpio binary needed): Debian's static
// busybox, optional kernel modules, and an /init that mounts /proc, /sys and /dev, loads the
// modules, runs the script from the config, then powers the VM off (reboots it without ACPI: both
// end the VM with 0). The script's status comes
// out as tsvmm's: 0 powers off through ACPI (tsvmm exits 0), anything else is written to the
// debug-exit port through /dev/port (tsvmm exits with it). Extra files: tsvmm's own static guest programs
// (guest/linux/, built into guest/out/linux/) in /bin, and any host file at a path of the config's choosing.
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join, posix, resolve } from 'node:path';
import { projectRoot } from '../../core/paths.js';
import { LoaderError } from './multiboot.js';

/** tsvmm's static Linux guest programs (guest/linux/NAME.c), which `programs` puts in /bin. */
export const LINUX_PROGRAMS = ['dirty-checksum', 'vfio-edu', 'nvme-read', 'mtty-loop'] as const;
export type LinuxProgram = (typeof LINUX_PROGRAMS)[number];

/** Where `npm run build` puts the guest programs. */
export const linuxProgramsDir = (): string => resolve(projectRoot, 'guest/out/linux');
export const linuxProgramPath = (name: LinuxProgram): string => join(linuxProgramsDir(), name);

export const DEFAULT_BUSYBOX = '/bin/busybox';

export interface CpioEntry {
  name: string;
  /** Full st_mode: type bits and permissions (0o100755 file, 0o040755 dir, 0o020600 char device). */
  mode: number;
  data?: Uint8Array;
  /** Device number for device nodes. */
  rdev?: { major: number; minor: number };
}

const S_IFDIR = 0o040000,
  S_IFREG = 0o100000,
  S_IFCHR = 0o020000;

/** An archive in the "newc" format the kernel unpacks (usr/gen_init_cpio's output), with its trailer. */
export function cpioNewc(entries: CpioEntry[]): Uint8Array {
  const chunks: Uint8Array[] = [];
  let size = 0;
  const push = (b: Uint8Array) => {
    chunks.push(b);
    size += b.length;
    const pad = (4 - (size % 4)) % 4;
    if (pad) {
      chunks.push(new Uint8Array(pad));
      size += pad;
    }
  };
  const h8 = (n: number) => (n >>> 0).toString(16).padStart(8, '0');
  const enc = new TextEncoder();
  [...entries, { name: 'TRAILER!!!', mode: 0 }].forEach((e, i) => {
    const name = enc.encode(e.name + '\0');
    const data = e.data ?? new Uint8Array(0);
    const isTrailer = e.name === 'TRAILER!!!';
    const fields = [
      isTrailer ? 0 : i + 1,
      e.mode,
      0,
      0,
      (e.mode & S_IFDIR) === S_IFDIR ? 2 : 1,
      0,
      data.length,
      0,
      0,
      e.rdev?.major ?? 0,
      e.rdev?.minor ?? 0,
      name.length,
      0,
    ];
    const header = enc.encode('070701' + fields.map(h8).join(''));
    const hn = new Uint8Array(header.length + name.length);
    hn.set(header);
    hn.set(name, header.length);
    push(hn);
    if (data.length) push(data);
  });
  const out = new Uint8Array(size);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}

/** /init of the initramfs (busybox sh). The config's script is /script. */
export const INIT_SCRIPT = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs dev /dev 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
if [ -f /modules/modules.order ]; then
  for m in $(cat /modules/modules.order); do insmod "/modules/$m" || echo "tsvmm-init: insmod $m failed"; done
fi
echo "tsvmm-init: running /script"
/bin/sh /script
rc=$?
echo "tsvmm-init: script exited with status $rc"
sync
if [ "$rc" != 0 ]; then
  # A failing script ends the VM with its status: one byte to the debug-exit port (0xf4 = 244).
  printf "\\\\$(printf %o $((rc & 255)))" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
fi
# Without ACPI (acpi=off) Linux cannot power off: reboot instead, which tsvmm also turns into an exit.
if [ -d /sys/firmware/acpi/tables ]; then poweroff -f; else reboot -f; fi
sleep 10
`;

export interface InitramfsOptions {
  /** Shell script run by /init (busybox sh). */
  script: string;
  /** A directory with kernel modules and a modules.order naming them in load order. */
  modulesDir?: string;
  /** A statically linked busybox (default /bin/busybox from Debian's busybox-static). */
  busybox?: string;
  /** tsvmm's guest programs to put in /bin (guest/out/linux/NAME). */
  programs?: readonly string[];
  /** Host files to copy in: `path` absolute in the initramfs, `source` on the host (permission bits kept). */
  files?: readonly InitramfsFile[];
}

export interface InitramfsFile {
  path: string;
  source: string;
}

/** Paths /init and the archive itself own: a file there would break the boot. */
const RESERVED = new Set(['init', 'script', 'bin/busybox', 'dev/console']);

const isElf = (b: Uint8Array) => b.length >= 4 && b[0] === 0x7f && b[1] === 0x45 && b[2] === 0x4c && b[3] === 0x46;

/** An ELF that names a program interpreter (PT_INTERP): dynamically linked. */
function isDynamicElf(bytes: Uint8Array): boolean {
  if (bytes.length < 64 || !isElf(bytes) || bytes[4] !== 2) return false;
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const phoff = Number(v.getBigUint64(32, true)),
    phentsize = v.getUint16(54, true),
    phnum = v.getUint16(56, true);
  for (let i = 0; i < phnum; i++) {
    const p = phoff + i * phentsize;
    if (p + 4 <= bytes.length && v.getUint32(p, true) === 3 /* PT_INTERP */) return true;
  }
  return false;
}

/** Checks that `path` is a static ELF (a dynamic busybox would find no libc in the initramfs). */
function checkStaticElf(bytes: Uint8Array, path: string): void {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 64 || v.getUint32(0, false) !== 0x7f454c46)
    throw new LoaderError(`${path}: not an ELF executable (need a static busybox: apt-get install busybox-static)`);
  if (bytes[4] !== 2) throw new LoaderError(`${path}: not a 64-bit executable (need the amd64 busybox-static)`);
  if (isDynamicElf(bytes))
    throw new LoaderError(
      `${path}: dynamically linked; the initramfs has no libc: install busybox-static (apt-get install busybox-static), which replaces it with a static one`,
    );
}

/** Builds the initramfs (uncompressed newc: the guest spends no time inflating it). */
export function buildInitramfs(o: InitramfsOptions): Uint8Array {
  const busyboxPath = o.busybox ?? DEFAULT_BUSYBOX;
  if (!existsSync(busyboxPath))
    throw new LoaderError(
      `initramfs: ${busyboxPath} not found: install a static busybox (apt-get install busybox-static) or set kernel.initramfs.busybox`,
    );
  const busybox = new Uint8Array(readFileSync(busyboxPath));
  checkStaticElf(busybox, busyboxPath);
  const enc = new TextEncoder();
  const dir = (name: string): CpioEntry => ({ name, mode: S_IFDIR | 0o755 });
  const entries: CpioEntry[] = [
    dir('bin'),
    dir('dev'),
    dir('proc'),
    dir('sys'),
    dir('tmp'),
    dir('run'),
    // The kernel opens /dev/console for init's stdio before anything is mounted.
    { name: 'dev/console', mode: S_IFCHR | 0o600, rdev: { major: 5, minor: 1 } },
    { name: 'bin/busybox', mode: S_IFREG | 0o755, data: busybox },
    { name: 'init', mode: S_IFREG | 0o755, data: enc.encode(INIT_SCRIPT) },
    { name: 'script', mode: S_IFREG | 0o755, data: enc.encode(o.script.endsWith('\n') ? o.script : o.script + '\n') },
  ];
  if (o.modulesDir) {
    const order = join(o.modulesDir, 'modules.order');
    if (!existsSync(order))
      throw new LoaderError(
        `initramfs: ${order} not found: the modules directory must list its modules in load order in modules.order`,
      );
    entries.push(dir('modules'));
    const names = readFileSync(order, 'utf8')
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean);
    for (const n of names) {
      const f = join(o.modulesDir, n);
      if (!existsSync(f) || !statSync(f).isFile()) {
        throw new LoaderError(
          `initramfs: ${f} (listed in ${order}) not found; modules present: ${
            readdirSync(o.modulesDir)
              .filter((x) => x.endsWith('.ko'))
              .join(', ') || 'none'
          }`,
        );
      }
      if (n.includes('/')) throw new LoaderError(`initramfs: ${order}: '${n}': list file names, not paths`);
      entries.push({ name: `modules/${n}`, mode: S_IFREG | 0o644, data: new Uint8Array(readFileSync(f)) });
    }
    entries.push({ name: 'modules/modules.order', mode: S_IFREG | 0o644, data: enc.encode(names.join('\n') + '\n') });
  }
  entries.push(...extraFiles(o, entries));
  return cpioNewc(entries);
}

/** The programs' and files' entries, with the directories they need that `existing` lacks. */
function extraFiles(o: InitramfsOptions, existing: readonly CpioEntry[]): CpioEntry[] {
  const wanted: { name: string; source: string; what: string }[] = [];
  for (const p of o.programs ?? []) {
    if (!(LINUX_PROGRAMS as readonly string[]).includes(p))
      throw new LoaderError(
        `initramfs: program '${p}' is not one of tsvmm's guest programs (${LINUX_PROGRAMS.join(', ')})`,
      );
    const source = linuxProgramPath(p as LinuxProgram);
    if (!existsSync(source))
      throw new LoaderError(
        `initramfs: program ${p}: ${source} not found: build the guest programs (npm run build; they need gcc and libc6-dev's static libc.a)`,
      );
    wanted.push({ name: `bin/${p}`, source, what: `program ${p}` });
  }
  (o.files ?? []).forEach((f, i) => {
    const what = `files[${i}] (${f.path})`;
    if (!f.path.startsWith('/') || f.path.includes('\0'))
      throw new LoaderError(`initramfs: ${what}: the path must be absolute, e.g. /bin/tool`);
    const name = posix.normalize(f.path).replace(/^\/+/, '').replace(/\/+$/, '');
    if (!name || name.split('/').includes('..'))
      throw new LoaderError(`initramfs: ${what}: the path must name a file inside the initramfs`);
    wanted.push({ name, source: f.source, what });
  });
  const taken = new Map<string, string>(existing.map((e) => [e.name, 'the initramfs itself']));
  const out: CpioEntry[] = [];
  for (const w of wanted) {
    if (RESERVED.has(w.name) || w.name.startsWith('modules/'))
      throw new LoaderError(`initramfs: ${w.what}: /${w.name} belongs to the initramfs itself: choose another path`);
    const before = taken.get(w.name);
    if (before) throw new LoaderError(`initramfs: ${w.what}: /${w.name} is given twice (also by ${before})`);
    if (!existsSync(w.source)) throw new LoaderError(`initramfs: ${w.what}: source ${w.source} does not exist`);
    const st = statSync(w.source);
    if (!st.isFile()) throw new LoaderError(`initramfs: ${w.what}: source ${w.source} is not a regular file`);
    const data = new Uint8Array(readFileSync(w.source));
    if (isDynamicElf(data))
      throw new LoaderError(
        `initramfs: ${w.what}: ${w.source} is dynamically linked; the initramfs has no libc: link it with -static`,
      );
    // Parent directories first (the kernel's unpacker does not make them).
    const parts = w.name.split('/');
    for (let i = 1; i < parts.length; i++) {
      const d = parts.slice(0, i).join('/');
      const owner = taken.get(d);
      if (owner === undefined) {
        out.push({ name: d, mode: S_IFDIR | 0o755 });
        taken.set(d, 'a directory');
      } else if (!existing.some((e) => e.name === d && (e.mode & S_IFDIR) === S_IFDIR) && owner !== 'a directory')
        throw new LoaderError(`initramfs: ${w.what}: /${d} is a file (${owner}), not a directory`);
    }
    out.push({ name: w.name, mode: S_IFREG | (st.mode & 0o7777), data });
    taken.set(w.name, w.what);
  }
  return out;
}
