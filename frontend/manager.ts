// tsvmm manager: the privileged half of libvirt's split. It validates the config, opens what
// needs privilege (/dev/kvm, each device's VFIO group — or, on the iommufd backend, /dev/iommu
// and the device's cdev), starts the VMM as an unprivileged user
// with no capabilities and a memlock limit fit for the guest, and passes the fds over a UNIX
// socket (SCM_RIGHTS). The VMM needs nothing else: /dev/vfio/vfio it opens itself (0666).
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { native } from '../core/native.js';
import { loadConfig } from '../machine/index.js';
import { findHostDevice, cdevOf } from '../core/vfio/sysfs.js';
import { resolveBackend } from '../core/vfio/vfio.js';
import { IOMMU_PATH, setPerProcessAccounting } from '../core/vfio/iommufd.js';
import { sendPassedFds, type PassedFd } from '../core/fdpass.js';
import { projectRoot } from '../core/paths.js';
import { TsvmmError } from '../core/errors.js';

export interface ManagerOptions {
  uid: number;
  gid: number;
  memlockBytes?: number;
}

/** Room above guest RAM for the locked-memory limit (what else the process may pin). */
const MEMLOCK_SLACK = 64 * 2 ** 20;

export async function runManager(configPath: string, opts: ManagerOptions): Promise<number> {
  const path = resolve(configPath);
  const config = loadConfig(path);
  const memlock = opts.memlockBytes ?? config.memoryBytes + MEMLOCK_SLACK;
  checkMemlock(memlock, opts.memlockBytes !== undefined);
  const fds: PassedFd[] = [];
  let mine: number | undefined, theirs: number | undefined;
  try {
    fds.push({ name: 'kvm', kind: 'kvm', fd: openSync('/dev/kvm', 'r+') });
    for (const d of config.devices) {
      if (!d.host && !d.sysfsdev && !d.cdev)
        throw new TsvmmError(
          'ERR_CONFIG',
          `device fd '${d.fd}': tsvmm manager needs "host", "sysfsdev" or "cdev" to know what to open`,
        );
      const host = findHostDevice(d);
      // A device's "fd" name is what the VMM looks the fd up by; else a name of our own.
      if (resolveBackend(host, d, config.vfio.backend) === 'iommufd') {
        if (!fds.some((f) => f.kind === 'iommufd')) fds.push({ name: 'iommufd', kind: 'iommufd', fd: openIommufd() });
        const cdev = d.cdev ?? cdevOf(host.sysfs)!;
        fds.push({ name: d.fd ?? `cdev-${host.name}`, kind: 'vfio-cdev', device: host.name, fd: openSync(cdev, 'r+') });
        continue;
      }
      if (fds.some((f) => f.group === host.group)) continue;
      fds.push({
        name: d.fd ?? `group-${host.group}`,
        kind: 'vfio-group',
        group: host.group,
        fd: openSync(`/dev/vfio/${host.group}`, 'r+'),
      });
    }
    [mine, theirs] = native().socketpair();
    // prlimit raises the limit while still root; setpriv then drops to the user with no
    // capabilities, no supplementary groups and no way to regain privilege.
    const child = spawn(
      'prlimit',
      [
        `--memlock=${memlock}:${memlock}`,
        'setpriv',
        `--reuid=${opts.uid}`,
        `--regid=${opts.gid}`,
        '--clear-groups',
        '--inh-caps=-all',
        '--bounding-set=-all',
        '--no-new-privs',
        process.execPath,
        // A node that has the flag ignores SIGUSR1 from its first instruction; older ones rely on
        // tsvmm's own listener (bin/tsvmm.cts), installed before anything else loads.
        ...(process.allowedNodeEnvironmentFlags.has('--disable-sigusr1') ? ['--disable-sigusr1'] : []),
        `${projectRoot}/dist/bin/tsvmm.cjs`,
        'run',
        path,
        '--fd-socket',
        '3',
      ],
      { stdio: ['inherit', 'inherit', 'inherit', theirs] },
    );
    const exited = new Promise<number>((res) => {
      child.on('error', (e) => {
        process.stderr.write(`tsvmm manager: cannot start the VMM: ${e.message}\n`);
        res(1);
      });
      child.on('exit', (code, signal) => res(code ?? (signal ? 128 + 15 : 1)));
    });
    closeSync(theirs);
    theirs = undefined;
    sendPassedFds(mine, fds);
    return await exited;
  } finally {
    for (const f of fds) closeSync(f.fd);
    if (mine !== undefined) closeSync(mine);
    if (theirs !== undefined) closeSync(theirs);
  }
}

