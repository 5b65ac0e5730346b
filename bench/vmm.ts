// One benchmark launch inside the test host: start a VMM (tsvmm, QEMU or the null VMM) on the
// multiboot test guest with edu assigned, follow its serial output line by line, and read the
// same external counters for all three: /proc (context switches, resident memory) and KVM's
// per-VM debugfs statistics (/sys/kernel/debug/kvm/<pid>-<fd>/).
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { VmmName } from './stats.js';
import { ensureNullVmm, guestElf, qemuCpu, scratch, tsvmmJs } from './setup.js';
import { anonOrShmem, parseSmaps, type Mapping } from './smaps.js';
import { innerQemuArgs, QEMU } from '../testhost/qemu.js';
// The entry points (main, run, runloop, memory, linux) take the set-up from here with the launch.
export {
  root,
  guestElf,
  tsvmmJs,
  nullVmmSource,
  QEMU,
  nullVmmAction,
  ensureNullVmm,
  qemuCpuFallback,
  qemuCpu,
  type QemuCpuChoice,
} from './setup.js';

export interface LaunchSpec {
  vmm: VmmName;
  memMiB: number;
  cmdline: string;
  /** The device to assign; '' for none (the run-loop rows, bench/runloop.ts). */
  bdf: string;
  /** vCPUs (default 1; the null VMM has one). */
  vcpus?: number;
  /** A QMP socket (tsvmm, QEMU). */
  qmp?: string;
  /** Another build of tsvmm to run instead of this one (a before/after comparison). */
  tsvmmJs?: string;
  /** tsvmm only: node's own flags (e.g. --cpu-prof). */
  nodeArgs?: string[];
  /** More options of the VMM's command line (tsvmm run: e.g. --sandbox off; the null VMM: --touch-pages N). */
  runArgs?: string[];
  /** Run under `strace -f -T -e trace=ioctl`, writing to this file. */
  straceOut?: string;
  /** null VMM only: guest RAM in a memfd, like tsvmm's (a diagnostic). */
  memfd?: boolean;
  /** tsvmm and QEMU: a virtio-iommu on the guest's PCI bus (tsvmm's "iommu", QEMU's -device virtio-iommu-pci). */
  viommu?: boolean;
}

/** argv for a launch; the process whose pid owns the VM is the one spawned (no shell in between). */
export function command(s: LaunchSpec): string[] {
  let argv: string[];
  switch (s.vmm) {
    case 'tsvmm': {
      const cfg = join(scratch(), `tsvmm-${s.memMiB}.json`);
      writeFileSync(
        cfg,
        JSON.stringify({
          name: 'bench',
          memory: `${s.memMiB}M`,
          vcpus: s.vcpus ?? 1,
          kernel: { path: guestElf },
          cmdline: s.cmdline,
          serial: { output: 'stdout' },
          devices: s.bdf ? [{ type: 'vfio-pci', id: 'edu', host: s.bdf }] : [],
          ...(s.viommu ? { iommu: { type: 'virtio' } } : {}),
        }),
      );
      argv = [
        process.execPath,
        ...(s.nodeArgs ?? []),
        s.tsvmmJs ?? tsvmmJs,
        'run',
        cfg,
        ...(s.qmp ? ['--qmp', s.qmp] : []),
      ];
      break;
    }
    case 'qemu':
      argv = [
        QEMU,
        ...innerQemuArgs({ memMiB: s.memMiB, vcpus: s.vcpus ?? 1, cpu: qemuCpu().cpu }),
        '-device',
        'isa-debug-exit,iobase=0xf4,iosize=4',
        ...(s.bdf ? ['-device', `vfio-pci,host=${s.bdf}`] : []),
        ...(s.viommu ? ['-device', 'virtio-iommu-pci'] : []),
        ...(s.qmp ? ['-qmp', `unix:${s.qmp},server=on,wait=off`] : []),
        '-kernel',
        guestElf,
        '-append',
        s.cmdline,
      ];
      break;
    case 'null':
      argv = [
        ensureNullVmm(),
        '--kernel',
        guestElf,
        '--cmdline',
        s.cmdline,
        '--mem',
        String(s.memMiB),
        ...(s.bdf ? ['--device', s.bdf] : []),
        ...(s.memfd ? ['--memfd'] : []),
        ...(s.runArgs ?? []),
      ];
      break;
  }
  // madvise too, with timestamps: tsvmm prefaults RAM (MADV_POPULATE_WRITE) before pinning it, and that counts.
  if (s.straceOut)
    argv = [
      'strace',
      '-f',
      '-qq',
      '-T',
      '-tt',
      '--seccomp-bpf',
      '-e',
      'trace=ioctl,madvise',
      '-o',
      s.straceOut,
      ...argv,
    ];
  return argv;
}

