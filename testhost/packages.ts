// Install-if-missing for the Debian packages the test host needs (the project's machines start bare).
import { exec, type Logger, stderrLog, TestHostError } from './util.js';

/** Needed to boot the host at all. xz-utils: Debian's modules are .ko.xz. */
export const HOST_PACKAGES = ['qemu-system-x86', 'busybox-static', 'cpio', 'xz-utils'];
/** Needed to build the iommufd kernel from linux-source. */
export const KERNEL_BUILD_PACKAGES = ['bc', 'bison', 'flex', 'libelf-dev', 'libssl-dev', 'make', 'gcc', 'xz-utils'];

const APT_ENV = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
// Another apt (a background install, unattended-upgrades) may hold the lock: wait for it rather than fail.
const LOCK_WAIT = ['-o', 'DPkg::Lock::Timeout=900'];
let updated = false;

export async function missingPackages(names: string[]): Promise<string[]> {
  const r = await exec('dpkg-query', ['-W', '-f=${Package} ${db:Status-Status}\n', ...names], { env: APT_ENV });
  const installed = new Set(
    r.stdout
      .split('\n')
      .filter((l) => l.endsWith(' installed'))
      .map((l) => l.split(/[ :]/)[0]),
  );
  return names.filter((n) => !installed.has(n));
}

/** apt-get update once per process (apt-cache and apt-get download need fresh lists on a new machine). */
export async function aptUpdate(log: Logger = stderrLog, force = false): Promise<void> {
  if (updated && !force) return;
  log('apt-get update');
  const r = await exec('apt-get', [...LOCK_WAIT, 'update', '-qq'], { env: APT_ENV });
  if (r.code !== 0)
    throw new TestHostError(
      `apt-get update failed (exit ${r.code}):\n${(r.stderr || r.stdout).trim().split('\n').slice(-10).join('\n')}`,
    );
  updated = true;
}

export async function ensurePackages(names: string[], log: Logger = stderrLog): Promise<void> {
  const missing = await missingPackages([...new Set(names)]);
  if (missing.length === 0) return;
  const cmd = `apt-get install -y ${missing.join(' ')}`;
  if (process.getuid?.() !== 0)
    throw new TestHostError(`missing Debian packages: ${missing.join(', ')}; install them as root: ${cmd}`);
  await aptUpdate(log);
  log(`installing ${missing.join(' ')}`);
  const r = await exec('apt-get', [...LOCK_WAIT, 'install', '-y', '-qq', '--no-install-recommends', ...missing], {
    env: APT_ENV,
  });
  if (r.code !== 0) {
    throw new TestHostError(
      `could not install ${missing.join(', ')} (${cmd} exited ${r.code}):\n` +
        (r.stderr || r.stdout).trim().split('\n').slice(-10).join('\n'),
    );
  }
  const still = await missingPackages(missing);
  if (still.length) throw new TestHostError(`still missing after apt-get install: ${still.join(', ')}`);
}
