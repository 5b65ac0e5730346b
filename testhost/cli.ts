// `tsvmm testhost <run|test|demo|build-kernel>`: the nested KVM+VFIO test host from the command line.
import { existsSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_DEVICES, deviceHelp } from './devices.js';
import { runInTestHost, prepareKernel, tail, type TestHostResult } from './index.js';
import { ensureIommufdKernel, iommufdKernelDir, type KernelKind, KERNEL_KINDS } from './kernel.js';
import { projectRoot } from '../core/paths.js';
import { cacheDir, stderrLog, TestHostError, Timings } from './util.js';
import { progressSummary, suiteArgs } from './progress.js';

const help = () => `tsvmm testhost — a nested Linux (QEMU/TCG, q35 + intel-iommu, kvm_amd, vfio-pci) that runs a command
with this machine's root visible read-only and the test devices bound to vfio-pci.

Usage:
  tsvmm testhost run [options] -- <command...>   Boot the host, run the command inside in the current directory
                                                 (shared into the host read-only wherever it is, /tmp included),
                                                 exit with its status (124: time limit, 125: host failure).
  tsvmm testhost test [--timeout S]              The host test suite: dist/test/host/legacy/ and linux/ on the debian
                                                 kernel, then legacy/ and iommufd/ on the iommufd kernel. Each step's
                                                 limit: 15 min, up to twice that on a loaded machine (load average
                                                 per CPU); a step cut off reports what passed and what was running.
                                                 A host whose heartbeat stalls 30 s gets its vCPU kicked (QEMU 7.2's
                                                 TCG can leave an interrupt undelivered); one frozen for 2 min is
                                                 killed, its CPU state shown, and the step run once more.
  tsvmm testhost demo [options] [-- args]        Run 'node dist/bin/tsvmm.cjs run [args]' inside the host.
  tsvmm testhost build-kernel [--kernel K] [--force]
                                                 Fetch/build and cache the kernels (default: both).
  tsvmm testhost --help

Options:
  --kernel debian|iommufd   debian: Debian's 6.12 (VFIO container/group API only). iommufd: built from
                            linux-source-6.12 with testhost/kernel-testhost.config (adds /dev/iommu, VFIO cdev,
                            the mtty mdev sample). Default debian.
  --devices LIST            Comma-separated device sets (default ${DEFAULT_DEVICES.join(',')}; also all, none):
${deviceHelp()
  .split('\n')
  .map((l) => '    ' + l)
  .join('\n')}
  --timeout SECONDS         Wall-clock limit for boot + command (default 600; test: see above).
  --memory MIB              Host RAM (default 3072).   --cpus N   Host vCPUs (default 1: with
                            more, TCG occasionally panics the host kernel when KVM VMs are created).
  --env NAME=VALUE          Extra env for the command (repeatable).
  --keep                    Keep the per-run dir (console log, nvme image, outputs) and print its path.
  --quiet                   No progress messages.

Inside, the command sees: TSVMM_TESTHOST=1, TSVMM_TESTHOST_KERNEL=debian|iommufd, TSVMM_TESTHOST_DEVICES (JSON:
name -> {bdf, id, group, driver, vfioGroup, vfioCdev}), TSVMM_TESTHOST_RUN_DIR (read-write, comes back out),
TSVMM_TESTHOST_NVME_IMAGE / _SHA256 / _BYTES (with nvme), TSVMM_TESTHOST_IVSHMEM_PATH (with ivshmem).
Cache (kernels, initramfs, run dirs): $TSVMM_CACHE_DIR or ~/.cache/tsvmm (here: ${cacheDir()}).`;

interface Parsed {
  kernel?: KernelKind | 'both';
  devices: string[];
  timeoutMs?: number;
  memoryMiB?: number;
  cpus?: number;
  env: Record<string, string>;
  keep: boolean;
  quiet: boolean;
  force: boolean;
  rest: string[];
}

