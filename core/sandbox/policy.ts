// The sandbox's allow-list: the syscalls `tsvmm run` makes once its set-up is done (the VM built,
// its QMP sockets listening), on every thread: vCPU 0 and the event loop, the vCPU workers, libuv's
// and V8's threads. Derived from `strace -f` of the test/kvm suites that spawn `tsvmm run` (boot, SMP,
// QMP, serial to a file and to a pty), keeping what comes after the first KVM_RUN, grouped here by what
// needs it, and checked by the test host's suites run with it on (legacy VFIO, QMP hot-plug with
// getfd, the manager, Linux guests with nvme and e1000e). Everything else stops the VMM with a message
// naming the syscall (core/sandbox/index.ts). To find what a new code path needs: run it with
// `--sandbox off` under `strace -f -qq`, or with the sandbox on and read the message.
//
// Not here, on purpose: execve/fork (clone without CLONE_THREAD) — nothing in a running VMM starts
// programs; socket/bind/listen/connect — QMP listens before the filter and only accepts after;
// kill — only this process's own threads are signalled (tgkill); ptrace, mount, bpf, perf_event_open,
// keyctl, io_uring, process_vm_*: nothing here uses them. Paths are not filtered: hot-plug opens
// sysfs and /dev/vfio files by name, and seccomp cannot see a path.
import type { SyscallName } from './syscalls.js';

/** An argument test: (arg & mask) === value, over all 64 bits (mask defaults to all ones). */
export interface ArgCheck {
  arg: 0 | 1 | 2 | 3 | 4 | 5;
  value: bigint;
  mask?: bigint;
}

/** A syscall allowed always, or only when one of `when`'s alternatives (each all of its checks) holds. */
export type Rule = SyscallName | { name: SyscallName; when: ArgCheck[][] };

export interface Group {
  why: string;
  allow: Rule[];
}

// ioctl numbers: _IOC type byte (bits 8-15) and the few fixed terminal/fd requests libuv makes.
const KVMIO = 0xaen;
const VFIO_TYPE = 0x3bn; // ';': VFIO and iommufd share it
const ioctlType = (t: bigint): ArgCheck[] => [{ arg: 1, mask: 0xff00n, value: t << 8n }];
const ioctlIs = (req: bigint): ArgCheck[] => [{ arg: 1, mask: 0xffffffffn, value: req }];
const CLONE_VM = 0x100n,
  CLONE_SIGHAND = 0x800n,
  CLONE_THREAD = 0x10000n;

