// Programmatic API of the test host: boot a nested KVM+VFIO Linux under QEMU/TCG, run one command in it
// (chrooted into this machine's root, shared read-only over 9p), and bring back its status and output.
import {
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  closeSync,
  rmSync,
  writeFileSync,
  fstatSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import type { Writable } from 'node:stream';
import { buildDevices, DEFAULT_DEVICES, devicesConf, parseDeviceSets, type HostDevice } from './devices.js';
import { ensureInitramfs } from './initramfs.js';
import { ensureDebianKernel, ensureIommufdKernel, type KernelKind, KERNEL_KINDS } from './kernel.js';
import { ensurePackages, HOST_PACKAGES } from './packages.js';
import { monitorCommands, QEMU, startQemu, type Share } from './qemu.js';
import { projectRoot } from '../core/paths.js';
import { cacheDir, type Logger, onInterrupt, shq, stderrLog, TestHostError, Timings } from './util.js';

export { DEFAULT_DEVICES, DEVICE_SETS, nvmePattern, type HostDevice } from './devices.js';
export { ensureDebianKernel, ensureIommufdKernel, iommufdKernelDir, type KernelKind, KERNEL_KINDS } from './kernel.js';
export { cacheDir, TestHostError, Timings } from './util.js';

export interface TestHostOptions {
  kernel?: KernelKind;
  /** Device sets (devices.ts): edu, nvme, e1000e, bridge, testdev, ivshmem, all, none. Default edu,nvme,e1000e,bridge. */
  devices?: string[];
  /** A shell command line (run by /bin/sh -c), or an argv that is quoted for you. */
  command: string | string[];
  /** Wall-clock limit for boot + command; default 10 min. */
  timeoutMs?: number;
  memoryMiB?: number;
  /** Host vCPUs; default 1 (see the note at startQemu's call). */
  cpus?: number;
  /** Extra env for the inner command. */
  env?: Record<string, string>;
  /** Working directory inside (default: this process's, as a user's project expects); shared into the host when
   *  its own mounts would hide it (under /tmp, /run, /dev/shm). */
  cwd?: string;
  /** Copy the inner stdout/stderr here as they are produced (true: this process's stdout/stderr). */
  stream?: boolean | { stdout: Writable; stderr: Writable };
  /** Progress messages (default: to stderr with a "testhost:" prefix). */
  log?: Logger;
  /** Keep the per-run dir (logs, nvme image) instead of deleting it; its path is in the result. */
  keepRunDir?: boolean;
}

export interface TestHostResult {
  /** The command's exit status; 124 if it hit the time limit; 125 if the host failed before reporting one. */
  exitCode: number;
  stdout: string;
  stderr: string;
  /** The host's serial console (kernel + /init messages). */
  consoleLog: string;
  timedOut: boolean;
  /** Set when the host itself failed (boot, mounts, device binding, QEMU crash). */
  error?: string;
  /** TSVMM_TESTHOST_DEVICES as seen inside (empty if the host never got that far). */
  devices: Record<string, HostDevice>;
  kernel: { kind: KernelKind; version: string };
  timings: { name: string; seconds: number }[];
  /** Only when keepRunDir. */
  runDir?: string;
  /** The node --test progress log (progress-reporter.ts, at $TSVMM_TEST_PROGRESS), when the command wrote one. */
  progress?: string;
  /** The host froze while the command ran (no heartbeat from its /init for FROZEN_MS); `error` says where. */
  frozen?: boolean;
  /** How often its vCPU was kicked for a stalled heartbeat (KICK_MS), when it was. */
  kicks?: number;
}

/** No heartbeat (written every 5 s) for this long: the host is frozen. Generous, so that a loaded machine is not. */
export const FROZEN_MS = 120_000;

/**
 * No heartbeat for this long: the host's vCPU gets a kick (stop and cont on QEMU's monitor), at most this often.
 * Seen here: the host's timer interrupt sat in its local APIC's IRR while the CPU ran on with IF set, and nothing
 * else raised one, so its timers stopped. That fits a QEMU TCG bug reported with a patch in December 2023 (qemu-devel,
 * 20231210190147.129734-2-lrh2000@pku.edu.cn; Debian 12's QEMU 7.2 predates it): after STI the translated code may
 * run on without looking at pending interrupts again. Stopping and resuming the vCPU should make it look; not yet
 * seen to help: the one stall since it was added was in nested-guest mode, where three kicks did not wake it.
 */
export const KICK_MS = 30_000;

/**
 * The host /init's heartbeat (its uptime, rewritten every 5 s while the command runs): it stops only when the
 * host's kernel stops running timers, which a command that hangs, however badly, does not do.
 */
export class Heartbeat {
  private text = '';
  private kicked = -Infinity;
  constructor(
    private at: number,
    private readonly frozenMs = FROZEN_MS,
    private readonly kickMs = KICK_MS,
  ) {}

  /**
   * The file's text at `now` (ms): 'frozen' (with the whole seconds since the last change) past frozenMs, 'kick'
   * when it has not changed for kickMs and no kick was asked for within kickMs, else 'ok'.
   */
  check(text: string, now: number): { state: 'ok' | 'kick' | 'frozen'; seconds: number } {
    if (text !== this.text) {
      this.text = text;
      this.at = now;
    }
    const stale = now - this.at;
    const seconds = Math.round(stale / 1000);
    if (stale > this.frozenMs) return { state: 'frozen', seconds };
    if (stale >= this.kickMs && now - this.kicked >= this.kickMs) {
      this.kicked = now;
      return { state: 'kick', seconds };
    }
    return { state: 'ok', seconds };
  }
}

/**
 * What a frozen host's CPU is doing, through QEMU's monitor: its registers, the code at RIP, RIP and CPL sampled
 * 8 times over 2 s (running or halted, in which program), and the local APIC (its timer armed? an interrupt pending?).
 */
async function frozenCpu(monitor: string): Promise<string> {
  const regs = await monitorCommands(monitor, ['info registers', 'x/4i $pc']);
  if (!regs) return '';
  const samples: string[] = [];
  for (let i = 0; i < 8; i++) {
    await new Promise((r) => setTimeout(r, 250));
    const rip = /^RIP=.*$/m.exec(await monitorCommands(monitor, ['info registers'], 2000))?.[0];
    if (rip) samples.push(rip);
  }
  const lapic = await monitorCommands(monitor, ['info lapic']);
  const keep = /^(RAX|RSI|R8 |R12|RIP|CS |CR0|EFER)|^0x/;
  return [
    ...regs.split('\n').filter((l) => keep.test(l)),
    'RIP sampled 8 times over 2 s:',
    ...samples,
    ...lapic.split('\n').filter((l) => /^(LVTT|Timer|SPIV|ISR|IRR|APR)/.test(l)),
  ].join('\n');
}

let runCounter = 0;

/** Outer paths the test host's own tmpfs mounts hide (its /init: /tmp, /run, /dev/shm). */
export function hiddenInHost(path: string): boolean {
  return ['/tmp', '/run', '/dev/shm'].some((d) => path === d || path.startsWith(d + '/'));
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Run dirs of processes that died without cleaning up (SIGKILL) are removed on the next run. */
function removeStaleRunDirs(runs: string): void {
  for (const d of existsSync(runs) ? readdirSync(runs) : []) {
    const pid = Number(d.split('-')[0]);
    if (pid && pid !== process.pid && !pidAlive(pid) && !existsSync(join(runs, d, 'keep')))
      rmSync(join(runs, d), { recursive: true, force: true });
  }
}

/** Paths go on the kernel command line and into space-separated config files. */
function checkPath(p: string, what: string): void {
  if (!/^\/[A-Za-z0-9._+/@=-]*$/.test(p))
    throw new TestHostError(
      `${what} path '${p}' has characters the test host cannot pass (use letters, digits, ._+-/@=)`,
    );
}

/** Tails a file the guest appends to over 9p. */
class Tail {
  private off = 0;
  constructor(
    private readonly path: string,
    private readonly out?: Writable,
  ) {}
  poll(): void {
    if (!this.out || !existsSync(this.path)) return;
    const fd = openSync(this.path, 'r');
    try {
      const size = fstatSync(fd).size;
      while (this.off < size) {
        const buf = Buffer.alloc(Math.min(size - this.off, 1 << 20));
        const n = readSync(fd, buf, 0, buf.length, this.off);
        if (n <= 0) break;
        this.off += n;
        this.out.write(buf.subarray(0, n));
      }
    } finally {
      closeSync(fd);
    }
  }
}

function readIf(p: string): string {
  try {
    return readFileSync(p, 'utf8');
  } catch {
    return '';
  }
}

export function tail(s: string, lines: number): string {
  return s.trimEnd().split('\n').slice(-lines).join('\n');
}

/** Prepare kernel and initramfs without booting (for `build-kernel` and warm-up). */
export async function prepareKernel(
  kind: KernelKind,
  log: Logger = stderrLog,
  timings = new Timings(),
): Promise<{ kernel: string; initrd: string; version: string }> {
  if (!KERNEL_KINDS.includes(kind))
    throw new TestHostError(`unknown kernel '${kind}'; valid: ${KERNEL_KINDS.join(', ')}`);
  await timings.time('packages', () => ensurePackages(HOST_PACKAGES, log));
  const t0 = performance.now();
  let k;
  if (kind === 'debian') {
    k = await ensureDebianKernel(log);
    timings.add(k.downloaded ? 'kernel download' : 'kernel (cached)', (performance.now() - t0) / 1000);
  } else {
    const r = await ensureIommufdKernel(log);
    if (r.built) {
      timings.add('kernel source download', r.downloadSeconds ?? 0);
      timings.add('kernel build', r.buildSeconds ?? 0);
    } else timings.add('kernel (cached)', (performance.now() - t0) / 1000);
    k = r;
  }
  const initrd = await timings.time('initramfs', () => ensureInitramfs(k, log));
  return { kernel: k.image, initrd: initrd.path, version: k.version };
}

export async function runInTestHost(opts: TestHostOptions): Promise<TestHostResult> {
  const log = opts.log ?? stderrLog;
  const kind = opts.kernel ?? 'debian';
  const timeoutMs = opts.timeoutMs ?? 10 * 60_000;
  const sets = parseDeviceSets(opts.devices ?? DEFAULT_DEVICES); // validate before any download
  const cwd = opts.cwd ?? process.cwd();
  for (const k of Object.keys(opts.env ?? {}))
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new TestHostError(`bad env var name '${k}'`);
  const timings = new Timings();

  const { kernel, initrd, version } = await prepareKernel(kind, log, timings);

  const runs = join(cacheDir(), 'runs');
  mkdirSync(runs, { recursive: true });
  removeStaleRunDirs(runs);
  const runDir = join(runs, `${process.pid}-${++runCounter}-${Date.now().toString(36)}`);
  checkPath(runDir, 'run dir');
  checkPath(cwd, 'working dir');
  mkdirSync(runDir);
  if (opts.keepRunDir) writeFileSync(join(runDir, 'keep'), '');
  const removeRunDir = () => {
    if (!opts.keepRunDir) rmSync(runDir, { recursive: true, force: true });
  };
  const unregister = onInterrupt(removeRunDir);

  try {
    const env: Record<string, string> = {};
    const devs = buildDevices(sets, { runDir, env });
    writeFileSync(join(runDir, 'devices.conf'), devicesConf(devs));

    // The host mounts tmpfs over /tmp, /run and /dev/shm: anything the command needs from there (the project, the
    // working dir of `testhost run`, node) is shared separately, at the same path.
    const shares: Share[] = [
      { tag: 'hostroot', path: '/', readonly: true },
      { tag: 'tsvmmrun', path: runDir, readonly: false },
    ];
    const extra: Share[] = [];
    for (const p of new Set([projectRoot, cwd, dirname(process.execPath)])) {
      if (hiddenInHost(p) && !runDir.startsWith(p + '/')) {
        checkPath(p, 'shared');
        extra.push({ tag: `tsvmm${extra.length}`, path: p, readonly: true });
      }
    }
    shares.push(...extra);
    writeFileSync(
      join(runDir, 'mounts.conf'),
      extra.map((s) => `${s.tag} ${s.path} ${s.readonly ? 'ro' : 'rw'}\n`).join(''),
    );

    const command = typeof opts.command === 'string' ? opts.command : opts.command.map(shq).join(' ');
    const allEnv: Record<string, string> = {
      TSVMM_TESTHOST: '1',
      TSVMM_TESTHOST_KERNEL: kind,
      TSVMM_TESTHOST_RUN_DIR: runDir,
      TSVMM_TEST_PROGRESS: join(runDir, 'test-progress.jsonl'),
      ...(process.env.CI ? { CI: process.env.CI } : {}),
      ...env,
      ...opts.env,
    };
    const inner = [
      '# generated by testhost/index.ts: runs chrooted into the outer root inside the test host',
      `export PATH=${shq(`${dirname(process.execPath)}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`)}`,
      'export HOME=/tmp/home LANG=C.UTF-8 TERM=dumb',
      'mkdir -p "$HOME"',
      ...Object.entries(allEnv).map(([k, v]) => `export ${k}=${shq(v)}`),
      `export TSVMM_TESTHOST_DEVICES="$(cat ${shq(join(runDir, 'devices.json'))})"`,
      // VFIO pins guest memory: QEMU and the project's VMM need an unlimited RLIMIT_MEMLOCK.
      'ulimit -l unlimited',
      `cd ${shq(cwd)} || exit 125`,
      `exec /bin/sh -c ${shq(command)}`,
      '',
    ].join('\n');
    writeFileSync(join(runDir, 'inner.sh'), inner);

    const consoleLog = join(runDir, 'console.log');
    const qemuLog = join(runDir, 'qemu.log');
    const monitor = join(runDir, 'monitor.sock');
    const innerBudget = Math.max(10, Math.floor(timeoutMs / 1000) - 15); // leave time to flush and power off
    const append = `console=ttyS0 intel_iommu=on panic=-1 quiet tsvmm.run=${runDir} tsvmm.timeout=${innerBudget}`;
    const streams =
      opts.stream === true ? { stdout: process.stdout, stderr: process.stderr } : opts.stream || undefined;
    const outTail = new Tail(join(runDir, 'stdout'), streams?.stdout);
    const errTail = new Tail(join(runDir, 'stderr'), streams?.stderr);

    // One vCPU by default: with 2, QEMU 7.2's TCG sometimes runs a stale int3 after the host kernel patches a
    // static key (KVM toggles preempt_notifier_key on every VM create/destroy) and the host panics in __schedule.
    const cpus = opts.cpus ?? 1;
    if (cpus > 1)
      log(
        `warning: ${cpus} vCPUs: the host kernel may panic (int3 in __schedule) when KVM VMs come and go; 1 is reliable`,
      );
    log(`booting the test host (${kind} kernel ${version}; devices: ${sets.join(',') || 'none'})`);
    const t0 = performance.now();
    const q = startQemu(
      {
        kernel,
        initrd,
        append,
        memoryMiB: opts.memoryMiB ?? 3072,
        cpus,
        shares,
        deviceArgs: devs.flatMap((d) => d.qemu),
        consoleLog,
        qemuLog,
        monitor,
      },
      timeoutMs,
    );
    let started: number | undefined;
    let finished: number | undefined;
    // The host's /init writes its uptime every 5 s while the command runs. When that stops, the host's kernel no
    // longer runs timers (its time limit cannot fire either): waiting for the wall-clock limit only wastes it.
    let beat = new Heartbeat(performance.now());
    let frozen: { seconds: number; cpu: string } | undefined;
    let kicks = 0;
    const watchHeartbeat = () => {
      if (frozen) return;
      const { state, seconds } = beat.check(readIf(join(runDir, 'heartbeat')), performance.now());
      if (state === 'kick') {
        kicks++;
        log(`no heartbeat from the test host for ${seconds} s: kicking its vCPU (stop, cont; see KICK_MS)`);
        void monitorCommands(monitor, ['stop', 'cont']);
      } else if (state === 'frozen') {
        const f = (frozen = { seconds, cpu: '' });
        log(`the test host froze: no heartbeat for ${seconds} s; reading its CPU state, then killing it`);
        void frozenCpu(monitor).then((cpu) => {
          f.cpu = cpu;
          q.kill();
        });
      }
    };
    const poll = () => {
      if (started === undefined && existsSync(join(runDir, 'started'))) {
        started = performance.now();
        timings.add('boot', (started - t0) / 1000);
        beat = new Heartbeat(started);
      }
      if (finished === undefined && existsSync(join(runDir, 'status'))) finished = performance.now();
      if (started !== undefined && finished === undefined) watchHeartbeat();
      outTail.poll();
      errTail.poll();
    };
    const ticker = setInterval(poll, 200);
    let qexit;
    try {
      qexit = await q.done;
    } finally {
      clearInterval(ticker);
    }
    poll();
    const tEnd = performance.now();
    if (started !== undefined) timings.add('command', ((finished ?? tEnd) - started) / 1000);
    if (finished !== undefined) timings.add('shutdown', (tEnd - finished) / 1000);

    const status = readIf(join(runDir, 'status')).trim();
    const innerTimedOut = existsSync(join(runDir, 'timedout'));
    const initError = readIf(join(runDir, 'init-error')).trim();
    const devicesJson = readIf(join(runDir, 'devices.json')).trim();
    let devices: Record<string, HostDevice> = {};
    try {
      if (devicesJson) devices = JSON.parse(devicesJson) as Record<string, HostDevice>;
    } catch {
      /* reported via consoleLog */
    }
    const result: TestHostResult = {
      exitCode: 125,
      stdout: readIf(join(runDir, 'stdout')),
      stderr: readIf(join(runDir, 'stderr')),
      consoleLog: readIf(consoleLog),
      timedOut: false,
      devices,
      kernel: { kind, version },
      timings: timings.stages,
    };
    const progress = readIf(join(runDir, 'test-progress.jsonl'));
    if (progress) result.progress = progress;
    if (status !== '' && !innerTimedOut) {
      result.exitCode = Number(status);
    } else if (frozen) {
      result.frozen = true;
      result.error =
        `the test host froze: its /init wrote no heartbeat for ${frozen.seconds} s while the command ran (the ` +
        `host's kernel stopped running timers; ${kicks} kick(s) of its vCPU did not wake it); killed QEMU. Its CPU ` +
        `then:\n${frozen.cpu || '(the monitor did not answer)'}`;
    } else if (innerTimedOut || qexit.killedForTimeout) {
      result.exitCode = 124;
      result.timedOut = true;
      result.error = innerTimedOut
        ? `the command did not finish within its time limit (${readIf(join(runDir, 'timedout')).trim()} s); killed`
        : `the test host did not finish within ${timeoutMs / 1000} s; killed QEMU`;
    } else {
      const qlog = tail(
        readIf(qemuLog)
          .split('\n')
          .filter((l) => !/TCG doesn't support requested feature/.test(l))
          .join('\n'),
        10,
      );
      const panic = /Kernel panic - not syncing: (.*)/.exec(result.consoleLog)?.[1];
      result.error = initError
        ? `test host /init failed: ${initError}`
        : panic
          ? `the test host's kernel panicked (${panic.trim()}); see the console log`
          : `the test host stopped without reporting a status (${QEMU} exit ${qexit.code ?? qexit.signal})${qlog ? `:\n${qlog}` : ''}`;
    }
    if (kicks) result.kicks = kicks;
    if (opts.keepRunDir) result.runDir = runDir;
    return result;
  } finally {
    unregister();
    removeRunDir();
  }
}
