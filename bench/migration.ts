// Migration rows, INSIDE the test host (bench/main.ts --migration-only starts it there): the test host's Debian
// kernel with an initrd whose script runs dirty-checksum (guest/linux/dirty-checksum.c) over 64 MiB forever, under
// tsvmm and QEMU 7.2, no assigned device, the same initrd file for both. Per VMM and round:
//   live:    a destination waits (`--incoming unix:P` / `-incoming unix:P`), the source boots (spawn → first
//            `pass` line is the cold boot), runs two more passes, then QMP `migrate unix:P`; downtime, total time
//            and setup time are the VMM's own query-migrate; the destination must print a `pass` line after the
//            source's last one, with no `dirty-checksum error` line.
//   save:    a second source, `migrate exec:cat > F`; the total time per GiB of guest RAM.
//   restore: a new process from F (`--incoming file:F` / `-incoming exec:cat F`): spawn → the first `pass` line
//            the restored guest prints (the guest finishes the pass it was in first: up to one pass period).
// Both VMMs get max-bandwidth 1 GiB/s (migrate-set-parameters) so neither is held at its default rate limit;
// downtime-limit stays at both defaults (300 ms).
//
//   node dist/bench/migration.js [--rounds N] [--mem-mib N] [--out FILE]
//   node dist/bench/migration.js --profile   (one tsvmm round only, not a result: every tsvmm process under
//       `node --cpu-prof` into <run dir>/migration-profile/<role>, sandbox off for the profile's write)
//   node dist/bench/migration.js --mtty   (tsvmm only, iommufd kernel: the multiboot test guest migrated live with
//       an mtty instance, test=mtty-stream, and without a device, test=count; downtimes, device bytes)
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { cpus, release, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { buildInitramfs } from '../machine/loader/initramfs.js';
import { linuxBenchSetup, qemuVersion } from './linux.js';
import { innerQemuArgs } from '../testhost/qemu.js';
import { CMDLINE } from './linux-report.js';
import { QEMU, tsvmmJs } from './vmm.js';
import { runIfMain } from './entry.js';

export const DIRTY_MIB = 64;
export const DEFAULT_MEM_MIB = 1024;
const MAX_BANDWIDTH = 2 ** 30;
const WAIT_MS = 300_000;

type Vmm = 'tsvmm' | 'qemu';

export interface MigrationSample {
  vmm: Vmm;
  round: number;
  /** spawn → first `pass` line of a cold boot. */
  coldBootMs?: number;
  /** Live over unix: query-migrate's downtime, total-time, setup-time (ms), RAM bytes sent, passes. */
  downtimeMs?: number;
  totalMs?: number;
  setupMs?: number;
  ramBytes?: number;
  syncs?: number;
  /** Last pass the source printed, first the destination printed (it must be the later one). */
  srcLastPass?: number;
  dstFirstPass?: number;
  /** Destination's first `pass` line arrival after migrate's completion (ms). */
  dstPassAfterMs?: number;
  /** Source's mean time between `pass` lines before the migration (ms). */
  passPeriodMs?: number;
  /** Save to a file: query-migrate total-time and the file's size. */
  saveMs?: number;
  saveBytes?: number;
  /** spawn → first `pass` line of a process restored from the file. */
  restoreMs?: number;
  restoreFirstPass?: number;
  errors: string[];
}

export interface MigrationResults {
  date: string;
  where: string;
  kernel: string;
  qemu: string;
  memMiB: number;
  dirtyMiB: number;
  rounds: number;
  samples: MigrationSample[];
  /** tsvmm only, its own test-host boot (iommufd kernel): the multiboot test guest with and without mtty. */
  mtty?: MttyResults;
}

export interface MttySample {
  /** 'mtty': test=mtty-stream through an mtty instance; 'none': test=count, no device. */
  device: 'mtty' | 'none';
  downtimeMs?: number;
  totalMs?: number;
  ramBytes?: number;
  /** query-migrate's vfio.transferred and x-precopy-bytes. */
  vfioBytes?: number;
  precopyBytes?: number;
  /** The destination went on (an `mtty seq` line, or a count line). */
  continued?: boolean;
  error?: string;
}

export interface MttyResults {
  date: string;
  where: string;
  memMiB: number;
  samples: MttySample[];
}

// ---- pure ----------------------------------------------------------------------------------

/** The `pass N sum S` lines of dirty-checksum's output, and whether it reported a wrong word. */
export function parsePasses(text: string): { passes: number[]; errors: number } {
  const passes = [...text.matchAll(/^\r?pass (\d+) sum 0x[0-9a-f]+\r?$/gm)].map((m) => Number(m[1]));
  const errors = [...text.matchAll(/^\r?dirty-checksum error /gm)].length;
  return { passes, errors };
}

/** The fields of a query-migrate reply the bench keeps (QEMU's and tsvmm's names are the same). */
export function migrateStats(info: Record<string, unknown>): {
  status?: string;
  downtimeMs?: number;
  totalMs?: number;
  setupMs?: number;
  ramBytes?: number;
  syncs?: number;
} {
  const num = (v: unknown) => (typeof v === 'number' ? v : undefined);
  const ram = (info.ram ?? {}) as Record<string, unknown>;
  return {
    status: typeof info.status === 'string' ? info.status : undefined,
    downtimeMs: num(info.downtime),
    totalMs: num(info['total-time']),
    setupMs: num(info['setup-time']),
    ramBytes: num(ram.transferred),
    syncs: num(ram['dirty-sync-count']),
  };
}

const median = (xs: number[]): number | undefined => {
  if (!xs.length) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1]! + s[m]!) / 2;
};

