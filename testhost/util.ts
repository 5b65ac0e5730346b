// Small helpers shared by the test-host modules: paths, the cache dir, subprocesses, disk space, timing.
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readFileSync, statfsSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { TsvmmError, type TsvmmErrorOptions } from '../core/errors.js';
import { projectRoot } from '../core/paths.js';

/** The fragment lives beside the .ts sources, not in dist/ (tsc does not copy it). */
export const kernelFragmentPath = join(projectRoot, 'testhost', 'kernel-testhost.config');

/** The test host could not be set up or run: a TsvmmError (code ERR_TESTHOST, exit status 2). */
export class TestHostError extends TsvmmError {
  constructor(message: string, opts?: TsvmmErrorOptions) {
    super('ERR_TESTHOST', message, opts);
  }
}

/** Cache shared by runs and by CI: kernels, initramfs, per-run dirs. Outside /tmp so the host sees it over 9p. */
export function cacheDir(): string {
  const d = process.env.TSVMM_CACHE_DIR || join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'tsvmm');
  mkdirSync(d, { recursive: true });
  return resolve(d);
}

export type Logger = (msg: string) => void;
export const stderrLog: Logger = (m) => process.stderr.write(`testhost: ${m}\n`);
export const quietLog: Logger = () => {};

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Append stdout+stderr to this file instead of capturing them. */
  logFile?: string;
  input?: string;
}

/** Run a program to completion; resolves with its status and captured output (never rejects on non-zero). */
export function exec(
  cmd: string,
  args: string[],
  opts: RunOptions = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolveP, reject) => {
    // Own process group, so an interrupt can stop a whole `make -j` tree.
    const so: SpawnOptions = {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: true,
    };
    const child = spawn(cmd, args, so);
    const untrack = track(child);
    let stdout = '';
    let stderr = '';
    const log = opts.logFile ? createWriteStream(opts.logFile, { flags: 'a' }) : undefined;
    child.stdout!.on('data', (b: Buffer) => {
      if (log) log.write(b);
      else stdout += b.toString();
    });
    child.stderr!.on('data', (b: Buffer) => {
      if (log) log.write(b);
      else stderr += b.toString();
    });
    child.on('error', (e) => {
      untrack();
      log?.end();
      reject(new TestHostError(`cannot run ${cmd}: ${e.message}`));
    });
    child.on('close', (code, sig) => {
      untrack();
      const done = () => resolveP({ code: code ?? (sig ? 128 : 1), stdout, stderr });
      if (log) log.end(done);
      else done();
    });
    // A command that exits without reading its input (EPIPE) is not an error here: its status says.
    child.stdin!.on('error', () => {});
    child.stdin!.end(opts.input ?? '');
  });
}

/** Like exec, but throws with the command's output tail when it fails. */
export async function mustExec(cmd: string, args: string[], opts: RunOptions = {}): Promise<string> {
  const r = await exec(cmd, args, opts);
  if (r.code !== 0) {
    let out = r.stderr || r.stdout;
    if (opts.logFile) {
      try {
        out = readFileSync(opts.logFile, 'utf8');
      } catch {
        /* no log */
      }
    }
    out = out.trim().split('\n').slice(-15).join('\n');
    throw new TestHostError(
      `'${cmd} ${args.join(' ')}' failed (exit ${r.code})${opts.logFile ? `; log: ${opts.logFile}` : ''}\n${out}`,
    );
  }
  return r.stdout;
}

/** Free bytes on the filesystem that holds `path` (or its nearest existing parent). */
export function freeBytes(path: string): number {
  let p = path;
  while (!existsSync(p) && dirname(p) !== p) p = dirname(p);
  const s = statfsSync(p);
  return s.bavail * s.bsize;
}

export function requireFreeSpace(path: string, needBytes: number, what: string): void {
  const free = freeBytes(path);
  if (free < needBytes) {
    const gib = (n: number) => (n / 2 ** 30).toFixed(1);
    throw new TestHostError(
      `not enough disk space for ${what}: ${gib(needBytes)} GiB needed under ${path}, ${gib(free)} GiB free ` +
        `(free some space or point TSVMM_CACHE_DIR at a bigger disk)`,
    );
  }
}

/** Wall-clock stage timings, printed by the CLI and returned by the API. */
export class Timings {
  readonly stages: { name: string; seconds: number }[] = [];
  add(name: string, seconds: number): void {
    this.stages.push({ name, seconds });
  }
  async time<T>(name: string, f: () => Promise<T>): Promise<T> {
    const t0 = performance.now();
    try {
      return await f();
    } finally {
      this.add(name, (performance.now() - t0) / 1000);
    }
  }
  format(): string {
    return this.stages.map((s) => `${s.name} ${s.seconds.toFixed(1)}s`).join(', ');
  }
}

/** POSIX single-quote a string for sh. */
export function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

// Children (QEMU, make, apt) and cleanups that an interrupt must not leave behind.
const live = new Set<ChildProcess>();
const cleanups = new Set<() => void>();
let handlersInstalled = false;

/** Kill a child and anything in its process group (children are spawned detached: their pid is the group id). */
export function killGroup(child: ChildProcess): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    try {
      child.kill('SIGKILL');
    } catch {
      /* gone */
    }
  }
}

/** Kill this child's group if we exit or are interrupted; returns the untrack function. */
export function track(child: ChildProcess): () => void {
  installHandlers();
  live.add(child);
  return () => {
    live.delete(child);
  };
}

/** Run f (e.g. remove a temp dir) if we are interrupted; returns the unregister function. */
export function onInterrupt(f: () => void): () => void {
  installHandlers();
  cleanups.add(f);
  return () => {
    cleanups.delete(f);
  };
}

function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  // 'exit' handlers must be synchronous: process.kill is.
  process.on('exit', () => {
    for (const c of live) killGroup(c);
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      process.stderr.write(`testhost: ${sig}: stopping\n`);
      for (const c of live) killGroup(c);
      for (const f of cleanups) {
        try {
          f();
        } catch {
          /* best effort */
        }
      }
      process.exit(sig === 'SIGINT' ? 130 : sig === 'SIGTERM' ? 143 : 129);
    });
  }
}
