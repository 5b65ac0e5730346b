// The test host's two kernels, fetched/built once and cached:
//  - debian:  Debian's stock linux-image-6.12.*-amd64-unsigned (vfio-pci + type1 as modules, no iommufd);
//  - iommufd: linux-source-6.12 built from allnoconfig + kvm_guest.config + testhost/kernel-testhost.config (iommufd,
//    VFIO cdev, mtty mdev, all built in; nothing the test host does not use).
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { cpus } from 'node:os';
import { basename, join } from 'node:path';
import { aptUpdate, ensurePackages, KERNEL_BUILD_PACKAGES } from './packages.js';
import {
  cacheDir,
  exec,
  kernelFragmentPath,
  type Logger,
  mustExec,
  onInterrupt,
  requireFreeSpace,
  shq,
  stderrLog,
  TestHostError,
} from './util.js';

export type KernelKind = 'debian' | 'iommufd';
export const KERNEL_KINDS: KernelKind[] = ['debian', 'iommufd'];

export interface KernelImage {
  kind: KernelKind;
  /** bzImage / vmlinuz path. */
  image: string;
  /** Modules to insmod, in load order (debian only; the iommufd kernel has everything built in). */
  modules: string[];
  /** Identifies this kernel for the initramfs cache. */
  id: string;
  version: string;
  /** Directory with GUEST_MODULES (+ dependencies) and their modules.order (debian only). */
  guestModules?: string;
}

// Modules the debian kernel needs at boot; their dependencies come from modules.dep.
// vfio_iommu_type1 is request_module()d by vfio at run time, which an initramfs without modprobe can't do.
// uio_pci_generic: a driver that owns DMA, so tests can make an IOMMU group non-viable.
const DEBIAN_MODULES = [
  'arch/x86/kvm/kvm-amd',
  'drivers/vfio/vfio_iommu_type1',
  'drivers/vfio/pci/vfio-pci',
  'net/9p/9pnet_virtio',
  'fs/9p/9p',
  'drivers/uio/uio_pci_generic',
];
// Drivers for Linux *guests* of tsvmm (this same kernel, booted by tsvmm in the host): extracted to guest-modules/
// with their own modules.order, never loaded by the host.
// button + evdev: the ACPI power button (PNP0C0C) that system_powerdown presses, as an input device.
export const GUEST_MODULES = [
  'drivers/iommu/virtio-iommu',
  'drivers/nvme/host/nvme',
  'drivers/net/ethernet/intel/e1000e/e1000e',
  'drivers/acpi/button',
  'drivers/input/evdev',
];

const GiB = 2 ** 30;

// Bump when the build recipe (not the fragment) changes, to invalidate cached iommufd kernels.
const RECIPE = 'iommufd-recipe-2: allnoconfig + kvm_guest.config + fragment, bzImage';

/** Newest linux-image-6.12.N+deb12-amd64-unsigned apt knows about (resolved at run time: old ones vanish). */
export async function resolveDebianKernelPackage(log: Logger): Promise<string | undefined> {
  const search = async () => {
    const r = await exec('apt-cache', [
      'search',
      '--names-only',
      '^linux-image-6\\.12\\.[0-9]+\\+deb12-amd64-unsigned$',
    ]);
    const names = r.stdout
      .split('\n')
      .map((l) => l.split(' ')[0]!)
      .filter((n) => /^linux-image-6\.12\.\d+\+deb12-amd64-unsigned$/.test(n));
    const patch = (n: string) => Number(/^linux-image-6\.12\.(\d+)/.exec(n)![1]);
    return names.sort((a, b) => patch(b) - patch(a))[0];
  };
  let name = await search();
  if (!name) {
    await aptUpdate(log).catch((e: Error) => log(`warning: ${e.message}`));
    name = await search();
  }
  return name;
}

function debianCachedVersions(): string[] {
  return readdirSync(cacheDir())
    .filter((d) => d.startsWith('debian-') && existsSync(join(cacheDir(), d, 'ok')))
    .map((d) => d.slice('debian-'.length))
    .sort((a, b) => Number(b.split('.')[2]!.split('+')[0]) - Number(a.split('.')[2]!.split('+')[0]));
}