type Key = 'downtimeMs' | 'totalMs' | 'saveMsPerGiB' | 'restoreMs' | 'coldBootMs';

export function valueOf(s: MigrationSample, k: Key, memMiB: number): number | undefined {
  if (k === 'saveMsPerGiB') return s.saveMs === undefined ? undefined : s.saveMs / (memMiB / 1024);
  return s[k];
}

export function medianOf(r: MigrationResults, vmm: Vmm, k: Key): number | undefined {
  return median(
    r.samples
      .filter((s) => s.vmm === vmm)
      .map((s) => valueOf(s, k, r.memMiB))
      .filter((v): v is number => v !== undefined),
  );
}

const f0 = (v: number | undefined) => (v === undefined ? '—' : v.toFixed(0));
const ratio = (a: number | undefined, b: number | undefined) =>
  a === undefined || b === undefined || b === 0 ? '—' : `${(a / b).toFixed(2)}×`;

/** The page: one table of medians with tsvmm ÷ QEMU, then every sample's details and problems. */
export function renderMigration(r: MigrationResults): string {
  const rows: [string, Key, string][] = [
    [`Live migration over unix: downtime (ms)`, 'downtimeMs', '≤ 1.0×'],
    [`Live migration over unix: total time (ms)`, 'totalMs', '≤ 1.0×'],
    [`Save to a file (exec:cat > F): ms per GiB of guest RAM`, 'saveMsPerGiB', '—'],
    [`Restore from the file → first pass line (ms)`, 'restoreMs', '≤ 1.0×'],
    [`Cold boot → first pass line (ms)`, 'coldBootMs', '—'],
  ];
  const out = [
    `Run of ${r.date.slice(0, 10)}, ${r.where}; ${r.qemu}; Debian kernel ${r.kernel}.`,
    '',
    `Guest: ${r.memMiB} MiB, 1 vCPU, no assigned device, \`${CMDLINE}\`; its /init runs \`dirty-checksum -p 0 ${DIRTY_MIB}M\` ` +
      `(rewrites ${DIRTY_MIB} MiB pass after pass). ${r.rounds} round(s), tsvmm then QEMU; max-bandwidth 1 GiB/s for both, ` +
      'downtime-limit the default (300 ms). The figures are the VMMs’ own query-migrate (downtime, total-time). ' +
      'The outer machine is shared with other jobs and loaded: one round, read the ratios as rough.',
    '',
    '| row | tsvmm | QEMU | tsvmm ÷ QEMU | target |',
    '| --- | ---: | ---: | ---: | --- |',
  ];
  for (const [label, k, target] of rows) {
    const t = medianOf(r, 'tsvmm', k),
      q = medianOf(r, 'qemu', k);
    out.push(`| ${label} | ${f0(t)} | ${f0(q)} | ${ratio(t, q)} | ${target} |`);
  }
  const rt = medianOf(r, 'tsvmm', 'restoreMs'),
    ct = medianOf(r, 'tsvmm', 'coldBootMs');
  out.push(
    `| Restore ÷ cold boot, tsvmm | ${ratio(rt, ct)} | ${ratio(medianOf(r, 'qemu', 'restoreMs'), medianOf(r, 'qemu', 'coldBootMs'))} (QEMU's own) | | ≤ 0.2× |`,
    '',
    'Samples:',
    '',
  );
  for (const s of r.samples) {
    out.push(
      `- ${s.vmm} round ${s.round + 1}: cold boot ${f0(s.coldBootMs)} ms; pass period ${f0(s.passPeriodMs)} ms; live: setup ${f0(s.setupMs)} ms, ` +
        `downtime ${f0(s.downtimeMs)} ms, total ${f0(s.totalMs)} ms, ${s.ramBytes === undefined ? '—' : (s.ramBytes / 2 ** 20).toFixed(0)} MiB sent, ` +
        `${s.syncs ?? '—'} dirty syncs; source's last pass ${s.srcLastPass ?? '—'}, destination's first ${s.dstFirstPass ?? '—'} ` +
        `(${f0(s.dstPassAfterMs)} ms after completion); save ${f0(s.saveMs)} ms, ${s.saveBytes === undefined ? '—' : (s.saveBytes / 2 ** 20).toFixed(0)} MiB file; ` +
        `restore ${f0(s.restoreMs)} ms (first pass ${s.restoreFirstPass ?? '—'})${s.errors.length ? `; PROBLEMS: ${s.errors.join('; ')}` : ''}`,
    );
  }
  out.push('', ...renderMtty(r.mtty));
  return out.join('\n') + '\n';
}

