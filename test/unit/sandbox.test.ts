// The sandbox (core/sandbox/): the BPF program's answers for the policy's edge cases, and a child
// process inside the real filter — what it may still do, and a forbidden syscall reported by name.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { projectRoot } from '../../core/paths.js';
import {
  AUDIT_ARCH_X86_64,
  buildProgram,
  evaluate,
  SECCOMP_RET_ALLOW,
  SECCOMP_RET_ERRNO,
  SECCOMP_RET_TRAP,
} from '../../core/sandbox/bpf.js';
import { ERRNO, HOT, policy } from '../../core/sandbox/policy.js';
import { SANDBOX_STATUS } from '../../core/sandbox/index.js';
import { SYSCALLS_X86_64 as NR } from '../../core/sandbox/syscalls.js';

const PID = 4242;
const { insns, allowed } = buildProgram(policy(PID), ERRNO, HOT);
const run = (nr: number, args: bigint[] = [], arch = AUDIT_ARCH_X86_64) => evaluate(insns, { nr, args, arch });

test('the program: allow-list, argument checks, errno fallbacks, other ABIs trapped', () => {
  for (const name of ['read', 'write', 'futex', 'epoll_pwait', 'mmap', 'accept4', 'recvmsg', 'exit_group'] as const)
    assert.equal(run(NR[name]), SECCOMP_RET_ALLOW, name);
  for (const name of [
    'socket',
    'connect',
    'execve',
    'fork',
    'vfork',
    'kill',
    'ptrace',
    'bpf',
    'io_uring_enter',
  ] as const)
    assert.equal(run(NR[name]), SECCOMP_RET_TRAP, name);
  // ioctl: KVM_RUN (_IO(0xAE, 0x80)), VFIO_DEVICE_GET_INFO (_IO(';', 107)), TCGETS yes; TIOCSTI (pushes input into a tty) no.
  assert.equal(run(NR.ioctl, [5n, 0xae80n]), SECCOMP_RET_ALLOW);
  assert.equal(run(NR.ioctl, [5n, 0x3b6bn]), SECCOMP_RET_ALLOW);
  assert.equal(run(NR.ioctl, [0n, 0x5401n]), SECCOMP_RET_ALLOW);
  assert.equal(run(NR.ioctl, [0n, 0x5412n]), SECCOMP_RET_TRAP);
  // clone: a thread (CLONE_VM|CLONE_SIGHAND|CLONE_THREAD and more) yes, a process (fork: SIGCHLD) no.
  assert.equal(run(NR.clone, [0x3d0f00n]), SECCOMP_RET_ALLOW);
  assert.equal(run(NR.clone, [0x1200011n]), SECCOMP_RET_TRAP);
  // clone3 and io_uring_setup: ENOSYS, so glibc falls back to clone and libuv to its thread pool.
  assert.equal(run(NR.clone3), (SECCOMP_RET_ERRNO | 38) >>> 0);
  assert.equal(run(NR.io_uring_setup), (SECCOMP_RET_ERRNO | 38) >>> 0);
  // tgkill only within this process; prlimit64 reads limits, never sets them.
  assert.equal(run(NR.tgkill, [BigInt(PID), 7n, 34n]), SECCOMP_RET_ALLOW);
  assert.equal(run(NR.tgkill, [BigInt(PID + 1), 7n, 34n]), SECCOMP_RET_TRAP);
  assert.equal(run(NR.tgkill, [BigInt(PID) | (1n << 32n), 7n, 34n]), SECCOMP_RET_TRAP, 'all 64 bits compared');
  assert.equal(run(NR.prlimit64, [0n, 8n, 0n, 0x7ff0n]), SECCOMP_RET_ALLOW);
  assert.equal(run(NR.prlimit64, [0n, 8n, 0x7ff0n, 0n]), SECCOMP_RET_TRAP);
  // Another ABI's numbers mean other syscalls: i386 (int 0x80) and x32 are trapped whatever the number.
  assert.equal(run(NR.read, [], 0x40000003 /* AUDIT_ARCH_I386 */), SECCOMP_RET_TRAP);
  assert.equal(run(NR.read | 0x40000000), SECCOMP_RET_TRAP);
  // The hot path comes first: KVM_RUN's ioctl is decided within a few instructions.
  assert.equal(allowed[0], 'ioctl');
  assert.ok(!allowed.includes('execve') && !allowed.includes('socket'));
});

/** A node child that enters the sandbox, then runs `body` (an async function body, ESM). */
function sandboxed(body: string) {
  const url = pathToFileURL(join(projectRoot, 'dist/core/sandbox/index.js')).href;
  return spawnSync(
    process.execPath,
    ['--input-type=module', '-e', `import { enterSandbox } from '${url}';\nenterSandbox();\n${body}`],
    { encoding: 'utf8', timeout: 60000 },
  );
}

test('inside the filter a process still reads files, starts a worker thread, runs timers and exits 0', () => {
  const r = sandboxed(`
    import { readFileSync } from 'node:fs';
    import { Worker } from 'node:worker_threads';
    const status = readFileSync('/proc/self/status', 'utf8');
    const w = new Worker("import { parentPort } from 'node:worker_threads'; parentPort.postMessage(6 * 7);", { eval: true });
    const got = await new Promise((res) => w.on('message', res));
    await w.terminate();
    await new Promise((res) => setTimeout(res, 10));
    console.log(/^Seccomp:\\s*2$/m.test(status), /^NoNewPrivs:\\s*1$/m.test(status), got);
  `);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'true true 42');
});

test('a forbidden syscall ends the process with a message naming it and status 159', () => {
  // socket(AF_INET, …): a TCP connection.
  const s = sandboxed(`(await import('node:net')).connect(9, '127.0.0.1');`);
  assert.equal(s.status, SANDBOX_STATUS, s.stderr);
  assert.equal(s.signal, null);
  assert.match(s.stderr, /the sandbox stopped the VMM: thread \d+ made syscall 41 \(socket\) with arguments \(0x2, /);
  assert.match(s.stderr, /--sandbox off/);
  // Starting a program (no pipes, so no socketpair first): libuv's fork is a clone without
  // CLONE_THREAD, and execve never comes.
  const e = sandboxed(`(await import('node:child_process')).spawnSync('/bin/true', { stdio: 'ignore' });`);
  assert.equal(e.status, SANDBOX_STATUS, e.stderr);
  assert.match(e.stderr, /made syscall (56 \(clone\)|57 \(fork\)|58 \(vfork\)|59 \(execve\))/);
});