function parse(args: string[], allowBoth = false): Parsed {
  const p: Parsed = { devices: [], env: {}, keep: false, quiet: false, force: false, rest: [] };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const eq = a.indexOf('=');
    const [flag, inline] = a.startsWith('--') && eq > 0 ? [a.slice(0, eq), a.slice(eq + 1)] : [a, undefined];
    const val = () => {
      const v = inline ?? args[++i];
      if (v === undefined) throw new TestHostError(`${flag} needs a value`);
      return v;
    };
    const num = (what: string) => {
      const v = Number(val());
      if (!Number.isFinite(v) || v <= 0) throw new TestHostError(`${flag}: ${what} must be a positive number`);
      return v;
    };
    switch (flag) {
      case '--':
        p.rest = args.slice(i + 1);
        return p;
      case '--kernel': {
        const k = val();
        if (!(KERNEL_KINDS as string[]).includes(k) && !(allowBoth && k === 'both'))
          throw new TestHostError(
            `unknown kernel '${k}'; valid: ${KERNEL_KINDS.join(', ')}${allowBoth ? ', both' : ''}`,
          );
        p.kernel = k as KernelKind | 'both';
        break;
      }
      case '--devices':
        p.devices.push(val());
        break;
      case '--timeout':
        p.timeoutMs = num('seconds') * 1000;
        break;
      case '--memory':
        p.memoryMiB = num('MiB');
        break;
      case '--cpus':
        p.cpus = num('count');
        break;
      case '--env': {
        const v = val();
        const k = v.indexOf('=');
        if (k <= 0) throw new TestHostError(`--env wants NAME=VALUE, got '${v}'`);
        p.env[v.slice(0, k)] = v.slice(k + 1);
        break;
      }
      case '--keep':
        p.keep = true;
        break;
      case '--quiet':
      case '-q':
        p.quiet = true;
        break;
      case '--force':
        p.force = true;
        break;
      default:
        if (a.startsWith('-')) throw new TestHostError(`unknown option '${a}'`);
        p.rest = args.slice(i); // a command without '--'
        return p;
    }
  }
  return p;
}

function report(r: TestHostResult, label: string): void {
  const t = r.timings.map((s) => `${s.name} ${s.seconds.toFixed(1)}s`).join(', ');
  process.stderr.write(
    `testhost: ${label}: exit ${r.exitCode}${r.timedOut ? ' (time limit)' : ''} [${r.kernel.kind} ${r.kernel.version}] ${t}\n`,
  );
  if (r.error) {
    process.stderr.write(`testhost: ${r.error}\n`);
    process.stderr.write(`testhost: console log (tail):\n${tail(r.consoleLog, 40)}\n`);
  }
  if (r.runDir) process.stderr.write(`testhost: run dir kept: ${r.runDir}\n`);
}

async function cmdRun(args: string[]): Promise<number> {
  const p = parse(args);
  if (p.rest.length === 0) throw new TestHostError('run needs a command: tsvmm testhost run [options] -- <command...>');
  const r = await runInTestHost({
    kernel: (p.kernel as KernelKind | undefined) ?? 'debian',
    devices: p.devices.length ? p.devices : DEFAULT_DEVICES,
    command: p.rest.length === 1 ? p.rest[0]! : p.rest,
    // (cwd: runInTestHost's default, this process's directory, shared when the host would not see it otherwise.)
    timeoutMs: p.timeoutMs,
    memoryMiB: p.memoryMiB,
    cpus: p.cpus,
    env: p.env,
    stream: true,
    keepRunDir: p.keep,
    log: p.quiet ? () => {} : stderrLog,
  });
  report(r, 'run');
  return r.exitCode;
}

/** Counts from the node test runner's summary (TAP "# pass N", spec "ℹ pass N"). */
export function testCounts(out: string): { pass: number; fail: number } {
  const get = (k: string) => {
    const m = [...out.matchAll(new RegExp(`^(?:#|ℹ) ${k} (\\d+)\\s*$`, 'gm'))];
    return m.length ? Number(m[m.length - 1]![1]) : 0;
  };
  return { pass: get('pass'), fail: get('fail') };
}

/** A test-host suite step's default limit. */
export const SUITE_BASE_MS = 15 * 60_000;

/**
 * A step's limit on this machine: the base, stretched by how loaded it is (1-minute load average per CPU, at most
 * twice): a 2-core machine shared with other test hosts runs the same suite slower, and CI allows 90 minutes in all.
 */
export function suiteTimeoutMs(baseMs: number, load1: number, ncpus: number): number {
  const factor = Math.min(2, Math.max(1, load1 / Math.max(1, ncpus)));
  return Math.round((baseMs * factor) / 1000) * 1000;
}

