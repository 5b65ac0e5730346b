// mtty instances for the host tests that migrate: each test makes its own and removes them, even when it fails.
import { createMdev, removeMdev, type Mdev } from '../../core/vfio/mdev.js';

/** `n` fresh mtty-1 instances for `f`; removed after it, once `release` (the VMMs that hold them ending) is done. */
export async function withMdevs<T>(n: number, f: (m: Mdev[]) => Promise<T>, release?: () => Promise<void>): Promise<T> {
  const made: Mdev[] = [];
  try {
    for (let i = 0; i < n; i++) made.push(createMdev('mtty-1'));
    return await f(made);
  } finally {
    await release?.();
    for (const m of made) removeMdev(m.uuid);
  }
}