/** The guest's exit through the debug-exit port, as each VMM reports it: 0 means the guest passed. */
export function guestStatus(vmm: VmmName, code: number | null): number | null {
  if (code === null) return null;
  return vmm === 'qemu' ? (code & 1 ? code >> 1 : -1) : code;
}

// ---- external counters -------------------------------------------------------------------

export interface Snapshot {
  t: number;
  /** The process (its main thread's tid). */
  pid: number;
  /** Main thread (tid = pid): voluntary + involuntary context switches. */
  mainCtx: number;
  /** Every thread: "tid name" → context switches (for the JSON). */
  threads: Record<string, number>;
  /** Every thread: "tid name" → [utime, stime, guest time] in ticks (USER_HZ); utime includes guest time. */
  threadCpu: Record<string, [number, number, number]>;
  /** Every thread: "tid name" → where it sleeps (/proc/…/wchan: futex, poll, epoll; "0" while running). */
  wchan?: Record<string, string>;
  /** This host's /proc/stat cpu line: user nice system idle iowait irq softirq steal guest guest_nice. */
  hostCpu: number[];
  rssKiB: number;
  rss: Record<string, number>;
  /** KVM per-VM stats (summed over vCPUs) from debugfs; empty when not found. */
  kvm: Record<string, number>;
}

const DEBUGFS = '/sys/kernel/debug';
const KVM_STATS = [
  'exits',
  'mmio_exits',
  'io_exits',
  'irq_injections',
  'halt_exits',
  'signal_exits',
  'irq_exits',
  'pf_taken',
  'pf_fixed',
  'tlb_flush',
  'irq_window_exits',
  'request_irq_exits',
  'preemption_reported',
  'pages_4k',
  'pages_2m',
];

/** Mounts debugfs if needed (the test host's /sys has no debugfs); false when not possible. */
export async function ensureDebugfs(): Promise<boolean> {
  if (existsSync(join(DEBUGFS, 'kvm'))) return true;
  await new Promise<void>((res) =>
    spawn('mount', ['-t', 'debugfs', 'none', DEBUGFS], { stdio: 'ignore' })
      .on('close', () => res())
      .on('error', () => res()),
  );
  return existsSync(join(DEBUGFS, 'kvm'));
}

function ctx(status: string): number {
  const v = /voluntary_ctxt_switches:\s+(\d+)/.exec(status)?.[1];
  const nv = /nonvoluntary_ctxt_switches:\s+(\d+)/.exec(status)?.[1];
  return Number(v ?? 0) + Number(nv ?? 0);
}

function kvmDir(pid: number): string | undefined {
  const d = join(DEBUGFS, 'kvm');
  try {
    return readdirSync(d)
      .filter((e) => e.startsWith(`${pid}-`))
      .map((e) => join(d, e))[0];
  } catch {
    return undefined;
  }
}

