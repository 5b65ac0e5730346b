// Migrating Linux guests inside the test host: `tsvmm run` processes (source, destination) with their serial
// output collected, their QMP, the migration driven to its end, the configs (the test host's Debian kernel, a
// busybox initramfs with tsvmm's guest programs) written to the run dir. Every child a test started is killed
// after it (killChildren in an afterEach), whatever failed.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { linuxGuest, type LinuxGuestOptions } from '../../lib/testing.js';
import type { VmConfig } from '../../generated/config-types.js';
import { cli } from './linux.js';
import { QmpTestClient } from './qmp.js';

/**
 * One wait's limit. Generous (each of these tests takes about 30 s in the test host, QEMU TCG), but well inside the
 * test host's own limit, so that a wait that never ends fails with both VMMs' serial and messages shown instead of
 * the whole suite being cut off with nothing said. Nothing here measures time.
 */
export const WAIT_MS = 240_000;

/** A test's limit: several waits in a row. */
export const TEST_MS = 2 * WAIT_MS;

export interface Child {
  child: ChildProcess;
  out: () => string;
  err: () => string;
  /** Still running (no exit, no signal). */
  alive: () => boolean;
}

const children = new Set<ChildProcess>();

/**
 * Kills every child still running and waits for them to go (an afterEach: a live child keeps the test runner
 * alive; and an mdev can be removed only once no VMM holds it). A child that does not go within WAIT_MS (stuck in
 * the kernel) fails the test rather than hanging the suite.
 */
export async function killChildren(): Promise<void> {
  const live = [...children].filter((c) => c.exitCode === null && c.signalCode === null);
  children.clear();
  for (const c of live) c.kill('SIGKILL');
  await Promise.all(
    live.map(async (c) => {
      if (!(await exitWithin(c, WAIT_MS)))
        throw new Error(`pid ${c.pid} after SIGKILL: still running after ${WAIT_MS / 1000} s`);
    }),
  );
}