/** The mtty rows: downtime with the device against the same guest without it; the difference is the device's share. */
export function renderMtty(m: MttyResults | undefined): string[] {
  if (!m?.samples.length)
    return [
      'Not measured here: migration with mtty assigned (downtime and the device’s share; QEMU 7.2 has only the removed v1 protocol).',
    ];
  const w = m.samples.find((s) => s.device === 'mtty'),
    wo = m.samples.find((s) => s.device === 'none');
  const share =
    w?.downtimeMs !== undefined && wo?.downtimeMs !== undefined && w.downtimeMs > 0
      ? `${f0(w.downtimeMs - wo.downtimeMs)} ms of ${f0(w.downtimeMs)} (${(((w.downtimeMs - wo.downtimeMs) / w.downtimeMs) * 100).toFixed(0)} %)`
      : '—';
  return [
    `With mtty assigned (tsvmm only, QEMU 7.2 has only the removed v1 protocol; ${m.date.slice(0, 10)}, ${m.where}): ` +
      `the multiboot test guest, ${m.memMiB} MiB, live over unix, \`test=mtty-stream\` through an mtty instance (iommufd ` +
      'backend; the destination has its own instance) against `test=count` without a device.',
    '',
    '| guest | downtime (ms) | total (ms) | RAM sent (MiB) | device bytes (pre-copy) | destination went on |',
    '| --- | ---: | ---: | ---: | ---: | --- |',
    ...m.samples.map(
      (s) =>
        `| ${s.device === 'mtty' ? 'mtty assigned' : 'no device'} | ${f0(s.downtimeMs)} | ${f0(s.totalMs)} | ` +
        `${s.ramBytes === undefined ? '—' : (s.ramBytes / 2 ** 20).toFixed(1)} | ${s.vfioBytes ?? '—'} (${s.precopyBytes ?? '—'}) | ` +
        `${s.continued === undefined ? '—' : s.continued ? 'yes' : 'no'}${s.error ? ` — ${s.error}` : ''} |`,
    ),
    '',
    `The device's share of the downtime (with mtty − without): ${share}. Not split further: it holds mtty's state ` +
      "changes (STOP_COPY, its data read and written) and the last pass's RAM: mtty offers VFIO's DMA dirty log, " +
      'so only the pages the guest (or the device) wrote go after the stop, not all of RAM (docs/migration.md). ' +
      'The two guests differ (mtty-stream against count), both tiny in RAM.',
  ];
}

// ---- running it (inside the test host) -------------------------------------------------------