export function snapshot(pid: number): Snapshot {
  const threads: Record<string, number> = {};
  const threadCpu: Record<string, [number, number, number]> = {};
  const wchan: Record<string, string> = {};
  let mainCtx = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const st = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
      const name = /^Name:\s*(.*)$/m.exec(st)?.[1] ?? '?';
      const c = ctx(st);
      threads[`${tid} ${name}`] = c;
      if (Number(tid) === pid) mainCtx = c;
      const f = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8')
        .replace(/^.*\) /, '')
        .split(' ');
      threadCpu[`${tid} ${name}`] = [Number(f[11]), Number(f[12]), Number(f[40])]; // utime, stime, guest_time (fields 14, 15, 43)
      wchan[`${tid} ${name}`] = readFileSync(`/proc/${pid}/task/${tid}/wchan`, 'utf8').trim();
    } catch {
      /* thread ended */
    }
  }
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  const rss: Record<string, number> = {
    VmRSS: kib('VmRSS'),
    RssAnon: kib('RssAnon'),
    RssFile: kib('RssFile'),
    RssShmem: kib('RssShmem'),
    VmHWM: kib('VmHWM'),
  };
  try {
    const roll = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    for (const k of ['AnonHugePages', 'ShmemPmdMapped', 'Locked'])
      rss[k] = Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(roll)?.[1] ?? NaN);
  } catch {
    /* no smaps_rollup */
  }
  const kvm: Record<string, number> = {};
  const dir = kvmDir(pid);
  if (dir)
    for (const k of KVM_STATS) {
      try {
        kvm[k] = Number(readFileSync(join(dir, k), 'utf8').trim());
      } catch {
        /* absent in this kernel */
      }
    }
  const hostCpu = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  return { t: performance.now(), pid, mainCtx, threads, threadCpu, wchan, hostCpu, rssKiB: rss.VmRSS, rss, kvm };
}

/** snapshot(pid), or undefined when the process (or one of its files) is gone; `onError` hears why. */
export function trySnapshot(pid: number, onError?: (message: string) => void): Snapshot | undefined {
  try {
    return snapshot(pid);
  } catch (e) {
    onError?.((e as Error).message);
    return undefined;
  }
}

/** VMM CPU outside the guest between two snapshots, µs: every thread's user (less guest) and system time (USER_HZ ticks of 10 ms: coarse). */
export function cpuUsBetween(a: Snapshot, b: Snapshot): number {
  let ticks = 0;
  for (const [k, [u, s, g]] of Object.entries(b.threadCpu)) {
    const o = a.threadCpu[k];
    if (o) ticks += u - g - (o[0] - o[2]) + (s - o[1]);
  }
  return ticks * 1e4;
}

/**
 * Guest RAM's mapping in /proc/<pid>/smaps text: the one read/write mapping whose size is exactly
 * guest RAM's (tsvmm, QEMU and the null VMM each map it as one such mapping). Throws when no
 * mapping, or more than one, has that size (anything subtracted from it would be a guess).
 */
export function guestRamMapping(maps: Mapping[], guestKiB: number): Mapping {
  const found = maps.filter((m) => m.perms.startsWith('rw') && m.end - m.start === BigInt(guestKiB) * 1024n);
  if (found.length !== 1)
    throw new Error(
      `${found.length} read/write mappings of exactly ${guestKiB} KiB (guest RAM) in smaps; expected one`,
    );
  return found[0]!;
}

/** What the host pays for a VMM beyond guest RAM, in MiB (see hostMemory). */
export interface HostMemory {
  /** Private anonymous and shmem pages (heap, stacks, JIT code, worker isolates): no other process shares them. */
  privateMiB: number;
  /** Proportional set size: private pages plus this process's share of shared ones (the binary, libraries). */
  pssMiB: number;
  /** Guest RAM's resident part: evidence of how much the guest touched, not part of the above. */
  guestMiB: number;
}

/**
 * The memory a host pays for a VMM beyond guest RAM, from /proc/<pid>/smaps text. Without an assigned
 * device guest RAM is not pinned, so only what the guest touched is resident; its mapping is left out
 * of both figures. VmRSS is not used: it counts shared file pages whole and moves with what the
 * kernel happens to keep mapped, while a host pays for private pages and its share of the rest.
 */
export function hostMemory(smaps: string, guestKiB: number): HostMemory {
  const maps = parseSmaps(smaps);
  const guest = guestRamMapping(maps, guestKiB);
  let privateKiB = 0,
    pssKiB = 0;
  for (const m of maps) {
    if (m === guest) continue;
    pssKiB += m.pssKiB;
    // A file mapping's private pages are its copy-on-write ones (relocated data): Anonymous.
    privateKiB += anonOrShmem(m) ? m.privateKiB : m.anonymousKiB;
  }
  return { privateMiB: privateKiB / 1024, pssMiB: pssKiB / 1024, guestMiB: guest.rssKiB / 1024 };
}