/** The process's own pid: tgkill may signal only threads of this process. */
export function policy(pid: number): Group[] {
  return [
    {
      why: 'vCPUs and devices: KVM (vm, vcpu, irqfd, ioeventfd), VFIO and iommufd ioctls; the tty and fd requests libuv makes on stdio (listed)',
      allow: [
        {
          name: 'ioctl',
          when: [
            ioctlType(KVMIO),
            ioctlType(VFIO_TYPE),
            // TCGETS, TCSETS, TCSETSW, TCSETSF, TIOCGWINSZ, FIONREAD, FIONBIO, FIONCLEX, FIOCLEX, and TIOCGPTN
            // (libuv asks whether stdin is a pty's slave). Not TIOCSTI, which types into the terminal.
            ...[0x5401n, 0x5402n, 0x5403n, 0x5404n, 0x5413n, 0x541bn, 0x5421n, 0x5450n, 0x5451n, 0x80045430n].map(
              ioctlIs,
            ),
          ],
        },
      ],
    },
    {
      why: 'threads: futexes, new threads (vCPU workers, libuv/V8 helpers) only with CLONE_THREAD, signals only to own threads (the vCPU kick)',
      allow: [
        'futex',
        {
          name: 'clone',
          when: [
            [{ arg: 0, mask: CLONE_VM | CLONE_SIGHAND | CLONE_THREAD, value: CLONE_VM | CLONE_SIGHAND | CLONE_THREAD }],
          ],
        },
        { name: 'tgkill', when: [[{ arg: 0, value: BigInt(pid) }]] },
        'set_robust_list',
        'rseq',
        'gettid',
        'sched_yield',
        'sched_getaffinity',
        'exit',
        'exit_group',
      ],
    },
    {
      why: 'signals: the kick handler, its mask around KVM_RUN and eating it after (sigtimedwait), libuv signal watchers (SIGHUP/INT/TERM, SIGUSR1), the SIGSYS report',
      allow: ['rt_sigaction', 'rt_sigprocmask', 'rt_sigreturn', 'rt_sigtimedwait', 'rt_sigpending', 'sigaltstack'],
    },
    {
      why: 'memory: the V8 heap and JIT code, thread stacks, BAR and vCPU run-area mappings at hot-plug, start-up pages dropped (madvise)',
      allow: ['mmap', 'munmap', 'mprotect', 'madvise', 'mremap', 'brk'],
    },
    {
      why: 'event loop: epoll, the wake-up eventfds and pipes of libuv and of each worker, poll on device fds',
      allow: ['epoll_pwait', 'epoll_wait', 'epoll_ctl', 'epoll_create1', 'eventfd2', 'pipe2', 'poll', 'ppoll'],
    },
    {
      why: 'time: clocks when the vDSO falls back to the syscall, sleeps',
      allow: ['clock_gettime', 'clock_getres', 'gettimeofday', 'clock_nanosleep', 'nanosleep'],
    },
    {
      why: 'fds and files: serial and log output, QMP sockets, eventfds, config space (pread/pwrite), hot-plug opening sysfs and /dev/vfio by name, module files a vCPU worker loads, the QMP socket file removed at exit',
      allow: [
        'read',
        'write',
        'readv',
        'writev',
        'pread64',
        'pwrite64',
        'lseek',
        'close',
        'fcntl',
        'dup',
        'dup3',
        'openat',
        'fstat',
        'newfstatat',
        'statx',
        'readlink',
        'readlinkat',
        'getdents64',
        'access',
        'faccessat',
        'faccessat2',
        'getcwd',
        'unlink',
        'unlinkat',
        'fsync',
        'fdatasync',
      ],
    },
    {
      why: 'QMP: accepting clients on the sockets set up before, their I/O, fds passed with SCM_RIGHTS (getfd)',
      allow: [
        'accept4',
        'recvmsg',
        'sendmsg',
        'recvfrom',
        'sendto',
        'shutdown',
        'getsockopt',
        'setsockopt',
        'getsockname',
        'getpeername',
      ],
    },
    {
      why: 'process facts Node reads (a worker starting, os and process APIs), rlimits read but not set, randomness',
      allow: [
        'getpid',
        'getppid',
        'getuid',
        'geteuid',
        'getgid',
        'getegid',
        'capget',
        'uname',
        'sysinfo',
        'getrusage',
        { name: 'prlimit64', when: [[{ arg: 2, value: 0n }]] },
        'getrandom',
      ],
    },
  ];
}

/**
 * Syscalls answered with an errno instead of stopping the VMM, so the caller takes its fallback:
 * clone3's flags are in memory seccomp cannot read, and glibc retries with clone, whose flags the
 * filter checks; io_uring makes libuv use its thread pool.
 */
export const ERRNO: { name: SyscallName; errno: number }[] = [
  { name: 'clone3', errno: 38 /* ENOSYS */ },
  { name: 'io_uring_setup', errno: 38 /* ENOSYS */ },
];

/** Checked first, in this order: the run loop's hot path (KVM_RUN, exits handed between threads). */
export const HOT: SyscallName[] = [
  'ioctl',
  'futex',
  'epoll_pwait',
  'read',
  'write',
  'tgkill',
  'rt_sigtimedwait',
  'rt_sigprocmask',
];