interface Proc {
  child: ChildProcess;
  t0: number;
  out: () => string;
  err: () => string;
  /** Arrival time (ms since spawn) of each `pass` line. */
  passAt: { n: number; t: number }[];
}

function start(argv: string[]): Proc {
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  const t0 = performance.now();
  let out = '',
    err = '',
    partial = '';
  const passAt: { n: number; t: number }[] = [];
  child.stdout!.setEncoding('latin1').on('data', (c: string) => {
    out += c;
    partial += c;
    let i: number;
    while ((i = partial.indexOf('\n')) >= 0) {
      const line = partial.slice(0, i);
      partial = partial.slice(i + 1);
      const m = /^\r*pass (\d+) sum /.exec(line);
      if (m) passAt.push({ n: Number(m[1]), t: performance.now() - t0 });
    }
  });
  child.stderr!.setEncoding('utf8').on('data', (c: string) => (err += c));
  child.on('error', (e) => (err += `spawn: ${e.message}`));
  return { child, t0, out: () => out, err: () => err, passAt };
}

async function until(what: string, p: Proc | undefined, f: () => boolean, ms = WAIT_MS): Promise<void> {
  for (const end = Date.now() + ms; !f(); ) {
    if (p && p.child.exitCode !== null) throw new Error(`${what}: the VMM exited ${p.child.exitCode}: ${tail(p)}`);
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${p ? `: ${tail(p)}` : ''}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const tail = (p: Proc) =>
  (p.err().trim() + ' | ' + p.out().trim()).split('\n').slice(-3).join(' | ').replace(/\r/g, '');

/** Ends a VMM: SIGKILL, or with `gently` (a profiled one, which writes its profile as it exits) SIGTERM first. */
async function kill(p: Proc | undefined, gently = false): Promise<void> {
  if (!p || p.child.exitCode !== null || p.child.signalCode !== null) return;
  const exited = new Promise((r) => p.child.once('exit', r));
  p.child.kill(gently ? 'SIGTERM' : 'SIGKILL');
  if (gently && !(await Promise.race([exited.then(() => true), new Promise((r) => setTimeout(r, 30_000, false))])))
    p.child.kill('SIGKILL');
  await exited;
}

/** A minimal QMP client (one command at a time; events skipped). */
class Qmp {
  private buf = '';
  private waiting: ((v: Record<string, unknown>) => void) | undefined;
  private constructor(private readonly sock: ReturnType<typeof connect>) {
    sock.setEncoding('utf8').on('data', (d: string) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i).trim();
        this.buf = this.buf.slice(i + 1);
        if (!line) continue;
        const m = JSON.parse(line) as Record<string, unknown>;
        if ('return' in m || 'error' in m || 'QMP' in m) this.waiting?.(m);
      }
    });
  }
  static async open(path: string, p: Proc): Promise<Qmp> {
    await until(`QMP socket ${path}`, p, () => existsSync(path), 60_000);
    const s = connect(path);
    await new Promise<void>((res, rej) => s.once('connect', res).once('error', rej));
    const q = new Qmp(s);
    await q.reply(); // greeting
    await q.call('qmp_capabilities');
    return q;
  }
  private reply(): Promise<Record<string, unknown>> {
    return new Promise((res) => (this.waiting = res));
  }
  async call(execute: string, args?: Record<string, unknown>): Promise<Record<string, unknown>> {
    const r = this.reply();
    this.sock.write(JSON.stringify(args ? { execute, arguments: args } : { execute }) + '\n');
    const m = await r;
    if ('error' in m) throw new Error(`QMP ${execute}: ${JSON.stringify(m.error)}`);
    return m.return as Record<string, unknown>;
  }
  close(): void {
    this.sock.destroy();
  }
}

interface Setup {
  kernel: string;
  initrd: string;
  scratch: string;
  memMiB: number;
  /** --profile: each tsvmm process under --cpu-prof, a directory per role. */
  profileDir?: string;
}

