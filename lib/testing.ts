// `tsvmm/testing`: what an integration test needs besides the VM itself — the nested KVM+VFIO test host, the
// test guest shipped in the package, a Linux guest whose /init runs a script, and helpers for serial lines.
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { TsvmmError } from '../core/errors.js';
import { projectRoot } from '../core/paths.js';
import type { VmConfig } from '../generated/config-types.js';
import type { HostDevice } from '../testhost/index.js';
import { cachedDebianKernel } from '../testhost/kernel.js';

export {
  runInTestHost,
  DEVICE_SETS,
  type HostDevice,
  type KernelKind,
  type TestHostOptions,
  type TestHostResult,
} from '../testhost/index.js';

// ---- the test guest ----

/** The multiboot test guest built into the package (guest/out): `kernel: { path: testGuest.elf }`. */
export const testGuest: {
  /** Multiboot v1 ELF32 (kernel.format "auto" or "multiboot"). */
  readonly elf: string;
  /** The same program as a flat binary (kernel.format "flat", with loadAddress/entry from `json`). */
  readonly bin: string;
  /** How to load the flat binary: {loadAddress, entry, multibootHeaderOffset, end}. */
  readonly json: string;
} = Object.freeze({
  elf: resolve(projectRoot, 'guest/out/tsvmm-guest.elf'),
  bin: resolve(projectRoot, 'guest/out/tsvmm-guest.bin'),
  json: resolve(projectRoot, 'guest/out/tsvmm-guest.json'),
});

/** One `PASS name` / `FAIL name: why` line of the test guest. */
export interface GuestResult {
  name: string;
  pass: boolean;
  why?: string;
}

/** The test guest's result lines in serial output, in order. */
export function guestResults(text: string): GuestResult[] {
  const out: GuestResult[] = [];
  for (const l of lines(text)) {
    const m = /^(PASS|FAIL) (\S+?)(?::\s*(.*))?$/.exec(l);
    if (!m) continue;
    out.push(m[1] === 'PASS' ? { name: m[2]!, pass: true } : { name: m[2]!, pass: false, why: m[3] ?? '' });
  }
  return out;
}

// ---- inside the test host ----

/** True when this process runs inside the test host (`runInTestHost` / `tsvmm testhost run`). */
export const inTestHost = (): boolean => process.env.TSVMM_TESTHOST === '1';

function requireTestHost(what: string): void {
  if (!inTestHost())
    throw new TsvmmError('ERR_USAGE', `${what}: not inside the test host`, {
      fix: 'run the test through runInTestHost() from tsvmm/testing, or `npx tsvmm testhost run -- <command>`',
    });
}

/** The devices the test host bound to vfio-pci (name → {bdf, group, vfioGroup, vfioCdev, …}). */
export function testHostDevices(): Record<string, HostDevice> {
  requireTestHost('testHostDevices()');
  return JSON.parse(process.env.TSVMM_TESTHOST_DEVICES ?? '{}') as Record<string, HostDevice>;
}

/** One test host device by set name ('edu', 'nvme', 'e1000e', …); throws if the host was booted without it. */
export function testHostDevice(name: string): HostDevice {
  const d = testHostDevices()[name];
  if (!d)
    throw new TsvmmError('ERR_USAGE', `the test host has no '${name}' device`, {
      fix: `boot it with that device set (runInTestHost({ devices: ['${name}'] }) or --devices ${name})`,
    });
  return d;
}

/** The Debian kernel the test host boots (cached outside, visible inside read-only), with its guest modules. */
export function testHostKernel(): { image: string; modules?: string; version: string } {
  const run = process.env.TSVMM_TESTHOST_RUN_DIR;
  // Inside, HOME is a tmpfs: the cache is the one the run dir lives in (<cache>/runs/<run>).
  if (inTestHost() && run && !process.env.TSVMM_CACHE_DIR) process.env.TSVMM_CACHE_DIR = dirname(dirname(run));
  const k = cachedDebianKernel();
  if (!k)
    throw new TsvmmError('ERR_CONFIG', 'no cached Debian kernel for a Linux guest', {
      fix: 'fetch it once: npx tsvmm testhost build-kernel --kernel debian',
    });
  return { image: k.image, version: k.version, ...(k.guestModules ? { modules: k.guestModules } : {}) };
}

// ---- a Linux guest running a script ----