/** A step's line in the summary: the runner's own counts, or (cut off, no summary) what its progress log says. */
export function stepSummary(r: Pick<TestHostResult, 'exitCode' | 'stdout' | 'progress' | 'timedOut' | 'error'>): {
  pass: number;
  fail: number;
  ok: boolean;
  why: string;
} {
  const c = testCounts(r.stdout);
  const hasSummary = /^(?:#|ℹ) tests \d+\s*$/m.test(r.stdout);
  const p = progressSummary(r.progress ?? '');
  const pass = hasSummary ? c.pass : p.pass;
  const fail = hasSummary ? c.fail : p.fail;
  const ok = r.exitCode === 0 && hasSummary && fail === 0 && pass > 0;
  if (ok) return { pass, fail, ok, why: 'ok' };
  const parts: string[] = [];
  if (r.error) parts.push(r.error.split('\n')[0]!);
  else if (pass + fail === 0) parts.push('FAILED: no tests ran');
  else parts.push(`FAILED (exit ${r.exitCode})`);
  if (!hasSummary && pass + fail > 0) parts.push('counts from the progress log, the run had no summary');
  if (!hasSummary && p.running) parts.push(`running when it stopped: ${p.running}`);
  if (p.failed.length) parts.push(`failed: ${p.failed.slice(0, 5).join('; ')}${p.failed.length > 5 ? '; …' : ''}`);
  return { pass, fail, ok, why: parts.join('; ') };
}

/**
 * A suite step, run once more when its host froze (its kernel stopped; see FROZEN_MS): never for a test that
 * failed or hung, and a second freeze stands. `froze`: what was running when the first run's host froze.
 */
export async function runStep(
  run: () => Promise<TestHostResult>,
  onFroze: (first: TestHostResult, during: string) => void,
): Promise<{ r: TestHostResult; froze?: string }> {
  const first = await run();
  if (!first.frozen) return { r: first };
  const during = progressSummary(first.progress ?? '').running ?? 'the start, before any test';
  onFroze(first, during);
  return { r: await run(), froze: during };
}

async function cmdTest(args: string[]): Promise<number> {
  const p = parse(args, true);
  const dirs = { legacy: 'dist/test/host/legacy/', iommufd: 'dist/test/host/iommufd/', linux: 'dist/test/host/linux/' };
  for (const d of Object.values(dirs)) {
    if (!existsSync(join(projectRoot, d)))
      throw new TestHostError(`${d} not found under ${projectRoot}: build first (npm run build)`);
  }
  const plan: { kernel: KernelKind; dirs: string[] }[] = [];
  // linux/: Linux guests booted by tsvmm (a few minutes); on the debian host only, whose kernel is also the guest's.
  if (p.kernel !== 'iommufd') plan.push({ kernel: 'debian', dirs: [dirs.legacy, dirs.linux] });
  if (p.kernel !== 'debian') plan.push({ kernel: 'iommufd', dirs: [dirs.legacy, dirs.iommufd] });
  const summary: string[] = [];
  let failed = false;
  for (const step of plan) {
    const label = `${step.kernel} kernel: ${step.dirs.join(' ')}`;
    const timeoutMs = p.timeoutMs ?? suiteTimeoutMs(SUITE_BASE_MS, loadavg()[0]!, cpus().length);
    process.stdout.write(
      `\n# testhost: ${label} (limit ${timeoutMs / 1000} s${p.timeoutMs ? '' : `, load average ${loadavg()[0]!.toFixed(1)} on ${cpus().length} CPUs`})\n`,
    );
    let r: TestHostResult;
    let froze: string | undefined;
    try {
      ({ r, froze } = await runStep(
        () =>
          runInTestHost({
            kernel: step.kernel,
            cwd: projectRoot,
            devices: p.devices.length ? p.devices : DEFAULT_DEVICES,
            // TAP to stdout, and each test's start and end to the run dir as it happens (a cut-off run keeps them).
            command: ['node', ...suiteArgs(step.dirs)],
            // linux/highmem.test.ts pins a 5 GiB guest: that host needs the RAM.
            timeoutMs,
            memoryMiB: p.memoryMiB ?? (step.dirs.includes(dirs.linux) ? 7168 : undefined),
            cpus: p.cpus,
            env: p.env,
            stream: true,
            keepRunDir: p.keep,
            log: p.quiet ? () => {} : stderrLog,
          }),
        (first, during) => {
          report(first, label);
          process.stdout.write(`\n# testhost: the host froze during ${during}; running the step once more\n`);
        },
      ));
    } catch (e) {
      // A kernel that cannot be fetched/built fails this step; the other still runs.
      if (!(e instanceof TestHostError)) throw e;
      process.stderr.write(`tsvmm testhost: ${e.message}\n`);
      failed = true;
      summary.push(`#   ${label}: FAILED: ${e.message.split('\n')[0]}`);
      continue;
    }
    report(r, label);
    const c = stepSummary(r);
    if (!c.ok) failed = true;
    summary.push(
      `#   ${label}: pass ${c.pass}, fail ${c.fail} — ${c.why}${froze ? ` (the first run's host froze during ${froze}; this is the second run)` : ''}${r.kicks ? ` (its vCPU kicked ${r.kicks} time(s) for a stalled heartbeat)` : ''} (${r.timings.map((s) => `${s.name} ${s.seconds.toFixed(1)}s`).join(', ')})`,
    );
  }
  process.stdout.write(
    `\n# testhost summary\n${summary.join('\n')}\n# testhost: ${failed ? 'FAILED' : 'all passed'}\n`,
  );
  return failed ? 1 : 0;
}

async function cmdDemo(args: string[]): Promise<number> {
  const p = parse(args);
  const bin = join(projectRoot, 'dist/bin/tsvmm.cjs');
  if (!existsSync(bin))
    process.stderr.write(
      `testhost: warning: ${bin} does not exist yet (npm run build); the host will report the failure\n`,
    );
  const r = await runInTestHost({
    kernel: (p.kernel as KernelKind | undefined) ?? 'debian',
    cwd: projectRoot,
    devices: p.devices.length ? p.devices : DEFAULT_DEVICES,
    command: ['node', 'dist/bin/tsvmm.cjs', 'run', ...p.rest],
    timeoutMs: p.timeoutMs ?? 5 * 60_000,
    memoryMiB: p.memoryMiB,
    cpus: p.cpus,
    env: p.env,
    stream: true,
    keepRunDir: p.keep,
    log: p.quiet ? () => {} : stderrLog,
  });
  report(r, 'demo');
  return r.exitCode;
}

async function cmdBuildKernel(args: string[]): Promise<number> {
  const p = parse(args, true);
  if (p.rest.length) throw new TestHostError(`build-kernel takes no arguments (got '${p.rest.join(' ')}')`);
  const kinds: KernelKind[] = !p.kernel || p.kernel === 'both' ? ['debian', 'iommufd'] : [p.kernel];
  const log = p.quiet ? () => {} : stderrLog;
  for (const k of kinds) {
    const t = new Timings();
    if (p.force && k === 'iommufd') await ensureIommufdKernel(log, { force: true });
    const r = await prepareKernel(k, log, t);
    process.stderr.write(`testhost: ${k} kernel ${r.version}: ${r.kernel} (${t.format()})\n`);
  }
  process.stderr.write(`testhost: cache ${cacheDir()} (iommufd kernel: ${iommufdKernelDir()})\n`);
  return 0;
}

export async function testhostMain(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case undefined:
      case '-h':
      case '--help':
      case 'help':
        process.stdout.write(help() + '\n');
        return cmd === undefined ? 2 : 0;
      case 'run':
        return await cmdRun(rest);
      case 'test':
        return await cmdTest(rest);
      case 'demo':
        return await cmdDemo(rest);
      case 'build-kernel':
        return await cmdBuildKernel(rest);
      default:
        process.stderr.write(`tsvmm testhost: unknown command '${cmd}' (run, test, demo, build-kernel, --help)\n`);
        return 2;
    }
  } catch (e) {
    if (e instanceof TestHostError) {
      process.stderr.write(`tsvmm testhost: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
}

// Runnable on its own too: node dist/testhost/cli.js <args>
if (import.meta.url === `file://${process.argv[1]}`) {
  testhostMain(process.argv.slice(2)).then((c) => {
    process.exitCode = c;
  });
}