function loadDebian(dir: string, kver: string): KernelImage {
  const order = readFileSync(join(dir, 'modules.order'), 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((m) => join(dir, 'modules', m));
  const guest = join(dir, 'guest-modules');
  return {
    kind: 'debian',
    image: join(dir, 'vmlinuz'),
    modules: order,
    id: `debian-${kver}`,
    version: kver,
    ...(existsSync(join(guest, 'modules.order')) ? { guestModules: guest } : {}),
  };
}

/** The newest cached Debian kernel, without apt (e.g. inside the test host), or undefined. */
export function cachedDebianKernel(): KernelImage | undefined {
  const v = debianCachedVersions()[0];
  return v ? loadDebian(join(cacheDir(), `debian-${v}`), v) : undefined;
}

/** Fetch (once) Debian's kernel and the few modules the host needs, decompressed, with their load order. */
export async function ensureDebianKernel(log: Logger = stderrLog): Promise<KernelImage & { downloaded: boolean }> {
  const pkg = await resolveDebianKernelPackage(log);
  const cached = debianCachedVersions();
  if (!pkg) {
    if (cached[0]) {
      log(`warning: apt knows no linux-image-6.12.*+deb12-amd64-unsigned; using cached ${cached[0]}`);
      return { ...loadDebian(join(cacheDir(), `debian-${cached[0]}`), cached[0]), downloaded: false };
    }
    throw new TestHostError(
      'cannot find a Debian kernel package: apt-cache search linux-image-6.12.*+deb12-amd64-unsigned found nothing ' +
        '(is bookworm-security / bookworm-updates in the apt sources, and did apt-get update work?)',
    );
  }
  const kver = pkg.slice('linux-image-'.length, -'-unsigned'.length);
  const dir = join(cacheDir(), `debian-${kver}`);
  // The stamp records the module list too: a changed list re-extracts.
  const stamp = `${pkg}\n${DEBIAN_MODULES.join(' ')}\nguest: ${GUEST_MODULES.join(' ')}\n`;
  if (existsSync(join(dir, 'ok')) && readFileSync(join(dir, 'ok'), 'utf8') === stamp)
    return { ...loadDebian(dir, kver), downloaded: false };

  requireFreeSpace(cacheDir(), 1 * GiB, `the Debian kernel package ${pkg} (~110 MB download, ~500 MB unpacked)`);
  await ensurePackages(['xz-utils'], log);
  removeStaleTmp();
  const tmp = join(cacheDir(), `tmp-debian-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  const unregister = onInterrupt(() => rmSync(tmp, { recursive: true, force: true }));
  try {
    log(`downloading ${pkg}`);
    let dl = await exec('apt-get', ['download', '-q', pkg], { cwd: tmp });
    if (dl.code !== 0) {
      // Stale package lists name a file the mirror no longer has: refresh once and retry.
      await aptUpdate(log, true).catch((e: Error) => log(`warning: ${e.message}`));
      dl = await exec('apt-get', ['download', '-q', pkg], { cwd: tmp });
    }
    const deb = readdirSync(tmp).find((f) => f.endsWith('.deb'));
    if (dl.code !== 0 || !deb) {
      throw new TestHostError(
        `downloading the Debian kernel failed: 'apt-get download ${pkg}' exited ${dl.code}\n` +
          (dl.stderr || dl.stdout).trim().split('\n').slice(-8).join('\n'),
      );
    }
    const x = join(tmp, 'x');
    await mustExec('dpkg', ['-x', join(tmp, deb), x]);
    const modRoot = [join(x, 'lib/modules', kver), join(x, 'usr/lib/modules', kver)].find((p) => existsSync(p));
    const vmlinuz = [join(x, 'boot', `vmlinuz-${kver}`), join(x, 'usr/lib/linux', `vmlinuz-${kver}`)].find((p) =>
      existsSync(p),
    );
    if (!modRoot || !vmlinuz) throw new TestHostError(`${deb} has no vmlinuz-${kver} or lib/modules/${kver}`);

    // modules.dep is made by depmod at install time, not shipped: read each module's .modinfo "depends=" instead.
    const files = new Map<string, string>();
    const walk = (d: string) => {
      for (const e of readdirSync(d, { withFileTypes: true })) {
        if (e.isDirectory()) walk(join(d, e.name));
        else if (/\.ko(\.xz|\.zst|\.gz)?$/.test(e.name)) files.set(modName(e.name), join(d, e.name));
      }
    };
    walk(join(modRoot, 'kernel'));
    const builtin = existsSync(join(modRoot, 'modules.builtin'))
      ? readFileSync(join(modRoot, 'modules.builtin'), 'utf8')
      : '';
    const order: string[] = [];
    const blobs = new Map<string, Buffer>();
    const visit = async (name: string) => {
      if (blobs.has(name)) return;
      const f = files.get(name);
      if (!f) throw new TestHostError(`${pkg}: module ${name} not found`);
      const blob = readModule(f);
      blobs.set(name, blob);
      const dep = /\0depends=([^\0]*)\0/.exec(blob.toString('latin1'))?.[1] ?? '';
      for (const d of dep.split(',').filter(Boolean)) await visit(modName(d));
      order.push(name);
    };
    for (const want of DEBIAN_MODULES) {
      if (!files.has(modName(want)) && builtin.includes(`kernel/${want}.ko`)) continue;
      await visit(modName(want));
    }
    const hostCount = order.length;
    for (const want of GUEST_MODULES) {
      if (!files.has(modName(want)) && builtin.includes(`kernel/${want}.ko`)) continue;
      await visit(modName(want));
    }
    const guestOrder = order.splice(hostCount);
    const stage = join(tmp, 'out');
    mkdirSync(join(stage, 'modules'), { recursive: true });
    copyFileSync(vmlinuz, join(stage, 'vmlinuz'));
    const names = order.map((n) => `${n}.ko`);
    for (const n of order) writeFileSync(join(stage, 'modules', `${n}.ko`), blobs.get(n)!);
    writeFileSync(join(stage, 'modules.order'), names.join('\n') + '\n');
    mkdirSync(join(stage, 'guest-modules'));
    for (const n of guestOrder) writeFileSync(join(stage, 'guest-modules', `${n}.ko`), blobs.get(n)!);
    writeFileSync(join(stage, 'guest-modules', 'modules.order'), guestOrder.map((n) => `${n}.ko\n`).join(''));
    writeFileSync(join(stage, 'ok'), stamp);
    rmSync(dir, { recursive: true, force: true });
    renameSync(stage, dir);
    // Superseded Debian kernels are not needed any more.
    for (const v of debianCachedVersions())
      if (v !== kver) rmSync(join(cacheDir(), `debian-${v}`), { recursive: true, force: true });
    return { ...loadDebian(dir, kver), downloaded: true };
  } finally {
    unregister();
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** kvm-amd.ko.xz, kvm_amd, arch/x86/kvm/kvm-amd → kvm_amd (the kernel treats - and _ alike). */
function modName(s: string): string {
  return basename(s)
    .replace(/\.ko(\.xz|\.zst|\.gz)?$/, '')
    .replace(/-/g, '_');
}

function readModule(file: string): Buffer {
  const tool = file.endsWith('.xz') ? 'xz' : file.endsWith('.zst') ? 'zstd' : file.endsWith('.gz') ? 'gzip' : undefined;
  if (!tool) return readFileSync(file);
  const r = spawnSync(tool, ['-dc', file], { maxBuffer: 256 * 2 ** 20 });
  if (r.status !== 0)
    throw new TestHostError(`${tool} -dc ${file} failed: ${r.stderr?.toString() ?? r.error?.message}`);
  return r.stdout;
}

/** Work dirs of processes that were killed mid-download/build (a kernel tree is GBs). */
function removeStaleTmp(): void {
  for (const d of readdirSync(cacheDir())) {
    const m = /^tmp-(?:debian|build)-(\d+)$/.exec(d);
    if (m && Number(m[1]) !== process.pid && !pidAlive(Number(m[1])))
      rmSync(join(cacheDir(), d), { recursive: true, force: true });
  }
}

/** Cache key of the iommufd kernel: the fragment's content and the recipe. */
export function iommufdKernelKey(): string {
  if (!existsSync(kernelFragmentPath)) throw new TestHostError(`kernel config fragment missing: ${kernelFragmentPath}`);
  return createHash('sha256')
    .update(RECIPE)
    .update('\0')
    .update(readFileSync(kernelFragmentPath))
    .digest('hex')
    .slice(0, 16);
}

export function iommufdKernelDir(): string {
  return join(cacheDir(), `iommufd-${iommufdKernelKey()}`);
}

function loadIommufd(dir: string): KernelImage {
  const version = existsSync(join(dir, 'version')) ? readFileSync(join(dir, 'version'), 'utf8').trim() : 'unknown';
  return { kind: 'iommufd', image: join(dir, 'bzImage'), modules: [], id: basename(dir), version };
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Build (once per fragment hash) the iommufd kernel; several callers at once wait on one build via a lock dir. */
export async function ensureIommufdKernel(
  log: Logger = stderrLog,
  opts: { force?: boolean } = {},
): Promise<KernelImage & { built: boolean; buildSeconds?: number; downloadSeconds?: number }> {
  const dir = iommufdKernelDir();
  if (!opts.force && existsSync(join(dir, 'bzImage'))) return { ...loadIommufd(dir), built: false };

  const lock = `${dir}.lock`;
  for (;;) {
    try {
      mkdirSync(lock);
      writeFileSync(join(lock, 'pid'), String(process.pid));
      break;
    } catch {
      /* held */
    }
    let owner = 0;
    try {
      owner = Number(readFileSync(join(lock, 'pid'), 'utf8'));
    } catch {
      /* being created */
    }
    if (owner && !pidAlive(owner)) {
      rmSync(lock, { recursive: true, force: true });
      continue;
    }
    log(`waiting for another iommufd kernel build (pid ${owner || '?'})`);
    await new Promise((r) => setTimeout(r, 5000));
    if (!opts.force && existsSync(join(dir, 'bzImage'))) return { ...loadIommufd(dir), built: false };
  }
  removeStaleTmp();
  const tmp = join(cacheDir(), `tmp-build-${process.pid}`);
  const logFile = join(cacheDir(), 'iommufd-build.log');
  const unregister = onInterrupt(() => {
    rmSync(tmp, { recursive: true, force: true });
    rmSync(lock, { recursive: true, force: true });
  });
  try {
    await ensurePackages(KERNEL_BUILD_PACKAGES, log);
    requireFreeSpace(
      cacheDir(),
      6 * GiB,
      'building the iommufd kernel (~160 MB download, ~1.5 GB source, ~2 GB objects)',
    );
    rmSync(tmp, { recursive: true, force: true });
    mkdirSync(tmp, { recursive: true });
    writeFileSync(logFile, '');
    const t0 = performance.now();
    await aptUpdate(log).catch((e: Error) => log(`warning: ${e.message}`));
    log('downloading linux-source-6.12');
    const dl = await exec('apt-get', ['download', '-q', 'linux-source-6.12'], { cwd: tmp });
    const deb = readdirSync(tmp).find((f) => f.endsWith('.deb'));
    if (dl.code !== 0 || !deb) {
      throw new TestHostError(
        `downloading the kernel source failed: 'apt-get download linux-source-6.12' exited ${dl.code}\n` +
          (dl.stderr || dl.stdout).trim().split('\n').slice(-8).join('\n'),
      );
    }
    const srcVersion = /^linux-source-6\.12_([^_]+)_/.exec(deb)?.[1] ?? deb;
    // Stream the tarball out of the .deb straight into tar: no 150 MB intermediate copy.
    await mustExec(
      'sh',
      ['-c', `dpkg --fsys-tarfile ${shq(deb)} | tar -xO --wildcards './usr/src/linux-source-*.tar.xz' | tar -xJ`],
      { cwd: tmp, logFile },
    );
    rmSync(join(tmp, deb));
    const downloadSeconds = (performance.now() - t0) / 1000;
    const src = readdirSync(tmp)
      .map((d) => join(tmp, d))
      .find((d) => existsSync(join(d, 'Makefile')));
    if (!src) throw new TestHostError(`linux-source ${srcVersion}: no source tree found after unpacking`);

    const t1 = performance.now();
    const jobs = String(Math.max(1, cpus().length));
    log(
      `building the iommufd kernel from linux-source ${srcVersion} with ${jobs} jobs (~7 min on 2 idle cores); log: ${logFile}`,
    );
    // A minimal base: allnoconfig with kvm_guest.config and the fragment as its preset values (merge_config.sh -n),
    // so every option nobody asked for stays off and the build is a fraction of a defconfig one. olddefconfig is a
    // no-op then; it stays as the step whose output checkConfig holds to the fragment.
    await mustExec('scripts/kconfig/merge_config.sh', ['-n', 'kernel/configs/kvm_guest.config', kernelFragmentPath], {
      cwd: src,
      logFile,
    });
    await mustExec('make', ['olddefconfig'], { cwd: src, logFile });
    checkConfig(readFileSync(join(src, '.config'), 'utf8'));
    const tick = setInterval(
      () => log(`kernel build running (${Math.round((performance.now() - t1) / 1000)} s)`),
      60_000,
    );
    try {
      await mustExec('make', [`-j${jobs}`, 'bzImage'], { cwd: src, logFile });
    } finally {
      clearInterval(tick);
    }
    const buildSeconds = (performance.now() - t1) / 1000;
    const stage = join(tmp, 'out');
    mkdirSync(stage);
    copyFileSync(join(src, 'arch/x86/boot/bzImage'), join(stage, 'bzImage'));
    copyFileSync(join(src, '.config'), join(stage, 'config'));
    copyFileSync(kernelFragmentPath, join(stage, 'kernel-testhost.config'));
    writeFileSync(join(stage, 'version'), `linux-source-6.12 ${srcVersion}\n`);
    rmSync(dir, { recursive: true, force: true });
    renameSync(stage, dir);
    log(
      `iommufd kernel built in ${buildSeconds.toFixed(0)} s (download+unpack ${downloadSeconds.toFixed(0)} s): ${dir}/bzImage`,
    );
    return { ...loadIommufd(dir), built: true, buildSeconds, downloadSeconds };
  } finally {
    unregister();
    rmSync(tmp, { recursive: true, force: true });
    rmSync(lock, { recursive: true, force: true });
  }
}

/**
 * The fragment's `CONFIG_X=y` options that `config` (a .config) does not have set to y; comment lines are not
 * options. Every one must survive olddefconfig: a dependency missing from the fragment would silently lose a feature.
 */
export function missingFragmentOptions(fragment: string, config: string): string[] {
  const have = new Set(
    config
      .split('\n')
      .filter((l) => l.endsWith('=y'))
      .map((l) => l.slice(0, -2)),
  );
  return fragment
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => !l.startsWith('#') && l.endsWith('=y'))
    .map((l) => l.slice(0, -2))
    .filter((k) => !have.has(k));
}

function checkConfig(config: string): void {
  const missing = missingFragmentOptions(readFileSync(kernelFragmentPath, 'utf8'), config);
  if (missing.length)
    throw new TestHostError(
      `kernel config: ${missing.join(', ')} requested by ${kernelFragmentPath} but not set after olddefconfig ` +
        '(add the options they depend on to the fragment)',
    );
}

export async function ensureKernel(kind: KernelKind, log: Logger = stderrLog): Promise<KernelImage> {
  return kind === 'debian' ? ensureDebianKernel(log) : ensureIommufdKernel(log);
}