export interface LinuxGuestOptions {
  /** A bzImage path, or 'testhost' for the test host's cached Debian kernel (with its guest modules). */
  kernel: string;
  /** Shell script (busybox sh) that /init runs; its exit status ends the VM; then the guest powers off. */
  script: string;
  /** Guest RAM (default "256M"). */
  memory?: string | number;
  vcpus?: number;
  /** Assigned devices, as in the config's `devices`. */
  devices?: NonNullable<VmConfig['devices']>;
  /** A directory with modules.order and the modules /init loads in that order (default: the test host kernel's). */
  modules?: string;
  /** A statically linked busybox (default /bin/busybox from busybox-static). */
  busybox?: string;
  /** tsvmm's guest programs to put in /bin (dirty-checksum, vfio-edu, nvme-read, mtty-loop: docs/linux.md). */
  programs?: NonNullable<VmConfig['kernel']['initramfs']>['programs'];
  /** Host files to copy into the initramfs ({path, source}; executables statically linked). */
  files?: NonNullable<VmConfig['kernel']['initramfs']>['files'];
  /** Kernel command line (default "console=ttyS0 quiet"). */
  cmdline?: string;
  name?: string;
}

/** A config for a Linux guest whose /init runs `script` in a busybox initramfs built at start-up. */
export function linuxGuest(opts: LinuxGuestOptions): VmConfig {
  let path = opts.kernel;
  let modules = opts.modules;
  if (opts.kernel === 'testhost') {
    const k = testHostKernel();
    path = k.image;
    modules ??= k.modules;
  } else if (!existsSync(opts.kernel))
    throw new TsvmmError('ERR_CONFIG', `linuxGuest: kernel '${opts.kernel}' does not exist`, {
      fix: "give a bzImage path, or 'testhost' for the test host's Debian kernel",
    });
  return {
    name: opts.name ?? 'linux',
    memory: opts.memory ?? '256M',
    ...(opts.vcpus !== undefined ? { vcpus: opts.vcpus } : {}),
    kernel: {
      path,
      format: 'linux',
      initramfs: {
        script: opts.script,
        ...(modules !== undefined ? { modules } : {}),
        ...(opts.busybox !== undefined ? { busybox: opts.busybox } : {}),
        ...(opts.programs !== undefined ? { programs: opts.programs } : {}),
        ...(opts.files !== undefined ? { files: opts.files } : {}),
      },
    },
    cmdline: opts.cmdline ?? 'console=ttyS0 quiet',
    ...(opts.devices ? { devices: opts.devices } : {}),
  };
}

// ---- serial lines ----

/** Complete lines of serial output (CR LF or LF); a last line without its newline is left out (still arriving). */
export function lines(text: string): string[] {
  const all = text.split('\n');
  all.pop();
  return all.map((l) => (l.endsWith('\r') ? l.slice(0, -1) : l));
}

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * A pattern that matches a whole line (up to its newline) containing `pattern` (a string: literally): for
 * `waitForSerial`, so that /count=(\d+)/ cannot match "count=1" while "count=12\n" is still arriving.
 * The pattern's capture groups keep their numbers.
 */
export function linePattern(pattern: string | RegExp): RegExp {
  const src = typeof pattern === 'string' ? escape(pattern) : pattern.source;
  const flags = typeof pattern === 'string' ? '' : pattern.flags.replace(/[gmy]/g, '');
  return new RegExp(`^[^\\n]*?(?:${src})[^\\n]*\\n`, `${flags}m`);
}

/** What `waitForLine` needs of a VM (the library's `Vm` has it). */
export interface SerialSource {
  waitForSerial(
    pattern: string | RegExp,
    opts?: { timeoutMs?: number; signal?: AbortSignal; from?: number },
  ): Promise<RegExpMatchArray>;
}

/** Waits for a complete serial line containing `pattern`; resolves with the match (match[0] is the whole line). */
export function waitForLine(
  vm: SerialSource,
  pattern: string | RegExp,
  opts?: { timeoutMs?: number; signal?: AbortSignal; from?: number },
): Promise<RegExpMatchArray> {
  return vm.waitForSerial(linePattern(pattern), opts);
}

/** `key=value` words of a line (or of every line of a text: later ones win): "edu msi count=3 ok" → {count: '3'}. */
export function keyValues(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of text.matchAll(/(?:^|\s)([A-Za-z_][\w.-]*)=("[^"\n]*"|\S*)/g))
    out[m[1]!] = m[2]!.startsWith('"') ? m[2]!.slice(1, -1) : m[2]!;
  return out;
}