export function delta(a: Snapshot, b: Snapshot, k: string): number | undefined {
  const x = a.kvm[k],
    y = b.kvm[k];
  return x === undefined || y === undefined ? undefined : y - x;
}

// ---- a launch ----------------------------------------------------------------------------

export interface Launch {
  child: ChildProcess;
  pid: number;
  t0: number;
  firstByteMs?: number;
  lines: string[];
  stderr: string;
  /** Resolves with the exit code (null: killed) once the process is gone. */
  done: Promise<number | null>;
}

/**
 * Starts a VMM and calls onLine for each serial line (with the ms since launch). The clock starts
 * immediately before spawn(); firstByteMs is when the first byte of stdout (the guest's serial) arrived.
 */
export function launch(s: LaunchSpec, onLine: (line: string, l: Launch) => void, timeoutMs: number): Launch {
  const argv = command(s);
  const t0 = performance.now();
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  const l: Launch = {
    child,
    pid: child.pid ?? -1,
    t0,
    lines: [],
    stderr: '',
    done: undefined as unknown as Promise<number | null>,
  };
  let partial = '';
  child.stdout!.on('data', (b: Buffer) => {
    if (l.firstByteMs === undefined) l.firstByteMs = performance.now() - t0;
    partial += b.toString('latin1');
    let i: number;
    while ((i = partial.indexOf('\n')) >= 0) {
      const line = partial.slice(0, i).replace(/\r$/, '');
      partial = partial.slice(i + 1);
      l.lines.push(line);
      onLine(line, l);
    }
  });
  child.stderr!.on('data', (b: Buffer) => {
    l.stderr += b.toString();
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  l.done = new Promise((res) => {
    child.on('error', (e) => {
      l.stderr += `spawn failed: ${e.message}\n`;
      clearTimeout(timer);
      res(null);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      res(code);
    });
  });
  return l;
}

/** "bench <phase> done n=N ticks=HI:LO" → {n, ticks}. */
export function parseDone(line: string): { phase: string; n: number; ticks: number } | undefined {
  const m = /^bench (\w+) done n=(\d+) ticks=(\d+):(\d+)$/.exec(line);
  return m ? { phase: m[1]!, n: Number(m[2]), ticks: Number(m[3]) * 2 ** 32 + Number(m[4]) } : undefined;
}

/** MAP_DMA calls in an `strace -f -T -e trace=ioctl` log: count and summed duration (s). */
// strace 6.1 prints the number both share as "VFIO_DEVICE_PCI_HOT_RESET or VFIO_IOMMU_MAP_DMA" (same
// VFIO_BASE + 13): only calls on a container fd (one that got VFIO_SET_IOMMU) are MAP_DMA.
export function straceMapDma(log: string): { calls: number; seconds: number; failed: number } {
  let calls = 0,
    seconds = 0,
    failed = 0;
  const containers = new Set<string>();
  for (const l of log.split('\n')) {
    const set = /ioctl\((\d+), VFIO_SET_IOMMU\b.*= 0 </.exec(l);
    if (set) containers.add(set[1]!);
    const m =
      /ioctl\((\d+), [^,]*\b(?:VFIO_IOMMU_MAP_DMA|_IOC\(_IOC_NONE, 0x3b, 0x71, 0\)|0x3b71)\b.*= (-?\d+)(?: [A-Z]+ \([^)]*\))? <([\d.]+)>\s*$/.exec(
        l,
      );
    if (!m || !containers.has(m[1]!)) continue;
    if (Number(m[2]) !== 0) failed++;
    calls++;
    seconds += Number(m[3]);
  }
  return { calls, seconds, failed };
}

/** This host's TSC rate in kHz (the inner guests' TSC runs at the same rate: SVM without TSC scaling). */
export function hostTscKhz(): number {
  const mhz = /^cpu MHz\s*:\s*([\d.]+)/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1];
  return mhz ? Number(mhz) * 1000 : NaN;
}