function argv(vmm: Vmm, s: Setup, qmpPath: string, incoming?: string, role?: string): string[] {
  if (vmm === 'tsvmm') {
    const cfg = join(s.scratch, 'tsvmm-mig.json');
    writeFileSync(
      cfg,
      JSON.stringify({
        name: 'bench-mig',
        memory: `${s.memMiB}M`,
        kernel: { path: s.kernel, format: 'linux', initrd: s.initrd },
        cmdline: CMDLINE,
        serial: { output: 'stdout' },
      }),
    );
    // The sandbox lets a running VMM start no process and open no socket (exec:, unix:): off for both roles.
    return [
      process.execPath,
      ...(s.profileDir && role ? ['--cpu-prof', `--cpu-prof-dir=${join(s.profileDir, role)}`] : []),
      tsvmmJs,
      'run',
      cfg,
      '--qmp',
      qmpPath,
      '--sandbox',
      'off',
      ...(incoming ? ['--incoming', incoming] : []),
    ];
  }
  return [
    QEMU,
    ...innerQemuArgs({ memMiB: s.memMiB }),
    '-no-reboot',
    '-kernel',
    s.kernel,
    '-initrd',
    s.initrd,
    '-append',
    CMDLINE,
    '-qmp',
    `unix:${qmpPath},server=on,wait=off`,
    ...(incoming ? ['-incoming', incoming] : []),
  ];
}

/** migrate to `uri`, polling query-migrate until it ends; the kept stats. */
async function migrate(q: Qmp, uri: string): Promise<ReturnType<typeof migrateStats>> {
  await q.call('migrate-set-parameters', { 'max-bandwidth': MAX_BANDWIDTH });
  await q.call('migrate', { uri });
  for (const end = Date.now() + WAIT_MS; ; ) {
    const st = migrateStats(await q.call('query-migrate'));
    // QEMU sets 'completed' a moment before it fills in total-time and downtime (0 until then): ask again.
    if (st.status === 'completed' && st.totalMs) return st;
    if (st.status === 'failed' || st.status === 'cancelled') throw new Error(`migrate ${uri}: ${st.status}`);
    if (Date.now() > end) throw new Error(`migrate ${uri}: still ${st.status}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function once(vmm: Vmm, round: number, s: Setup, log: (m: string) => void): Promise<MigrationSample> {
  const r: MigrationSample = { vmm, round, errors: [] };
  const d = join(s.scratch, `${vmm}-${round}`);
  const procs: Proc[] = [];
  const qmps: Qmp[] = [];
  const run = (a: string[]) => {
    const p = start(a);
    procs.push(p);
    return p;
  };
  const step = async (what: string, f: () => Promise<void>) => {
    try {
      await f();
    } catch (e) {
      r.errors.push(`${what}: ${(e as Error).message}`);
      log(`migration ${vmm} ${what}: ${(e as Error).message}`);
    }
  };
  const snap = `${d}.snap`;
  try {
    await step('live', async () => {
      const sockPath = `${d}.mig.sock`;
      const dst = run(argv(vmm, s, `${d}.dst.qmp`, `unix:${sockPath}`, 'live-dst'));
      await until('the destination to listen', dst, () => existsSync(sockPath), 60_000);
      const src = run(argv(vmm, s, `${d}.src.qmp`, undefined, 'live-src'));
      await until('the source to print pass 3', src, () => src.passAt.length >= 3);
      r.coldBootMs = src.passAt[0]!.t;
      const pa = src.passAt;
      r.passPeriodMs = (pa[pa.length - 1]!.t - pa[0]!.t) / (pa.length - 1);
      const q = await Qmp.open(`${d}.src.qmp`, src);
      qmps.push(q);
      const st = await migrate(q, `unix:${sockPath}`);
      const done = performance.now();
      Object.assign(r, {
        downtimeMs: st.downtimeMs,
        totalMs: st.totalMs,
        setupMs: st.setupMs,
        ramBytes: st.ramBytes,
        syncs: st.syncs,
      });
      r.srcLastPass = src.passAt[src.passAt.length - 1]?.n;
      if (s.profileDir) log(`migration live source's stderr:\n${src.err()}`);
      await until('the destination to print a pass', dst, () => dst.passAt.length > 0);
      r.dstFirstPass = dst.passAt[0]!.n;
      r.dstPassAfterMs = dst.t0 + dst.passAt[0]!.t - done;
      const bad = parsePasses(src.out() + dst.out()).errors;
      if (bad) r.errors.push(`dirty-checksum reported ${bad} error line(s)`);
      if (r.srcLastPass !== undefined && r.dstFirstPass !== r.srcLastPass + 1)
        r.errors.push(`destination's first pass ${r.dstFirstPass} after the source's last ${r.srcLastPass}`);
    });
    for (const p of procs.splice(0)) await kill(p, s.profileDir !== undefined);
    await step('save', async () => {
      const src = run(argv(vmm, s, `${d}.save.qmp`, undefined, 'save'));
      await until('the source to print pass 2', src, () => src.passAt.length >= 2);
      const q = await Qmp.open(`${d}.save.qmp`, src);
      qmps.push(q);
      const st = await migrate(q, `exec:cat > ${snap}`);
      r.saveMs = st.totalMs;
      if (s.profileDir) log(`migration save source's stderr:\n${src.err()}`);
      r.saveBytes = statSync(snap).size;
    });
    for (const p of procs.splice(0)) await kill(p, s.profileDir !== undefined);
    if (existsSync(snap))
      await step('restore', async () => {
        const p = run(argv(vmm, s, `${d}.rst.qmp`, vmm === 'tsvmm' ? `file:${snap}` : `exec:cat ${snap}`, 'restore'));
        await until('the restored guest to print a pass', p, () => p.passAt.length > 0);
        r.restoreMs = p.passAt[0]!.t;
        r.restoreFirstPass = p.passAt[0]!.n;
        if (parsePasses(p.out()).errors) r.errors.push('restored guest: dirty-checksum error');
      });
  } finally {
    for (const q of qmps) q.close();
    for (const p of procs) await kill(p, s.profileDir !== undefined);
    rmSync(snap, { force: true });
  }
  return r;
}

