// mtty instances for the host tests that migrate: each test makes its own and removes them, even when it fails.
import { execFileSync, spawn } from 'node:child_process';
import { createMdev, MDEV_DEVICES, type Mdev } from '../../core/vfio/mdev.js';
import { exitWithin } from './linux-migration.js';

/** How long removing one mdev may take once nothing holds it. */
const REMOVE_MS = 60_000;

/** `n` fresh mtty-1 instances for `f`; removed after it, once `release` (the VMMs that hold them ending) is done. */
export async function withMdevs<T>(n: number, f: (m: Mdev[]) => Promise<T>, release?: () => Promise<void>): Promise<T> {
  const made: Mdev[] = [];
  try {
    for (let i = 0; i < n; i++) made.push(createMdev('mtty-1'));
    return await f(made);
  } finally {
    await release?.();
    for (const m of made) await removeOffLoop(m);
  }
}

/**
 * Removes an mdev from a child shell: the kernel's remove waits, for as long as anything holds the device open,
 * and in this process it would stop the event loop and with it every test's time limit. Past REMOVE_MS the
 * test fails with the kernel's last messages (vfio names the task that still holds it).
 */
async function removeOffLoop(m: Mdev): Promise<void> {
  const sh = spawn('/bin/sh', ['-c', `echo 1 > "$1"`, 'sh', `${MDEV_DEVICES}/${m.uuid}/remove`], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  sh.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exit = await exitWithin(sh, REMOVE_MS);
  if (!exit) {
    sh.unref();
    sh.stderr!.destroy();
    let dmesg = '';
    try {
      dmesg = execFileSync('dmesg', { encoding: 'utf8' }).split('\n').slice(-15).join('\n');
    } catch {
      /* not allowed here */
    }
    throw new Error(
      `removing mdev ${m.uuid} did not finish within ${REMOVE_MS / 1000} s; the kernel's last messages:\n${dmesg}`,
    );
  }
  if (exit[0] !== 0) throw new Error(`removing mdev ${m.uuid} failed (exit ${exit[0] ?? exit[1]}): ${err.trim()}`);
}
