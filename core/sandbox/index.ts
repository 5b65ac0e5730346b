// The sandbox of `tsvmm run`: once the VM is built and its control sockets listen, a seccomp
// filter (policy.ts, compiled by bpf.ts) limits every thread of the process to the syscalls a
// running VMM makes. A syscall outside it does not run: the VMM stops with a message naming it
// (native/seccomp.cc) and exit status SANDBOX_STATUS, so a bug shows as a report, not a hang or a
// silent kill. Linux x86-64 only, as tsvmm is.
import { readdirSync, readlinkSync } from 'node:fs';
import { TsvmmError } from '../errors.js';
import { native } from '../native.js';
import { buildProgram, encode } from './bpf.js';
import { ERRNO, HOT, policy } from './policy.js';
import { syscallNames } from './syscalls.js';

/** 128 + SIGSYS (31), the status a shell shows for a process killed by SIGSYS. */
export const SANDBOX_STATUS = 159;

const HINT =
  'tsvmm: the VM is lost. To run it without the sandbox: tsvmm run ... --sandbox off; to see what needs the ' +
  "syscall: run it that way under 'strace -f -qq'. The allow-list is core/sandbox/policy.ts; please report the line above.";

/** The filter for this process, as struct sock_filter[] (exported for tests and inspection). */
export function sandboxProgram(pid = process.pid): Buffer {
  return encode(buildProgram(policy(pid), ERRNO, HOT).insns);
}

let entered = false;
/** Whether this process runs under the filter (what needs a process or a new socket checks first). */
export function sandboxEntered(): boolean {
  return entered;
}

/** Installs the filter on every thread of this process, for good (there is no way back). */
export function enterSandbox(): void {
  if (process.platform !== 'linux' || process.arch !== 'x64')
    throw new TsvmmError(
      'ERR_VM_SETUP',
      `the sandbox is for Linux on x86-64, not ${process.platform}/${process.arch}`,
      {
        fix: 'run with --sandbox off',
      },
    );
  // A ring set up before (libuv does, for its loops, when UV_USE_IO_URING=1) would carry on through
  // io_uring_enter, whose requests seccomp never sees: refuse rather than allow it.
  const rings = readdirSync('/proc/self/fd').filter((fd) => link(`/proc/self/fd/${fd}`) === 'anon_inode:[io_uring]');
  if (rings.length)
    throw new TsvmmError(
      'ERR_VM_SETUP',
      `cannot enter the sandbox: this process has io_uring instances (fds ${rings.join(', ')})`,
      {
        fix: 'unset UV_USE_IO_URING (libuv then uses its thread pool; io_uring requests pass no seccomp filter), or run with --sandbox off',
      },
    );
  try {
    native().seccompInstall(sandboxProgram(), syscallNames(), HINT, SANDBOX_STATUS);
    entered = true;
  } catch (e) {
    throw new TsvmmError('ERR_VM_SETUP', `cannot enter the sandbox: ${(e as Error).message}`, {
      cause: e,
      fix: 'a kernel without seccomp filters (CONFIG_SECCOMP_FILTER) or a container that forbids them: run with --sandbox off',
    });
  }
}

function link(path: string): string {
  try {
    return readlinkSync(path);
  } catch {
    return ''; // closed since the listing
  }
}
