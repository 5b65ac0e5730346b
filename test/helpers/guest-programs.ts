// What tests need around tsvmm's Linux guest programs (guest/linux/): the outputs they should print,
// recomputed here from the programs' definitions, parsers for their lines, and a modules directory for a
// Linux guest that also loads the Debian kernel's VFIO modules (the guest's own VFIO).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { nvmePattern } from '../../testhost/devices.js';
import { linuxProgramPath } from '../../machine/loader/initramfs.js';

const M64 = (1n << 64n) - 1n;

/** splitmix64's finaliser, as dirty-checksum.c's mix(). */
function mix(z: bigint): bigint {
  z = (z + 0x9e3779b97f4a7c15n) & M64;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64;
  return z ^ (z >> 31n);
}

/** The "pass N sum S" chain dirty-checksum prints for a buffer of `bytes`, passes 1..`passes` (hex, 0x-prefixed). */
export function dirtyChecksumChain(bytes: number, passes: number): string[] {
  const words = BigInt(bytes / 8);
  const out: string[] = [];
  let chain = 0n;
  for (let n = 1n; n <= BigInt(passes); n++) {
    let sum = 0n;
    for (let i = 0n; i < words; i++) sum += mix((n << 32n) + i);
    chain = mix(chain ^ (sum & M64));
    out.push('0x' + chain.toString(16).padStart(16, '0'));
  }
  return out;
}

/**
 * The same chain from the dirty-checksum binary run here (fast for big buffers: a 64 MiB pass takes the model
 * above seconds); the unit tests prove the binary and the model agree.
 */
export function dirtyChecksumChainNative(bytes: number, passes: number): string[] {
  const r = spawnSync(linuxProgramPath('dirty-checksum'), ['-p', String(passes), String(bytes)], { encoding: 'utf8' });
  assert.equal(r.status, 0, `dirty-checksum -p ${passes} ${bytes} failed here: ${r.stdout}${r.stderr}`);
  return parseDirtyChecksum(r.stdout).passes.map((p) => p.sum);
}

export interface DirtyChecksumRun {
  /** Pass numbers and their chained sums, in the order printed. */
  passes: { n: number; sum: string }[];
  /** Every "dirty-checksum error ..." line. */
  errors: string[];
}

/** dirty-checksum's lines in a serial log (other lines ignored). */
export function parseDirtyChecksum(text: string): DirtyChecksumRun {
  const passes: { n: number; sum: string }[] = [];
  const errors: string[] = [];
  for (const raw of text.split('\n')) {
    const l = raw.replace(/\r$/, '');
    const m = /^pass (\d+) sum (0x[0-9a-f]{16})$/.exec(l);
    if (m) passes.push({ n: Number(m[1]), sum: m[2]! });
    else if (l.startsWith('dirty-checksum error')) errors.push(l);
  }
  return { passes, errors };
}

/**
 * Checks a run: no error line, passes strictly consecutive from `from` (1 for a fresh start), and, when `expect`
 * (dirtyChecksumChain's output) is given, every sum equal to it. Returns the number of passes seen.
 */
export function checkDirtyChecksum(text: string, opts: { from?: number; expect?: string[] } = {}): number {
  const r = parseDirtyChecksum(text);
  assert.deepEqual(r.errors, [], `dirty-checksum reported errors\n${text}`);
  assert.ok(r.passes.length > 0, `no "pass N sum S" line\n${text}`);
  const from = opts.from ?? r.passes[0]!.n;
  r.passes.forEach((p, i) => {
    assert.equal(p.n, from + i, `pass numbers are not consecutive at line ${i}\n${text}`);
    if (!opts.expect) return;
    assert.ok(p.n <= opts.expect.length, `pass ${p.n}: only ${opts.expect.length} passes recomputed (ask for more)`);
    assert.equal(p.sum, opts.expect[p.n - 1], `pass ${p.n}: the chained sum differs from the recomputed one`);
  });
  return r.passes.length;
}

/** sha256 of block `n` (of `bs` bytes) of the nvme image the test host's outer machine wrote. */
export function nvmeBlockSha256(n: number, bs = 4096): string {
  const img = nvmePattern();
  assert.ok((n + 1) * bs <= img.length, `block ${n} of ${bs} bytes is past the ${img.length}-byte image`);
  return createHash('sha256')
    .update(img.subarray(n * bs, (n + 1) * bs))
    .digest('hex');
}

/** nvme-read's "nvme-read block N sha256 H" lines as block → hash. */
export function parseNvmeReadHashes(text: string): Map<number, string> {
  const out = new Map<number, string>();
  for (const m of text.matchAll(/^nvme-read block (\d+) sha256 ([0-9a-f]{64})\r?$/gm)) out.set(Number(m[1]), m[2]!);
  return out;
}

/** The Debian kernel's VFIO modules for a guest's own VFIO (vfio-pci, type1), in load order. */
export const GUEST_VFIO_MODULES = ['irqbypass.ko', 'vfio.ko', 'vfio_iommu_type1.ko', 'vfio_pci_core.ko', 'vfio_pci.ko'];

/**
 * A modules directory for a Linux guest: the cached kernel's guest-modules/ plus `extra` modules taken from the
 * host's own modules/ (the same kernel: the test host loads vfio from there), written under `outDir`.
 */
export function guestModulesWith(guestModules: string, extra: readonly string[], outDir: string): string {
  const hostModules = join(dirname(guestModules), 'modules');
  const dir = join(outDir, `guest-modules-${process.pid}-${Date.now()}`);
  mkdirSync(dir, { recursive: true });
  const order = readFileSync(join(guestModules, 'modules.order'), 'utf8').split('\n').filter(Boolean);
  for (const m of order) copyFileSync(join(guestModules, m), join(dir, m));
  for (const m of extra) {
    const src = join(hostModules, m);
    assert.ok(
      existsSync(src),
      `${src} not found: the cached kernel has no ${m} (re-fetch it: tsvmm testhost build-kernel)`,
    );
    copyFileSync(src, join(dir, m));
    if (!order.includes(m)) order.push(m);
  }
  writeFileSync(join(dir, 'modules.order'), order.join('\n') + '\n');
  return dir;
}