const mib = (b: number) => (b === Infinity ? 'unlimited' : `${Math.round(b / 2 ** 20)} MiB`);

/** The hard RLIMIT_MEMLOCK of this process, from /proc/self/limits (Infinity when unlimited). */
function hardMemlock(): number {
  const line = readFileSync('/proc/self/limits', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('Max locked memory'));
  const hard = line?.split(/\s{2,}/)[2];
  return hard === undefined || hard === 'unlimited' ? Infinity : Number(hard);
}

/**
 * Whether prlimit may give the VMM this locked-memory limit: raising the hard limit needs
 * CAP_SYS_RESOURCE, which a manager in a container, or one not run as root, may lack. Tried once
 * (prlimit on `true`) so the failure is explained here instead of as a bare prlimit error.
 */
function checkMemlock(bytes: number, asked: boolean): void {
  const r = spawnSync('prlimit', [`--memlock=${bytes}:${bytes}`, 'true'], { encoding: 'utf8' });
  if (r.status === 0) return;
  const hard = hardMemlock();
  const why = r.error ? `prlimit: ${r.error.message}` : r.stderr.trim() || `prlimit exited ${r.status}`;
  throw new TsvmmError(
    'ERR_VM_SETUP',
    `cannot give the VMM a locked-memory limit of ${mib(bytes)} (${asked ? '--memlock' : 'guest RAM + 64 MiB, for DMA pinning'}): ${why}\n` +
      `  this process's hard limit is ${mib(hard)}, and raising it needs CAP_SYS_RESOURCE (run the manager as root on the host; in a container, ` +
      `start it with --ulimit memlock=-1:-1 or --cap-add SYS_RESOURCE)`,
    {
      fix: `raise the hard limit (ulimit -Hl, /etc/security/limits.conf, systemd LimitMEMLOCK=)${hard !== Infinity && hard > 0 ? ` or pass --memlock ${Math.floor(hard / 2 ** 20)}M if the guest needs no more pinned` : ''}`,
    },
  );
}

/** /dev/iommu with pins charged to the process that maps (IOMMU_OPTION_RLIMIT_MODE 1, which
 *  needs the CAP_SYS_RESOURCE only the manager has), so the VMM's memlock limit governs them. */
function openIommufd(): number {
  const fd = openSync(IOMMU_PATH, 'r+');
  const r = setPerProcessAccounting(fd);
  if (r !== true)
    process.stderr.write(
      `tsvmm manager: warning: cannot set per-process pin accounting on ${IOMMU_PATH}: ${r.message}\n`,
    );
  return fd;
}

/** The VMM's identity: --user NAME (looked up in /etc/passwd) or --uid N [--gid N]; never root. */
export function parseUser(opts: { user?: string; uid?: string; gid?: string }): { uid: number; gid: number } {
  let uid: number, gid: number;
  if (opts.user !== undefined) {
    const line = readFileSync('/etc/passwd', 'utf8')
      .split('\n')
      .find((l) => l.split(':')[0] === opts.user);
    if (!line) throw new TsvmmError('ERR_USAGE', `--user ${opts.user}: no such user in /etc/passwd`);
    [uid, gid] = line.split(':').slice(2, 4).map(Number) as [number, number];
  } else {
    uid = Number(opts.uid);
    gid = Number(opts.gid ?? opts.uid);
  }
  if (!Number.isInteger(uid) || !Number.isInteger(gid) || uid < 0 || gid < 0)
    throw new TsvmmError('ERR_USAGE', 'manager needs --user NAME or --uid N [--gid N] (numbers)');
  if (uid === 0)
    throw new TsvmmError('ERR_USAGE', 'the VMM must not run as root', {
      fix: 'pick an unprivileged user (--user nobody)',
    });
  return { uid, gid };
}
