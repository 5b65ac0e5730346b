// The sandbox of `tsvmm run`: once the VM is built and its control sockets listen, a seccomp
// filter (policy.ts, compiled by bpf.ts) limits every thread of the process to the syscalls a
// running VMM makes. A syscall outside it does not run: the VMM stops with a message naming it
// (native/seccomp.cc) and exit status SANDBOX_STATUS, so a bug shows as a report, not a hang or a
// silent kill. Linux x86-64 only, as tsvmm is.
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
  try {
    native().seccompInstall(sandboxProgram(), syscallNames(), HINT, SANDBOX_STATUS);
  } catch (e) {
    throw new TsvmmError('ERR_VM_SETUP', `cannot enter the sandbox: ${(e as Error).message}`, {
      cause: e,
      fix: 'a kernel without seccomp filters (CONFIG_SECCOMP_FILTER) or a container that forbids them: run with --sandbox off',
    });
  }
}