export async function runMigrationBench(o: {
  rounds: number;
  memMiB: number;
  log: (s: string) => void;
  save?: (r: MigrationResults) => void;
  /** One tsvmm round, every process profiled into this directory (not a result). */
  profileDir?: string;
}): Promise<MigrationResults> {
  const { k, scratch, kernel, initrd } = linuxBenchSetup('mig', '--migration-only');
  writeFileSync(
    initrd,
    buildInitramfs({
      script: `exec dirty-checksum -p 0 ${DIRTY_MIB}M`,
      modulesDir: k.guestModules,
      programs: ['dirty-checksum'],
    }),
  );
  const qemu = (await qemuVersion()) ?? '?';
  const r: MigrationResults = {
    date: new Date().toISOString(),
    where: `inside the test host (nested KVM under QEMU TCG, ${cpus().length} vCPU, ${Math.round(totalmem() / 2 ** 20)} MiB, Linux ${release()})`,
    kernel: k.version,
    qemu: `QEMU ${qemu}`,
    memMiB: o.memMiB,
    dirtyMiB: DIRTY_MIB,
    rounds: 0,
    samples: [],
  };
  const setup: Setup = {
    kernel,
    initrd,
    scratch,
    memMiB: o.memMiB,
    ...(o.profileDir ? { profileDir: o.profileDir } : {}),
  };
  try {
    for (let i = 0; i < o.rounds; i++) {
      for (const vmm of o.profileDir ? (['tsvmm'] as const) : (['tsvmm', 'qemu'] as const)) {
        const s = await once(vmm, i, setup, o.log);
        r.samples.push(s);
        o.log(`migration round ${i + 1} ${vmm}: ${JSON.stringify(s)}`);
        o.save?.(r);
      }
      r.rounds = i + 1;
      o.save?.(r);
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  return r;
}

/** The mtty rows (inside a test host on the iommufd kernel). */
export async function runMttyBench(log: (s: string) => void): Promise<MttyResults> {
  const { createMdev, removeMdev } = await import('../core/vfio/mdev.js');
  const { guestPaths } = await import('../guest/index.js');
  const scratch = mkdtempSync(join(tmpdir(), 'tsvmm-bench-mtty-'));
  const memMiB = 32;
  const r: MttyResults = {
    date: new Date().toISOString(),
    where: `inside the test host (iommufd kernel, ${cpus().length} vCPU, Linux ${release()})`,
    memMiB,
    samples: [],
  };
  for (const device of ['none', 'mtty'] as const) {
    const s: MttySample = { device };
    const made: string[] = [];
    const procs: Proc[] = [];
    try {
      const dev = () => {
        if (device === 'none') return [];
        const m = createMdev('mtty-1');
        made.push(m.uuid);
        return ['--device', `vfio-pci,sysfsdev=${m.path},id=tty0,backend=iommufd`];
      };
      const a = (extra: string[]) => [
        process.execPath,
        tsvmmJs,
        'run',
        '--memory',
        `${memMiB}M`,
        '--kernel',
        guestPaths().elf,
        '--cmdline',
        device === 'mtty' ? 'test=mtty-stream' : 'test=count',
        '--serial',
        'stdio',
        '--sandbox',
        'off',
        ...extra,
      ];
      const sock = join(scratch, `${device}.sock`);
      const dst = start(a([...dev(), '--incoming', `unix:${sock}`]));
      procs.push(dst);
      await until('the destination to listen', dst, () => existsSync(sock), 60_000);
      const src = start(a([...dev(), '--qmp', join(scratch, `${device}.qmp`)]));
      procs.push(src);
      const lines = (p: Proc) =>
        p
          .out()
          .split('\n')
          .filter((l) => /^(mtty seq|count) \d+/.test(l)).length;
      await until('the source to run', src, () => lines(src) >= 5);
      const q = await Qmp.open(join(scratch, `${device}.qmp`), src);
      try {
        await q.call('migrate-set-parameters', { 'max-bandwidth': MAX_BANDWIDTH });
        await q.call('migrate', { uri: `unix:${sock}` });
        for (const end = Date.now() + WAIT_MS; ; ) {
          const info = await q.call('query-migrate');
          const st = migrateStats(info);
          if (st.status === 'failed' || st.status === 'cancelled') throw new Error(`migrate: ${st.status}`);
          if (st.status === 'completed') {
            const vfio = info.vfio as { transferred?: number; 'x-precopy-bytes'?: number } | undefined;
            Object.assign(s, { downtimeMs: st.downtimeMs, totalMs: st.totalMs, ramBytes: st.ramBytes });
            s.vfioBytes = vfio?.transferred;
            s.precopyBytes = vfio?.['x-precopy-bytes'];
            break;
          }
          if (Date.now() > end) throw new Error(`migrate: still ${st.status}`);
          await new Promise((res) => setTimeout(res, 20));
        }
      } finally {
        q.close();
      }
      await until('the destination to go on', dst, () => lines(dst) >= 3, 60_000).then(
        () => (s.continued = !/FAIL/.test(dst.out())),
        () => (s.continued = false),
      );
    } catch (e) {
      s.error = (e as Error).message;
    } finally {
      for (const p of procs) await kill(p);
      for (const u of made) removeMdev(u);
    }
    r.samples.push(s);
    log(`migration mtty ${device}: ${JSON.stringify(s)}`);
  }
  rmSync(scratch, { recursive: true, force: true });
  return r;
}

async function main(): Promise<void> {
  const a = process.argv.slice(2);
  const o = { rounds: 1, memMiB: DEFAULT_MEM_MIB, out: '', mtty: false, profileDir: undefined as string | undefined };
  for (let i = 0; i < a.length; i++) {
    if (a[i] === '--mtty') o.mtty = true;
    else if (a[i] === '--rounds') o.rounds = Number(a[++i]);
    else if (a[i] === '--mem-mib') o.memMiB = Number(a[++i]);
    else if (a[i] === '--out') o.out = a[++i]!;
    else if (a[i] === '--profile') {
      o.profileDir = join(process.env.TSVMM_TESTHOST_RUN_DIR ?? tmpdir(), 'migration-profile');
      process.env.TSVMM_MIGRATION_TRACE = '1'; // each pass's figures on the VMMs' stderr, logged
    } else throw new Error(`bench/migration: unknown argument ${a[i]}`);
  }
  const out = o.out || join(process.env.TSVMM_TESTHOST_RUN_DIR ?? tmpdir(), 'bench-migration.json');
  const save = (r: unknown) => writeFileSync(out, JSON.stringify(r, null, 1) + '\n');
  if (o.mtty) {
    const m = await runMttyBench((s) => process.stderr.write(`${s}\n`));
    save(m);
    process.stdout.write(renderMtty(m).join('\n') + '\n');
    return;
  }
  const r = await runMigrationBench({ ...o, log: (s) => process.stderr.write(`${s}\n`), save });
  save(r);
  process.stdout.write(renderMigration(r));
}

runIfMain(import.meta.url, 'migration', main);
