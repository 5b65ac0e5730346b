// Linux guests inside the test host: the Debian kernel the host itself boots (cached outside, read
// over 9p) with its guest modules (nvme, e1000e), the configs/linux samples, and `tsvmm run`.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../../core/paths.js';
import { testHostKernel } from '../../lib/testing.js';

export const cli = join(projectRoot, 'dist/bin/tsvmm.cjs');

/** The guest kernel (tsvmm/testing's testHostKernel), which these tests need with its guest modules. */
export function linuxKernel(): { image: string; modules: string; version: string } {
  assert.equal(process.env.TSVMM_TESTHOST, '1', 'not inside the test host: run through `tsvmm testhost`');
  assert.ok(process.env.TSVMM_TESTHOST_RUN_DIR, 'TSVMM_TESTHOST_RUN_DIR is not set');
  const k = testHostKernel();
  assert.ok(
    k.modules,
    `the cached Debian kernel ${k.version} has no guest-modules/ (re-fetch it: tsvmm testhost build-kernel --kernel debian)`,
  );
  return { image: k.image, modules: k.modules, version: k.version };
}

/** Env the configs/linux samples need. */
export function linuxEnv(): Record<string, string> {
  const k = linuxKernel();
  return { TSVMM_LINUX_KERNEL: k.image, TSVMM_LINUX_MODULES: k.modules };
}

/** A sample from configs/linux, optionally with another script, written into the run dir (absolute paths kept as ${...}). */
export function sampleConfig(name: string, edit?: (c: Record<string, any>) => void): string {
  const c = JSON.parse(readFileSync(join(projectRoot, 'configs/linux', `${name}.json`), 'utf8')) as Record<string, any>;
  delete c.$schema;
  edit?.(c);
  const out = join(process.env.TSVMM_TESTHOST_RUN_DIR!, `${name}-${process.pid}-${Date.now()}.json`);
  writeFileSync(out, JSON.stringify(c, null, 2));
  return out;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** `tsvmm run <config>` as a child process; onStdout may kill it (returns the child). */
export function tsvmmRun(
  config: string,
  opts: { timeoutMs?: number; onStdout?: (all: string, child: ChildProcess) => void } = {},
): Promise<RunResult> {
  const t0 = performance.now();
  const child = spawn(process.execPath, [cli, 'run', config], {
    env: { ...process.env, ...linuxEnv() },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '',
    stderr = '';
  child.stdout.on('data', (b: Buffer) => {
    stdout += b.toString('latin1');
    opts.onStdout?.(stdout, child);
  });
  child.stderr.on('data', (b: Buffer) => {
    stderr += b.toString();
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 180_000);
  return new Promise((resolve) =>
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: performance.now() - t0 });
    }),
  );
}

export const describe = (r: RunResult) =>
  `exit ${r.code}${r.signal ? ` (${r.signal})` : ''} after ${(r.ms / 1000).toFixed(1)} s\n--- serial ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`;

/** /proc/interrupts lines as {irq, count, type, name}; count sums the per-CPU columns (SMP guests). */
export function parseInterrupts(
  text: string,
  prefix = '',
): { irq: string; count: number; chip: string; name: string }[] {
  const out: { irq: string; count: number; chip: string; name: string }[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith(prefix)) continue;
    const m = /^\s*(\d+):((?:\s+\d+)+)\s+(\S*[^\d\s]\S*)\s+(.*\S)\s*$/.exec(line.slice(prefix.length));
    if (m)
      out.push({
        irq: m[1]!,
        count: m[2]!
          .trim()
          .split(/\s+/)
          .reduce((n, c) => n + Number(c), 0),
        chip: m[3]!,
        name: m[4]!,
      });
  }
  return out;
}
