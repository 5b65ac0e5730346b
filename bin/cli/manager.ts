// tsvmm manager: the privileged half (libvirt's split): opens /dev/kvm and the VFIO fds, starts
// the VMM unprivileged and hands it the fds.
import { parseCommand, parseSize, str, UsageError } from './common.js';

export const USAGE = `Usage: tsvmm manager <config.json> (--user NAME | --uid N [--gid N]) [--memlock SIZE]

As root: validates the config, opens /dev/kvm and the devices' VFIO groups (iommufd backend:
/dev/iommu and the device cdevs), starts 'tsvmm run <config> --fd-socket 3' as that user with no
capabilities and a locked-memory limit, and passes the fds over a socketpair (SCM_RIGHTS).
  --user NAME | --uid N [--gid N]   the VMM's identity (never root)
  --memlock SIZE                    the VMM's RLIMIT_MEMLOCK (default guest RAM + 64M): bytes, or K/M/G
When the limit cannot be set (no CAP_SYS_RESOURCE), the manager says so and how to fix it.`;

export async function main(args: string[]): Promise<number> {
  const p = parseCommand(
    args,
    { user: { type: 'string' }, uid: { type: 'string' }, gid: { type: 'string' }, memlock: { type: 'string' } },
    USAGE,
    { min: 1, max: 1, what: 'config file' },
  );
  if (!p) return 0;
  if (str(p.values, 'user') === undefined && str(p.values, 'uid') === undefined)
    throw new UsageError('manager needs --user NAME or --uid N: the VMM runs as that user, never as root', USAGE);
  const memlock = str(p.values, 'memlock');
  const memlockBytes = memlock !== undefined ? parseSize(memlock, '--memlock', USAGE) : undefined;
  const { runManager, parseUser } = await import('../../frontend/manager.js');
  const id = parseUser({ user: str(p.values, 'user'), uid: str(p.values, 'uid'), gid: str(p.values, 'gid') } as {
    user?: string;
    uid?: string;
    gid?: string;
  });
  return runManager(p.positionals[0]!, { ...id, ...(memlockBytes !== undefined ? { memlockBytes } : {}) });
}