/** `c`'s exit code and signal once it exits; undefined if it is still running after `ms`. */
export async function exitWithin(c: ChildProcess, ms: number): Promise<[number | null, string | null] | undefined> {
  if (c.exitCode !== null || c.signalCode !== null) return [c.exitCode, c.signalCode];
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), ms)));
  try {
    return await Promise.race([once(c, 'exit') as Promise<[number | null, string | null]>, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** `tsvmm run ARGS…` with the guest's serial (stdout) and tsvmm's messages (stderr) collected. */
export function runTsvmm(args: string[]): Child {
  const child = spawn(process.execPath, [cli, 'run', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let out = '',
    err = '';
  child.stdout!.setEncoding('latin1').on('data', (c: string) => (out += c));
  child.stderr!.setEncoding('utf8').on('data', (c: string) => (err += c));
  return {
    child,
    out: () => out,
    err: () => err,
    alive: () => child.exitCode === null && child.signalCode === null,
  };
}

/** What a failure message shows of a child. */
export const show = (name: string, c: Child) =>
  `--- ${name} (${c.alive() ? 'running' : `exit ${c.child.exitCode ?? c.child.signalCode}`}) serial ---\n${c.out().slice(-4000)}\n--- ${name} stderr ---\n${c.err().slice(-4000)}`;

/** Waits for `f`; fails at once when a watched child exits first, or after `ms`. */
export async function until(
  what: string,
  f: () => boolean,
  watch: [string, Child][] = [],
  ms = WAIT_MS,
): Promise<void> {
  for (const end = Date.now() + ms; !f(); ) {
    const dead = watch.find(([, c]) => !c.alive());
    if (dead) assert.fail(`${what}: ${dead[0]} exited first\n${watch.map(([n, c]) => show(n, c)).join('\n')}`);
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}\n${watch.map(([n, c]) => show(n, c)).join('\n')}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A QMP session past its greeting and qmp_capabilities. */
export async function qmp(sock: string): Promise<QmpTestClient> {
  const q = await QmpTestClient.connect(sock);
  await q.next();
  await q.call('qmp_capabilities');
  return q;
}

/** The MIGRATION event's final status (completed, failed or cancelled); the events before it are dropped. */
export async function migrationEnd(q: QmpTestClient, ms = WAIT_MS): Promise<string> {
  for (const end = Date.now() + ms; ; ) {
    const m = q.events.shift() ?? (await q.next(Math.max(1, end - Date.now())));
    if (m.event !== 'MIGRATION') continue;
    const s = (m.data as { status: string }).status;
    if (['completed', 'failed', 'cancelled'].includes(s)) return s;
  }
}

export async function queryStatus(q: QmpTestClient): Promise<string> {
  return ((await q.call('query-status')).return as { status: string }).status;
}

/** A Linux guest config (the test host's Debian kernel) written into the run dir; returns its path. */
export function linuxConfig(name: string, opts: Omit<LinuxGuestOptions, 'kernel'>): string {
  const cfg: VmConfig = linuxGuest({ kernel: 'testhost', ...opts });
  const path = join(process.env.TSVMM_TESTHOST_RUN_DIR!, `${name}-${process.pid}-${Date.now()}.json`);
  writeFileSync(path, JSON.stringify(cfg, null, 2));
  return path;
}

/** A TCP port on the loopback nobody listens on (this moment). */
export async function freeTcpPort(): Promise<number> {
  const s = createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as { port: number }).port;
  s.close();
  await once(s, 'close');
  return port;
}

/** Ends a child: QMP quit when given, else SIGTERM; waits (at most WAIT_MS) for its exit. */
export async function stop(c: Child, q?: QmpTestClient): Promise<void> {
  if (!c.alive()) return;
  const gone = exitWithin(c.child, WAIT_MS);
  if (q) await q.call('quit').catch(() => c.child.kill('SIGTERM'));
  else c.child.kill('SIGTERM');
  if (!(await gone))
    assert.fail(
      `the VMM (pid ${c.child.pid}) told to ${q ? 'quit' : 'end (SIGTERM)'}: still running after ${WAIT_MS / 1000} s\n${show('it', c)}`,
    );
}

/**
 * A live migration's two processes: the destination listening on `uri` (`--incoming`; a unix: socket waited for),
 * then the source, which runs until the test migrates it.
 */
export async function startLivePair(o: {
  uri: string;
  src: string;
  dst: string;
  srcQmp: string;
  dstQmp: string;
}): Promise<{ src: Child; dst: Child; both: [string, Child][] }> {
  const dst = runTsvmm([o.dst, '--incoming', o.uri, '--qmp', o.dstQmp]);
  if (o.uri.startsWith('unix:'))
    await until('the destination to listen', () => existsSync(o.uri.slice(5)), [['destination', dst]]);
  // The sandbox lets a running VMM open no socket: the source's unix:/tcp: connection needs it off.
  const src = runTsvmm([o.src, '--qmp', o.srcQmp, '--sandbox', 'off']);
  return {
    src,
    dst,
    both: [
      ['source', src],
      ['destination', dst],
    ],
  };
}

/**
 * After a live migration completed: the destination runs while the source is still there, waiting in
 * postmigrate; then the source quits cleanly. Returns the destination's QMP.
 */
export async function handOver(src: Child, q: QmpTestClient, dstQmp: string): Promise<QmpTestClient> {
  const d = await qmp(dstQmp);
  assert.equal(await queryStatus(d), 'running');
  assert.ok(src.alive(), 'the source is still there while the destination runs');
  assert.equal(await queryStatus(q), 'postmigrate');
  await stop(src, q);
  assert.equal(src.child.exitCode, 0, show('source', src));
  return d;
}

/**
 * The shell lines that find the tty Linux's 8250_pci made of the mtty mdev (PCI 4348:3253) and say which it is
 * ("mtty tty=ttyS1 pci=0000:00:01.0"); $tty holds it after them ("mtty tty= pci=" when nothing bound it).
 */
export const FIND_MTTY_TTY = [
  'tty=; pci=',
  'for d in /sys/bus/pci/devices/*; do',
  '  [ "$(cat $d/vendor):$(cat $d/device)" = 0x4348:0x3253 ] || continue',
  '  pci=${d##*/}; t=$(find $d/ -name "ttyS*" | head -1); tty=${t##*/}',
  'done',
  'echo "mtty tty=$tty pci=$pci driver=$(basename $(readlink /sys/bus/pci/devices/$pci/driver) 2>/dev/null)"',
].join('\n');
