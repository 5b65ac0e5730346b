// vCPU 0's exits with and without an assigned device, and the VMM's wake-ups per MSI, INSIDE the
// test host: tsvmm with edu assigned and without a device, QEMU and the null VMM with edu, in the
// same rounds (order rotated), with per-thread CPU and KVM's exit counters per round trip.
// TSVMM_BENCH_BASELINE=<another build>/dist/bin/tsvmm.cjs adds that build's two columns (a
// before/after in one boot); --profile adds one uncounted tsvmm launch of each kind under
// `node --cpu-prof` (profiles in the run dir).
//
//   node dist/bin/tsvmm.cjs testhost run --devices edu --memory 4096 --timeout 1500 --keep \
//     -- node dist/bench/vcpu0.js [--rounds N] [--phase-ms MS] [--profile] [--unsandboxed] [--touch-pages] [--edu-only]
// --unsandboxed adds a column: tsvmm with edu and `--sandbox off`; --touch-pages two: the null VMM
// reading one byte of each of 64 and 256 pages per exit.
// Writes vcpu0.json into the run dir and prints a markdown table;
//   node dist/bench/vcpu0.js --render <run dir>/vcpu0.json   prints the results file's body.
import { cpSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import {
  ensureDebugfs,
  ensureNullVmm,
  guestStatus,
  hostTscKhz,
  launch,
  parseDone,
  trySnapshot,
  type LaunchSpec,
  type Snapshot,
} from './vmm.js';

type Column =
  | 'tsvmm edu'
  | 'tsvmm none'
  | 'tsvmm-before edu'
  | 'tsvmm-before none'
  | 'tsvmm-unsandboxed edu'
  | 'qemu edu'
  | 'null edu'
  | 'null-touch64 edu'
  | 'null-touch256 edu';

interface Sample {
  col: Column;
  round: number;
  /** Trapped port-I/O round trips/s. */
  pio?: number;
  /** Per KVM io_exit over the pio loop: the busiest VMM thread's user and kernel µs outside the guest, its switches, KVM's signal exits. */
  pioUserUs?: number;
  pioSysUs?: number;
  pioSwitches?: number;
  pioSignalExits?: number;
  /** Main-thread context switches per injected MSI, KVM's signal exits per MSI. */
  wakeups?: number;
  msiSignalExits?: number;
  msiThreads?: Record<string, number>;
  /** KVM's counters over the pio loop. */
  pioKvm?: Record<string, number>;
  error?: string;
}

const log = (s: string) => process.stderr.write(`bench vcpu0: ${s}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function spec(col: Column, bdf: string, phaseMs: number): LaunchSpec {
  const [vmm, dev] = col.split(' ') as [string, string];
  const base = process.env.TSVMM_BENCH_BASELINE;
  return {
    vmm: vmm.startsWith('tsvmm') ? 'tsvmm' : vmm.startsWith('null') ? 'null' : (vmm as LaunchSpec['vmm']),
    memMiB: 256,
    // Without a device only the port-I/O phase can run (the others drive edu).
    cmdline: `test=${dev === 'edu' ? 'bench' : 'bench-pio'} count=${phaseMs}`,
    bdf: dev === 'edu' ? bdf : '',
    ...(vmm === 'tsvmm-before' && base ? { tsvmmJs: base } : {}),
    ...(vmm === 'tsvmm-unsandboxed' ? { runArgs: ['--sandbox', 'off'] } : {}),
    ...(vmm.startsWith('null-touch') ? { runArgs: ['--touch-pages', vmm.slice('null-touch'.length)] } : {}),
  };
}

const USER_HZ = 100;

async function one(col: Column, bdf: string, phaseMs: number, tscKhz: number, profileDir?: string): Promise<Sample> {
  const s: Sample = { col, round: -1 };
  let pioA: Snapshot | undefined, msiA: Snapshot | undefined, msiB: Snapshot | undefined;
  const timers: NodeJS.Timeout[] = [];
  const snap = (pid: number) => trySnapshot(pid, (m) => (s.error ??= m));
  const l = launch(
    {
      ...spec(col, bdf, phaseMs),
      // The sandbox would refuse the profile's files.
      ...(profileDir
        ? { nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${profileDir}`], runArgs: ['--sandbox', 'off'] }
        : {}),
    },
    (line, l) => {
      if (line === 'bench pio armed') pioA = snap(l.pid);
      else if (line === 'bench msi armed') {
        timers.push(setTimeout(() => (msiA = snap(l.pid)), 250));
        timers.push(setTimeout(() => (msiB = snap(l.pid)), 250 + phaseMs));
      } else if (/^bench \w+ error/.test(line)) s.error ??= line;
      const d = parseDone(line);
      if (d?.phase === 'pio') {
        s.pio = d.n / (d.ticks / (tscKhz * 1000));
        const b = snap(l.pid);
        if (pioA && b) {
          // KVM's io_exits; the guest's count where debugfs has no directory for the VM (one round trip, one exit).
          const io =
            b.kvm.io_exits !== undefined && pioA.kvm.io_exits !== undefined ? b.kvm.io_exits - pioA.kvm.io_exits : d.n;
          // The busiest thread outside the guest: the one answering the exits.
          let best: [number, number, number] | undefined;
          let bestKey = '';
          for (const [k, [u, sy, g]] of Object.entries(b.threadCpu)) {
            const [u0, s0, g0] = pioA.threadCpu[k] ?? [0, 0, 0];
            const d3: [number, number, number] = [u - u0 - (g - g0), sy - s0, g - g0];
            if (!best || d3[0] + d3[1] > best[0] + best[1]) ((best = d3), (bestKey = k));
          }
          s.pioKvm = Object.fromEntries(Object.keys(b.kvm).map((k) => [k, b.kvm[k]! - (pioA!.kvm[k] ?? 0)]));
          if (io > 0 && best) {
            s.pioUserUs = (best[0] / USER_HZ / io) * 1e6;
            s.pioSysUs = (best[1] / USER_HZ / io) * 1e6;
            s.pioSwitches = (b.threads[bestKey]! - (pioA.threads[bestKey] ?? 0)) / io;
            if (b.kvm.signal_exits !== undefined) s.pioSignalExits = (b.kvm.signal_exits - pioA.kvm.signal_exits!) / io;
          }
        }
      }
    },
    120_000,
  );
  const code = await l.done;
  for (const t of timers) clearTimeout(t);
  if (msiA && msiB) {
    const irqs = msiB.kvm.irq_injections! - msiA.kvm.irq_injections!;
    if (irqs > 0) {
      s.wakeups = (msiB.mainCtx - msiA.mainCtx) / irqs;
      s.msiSignalExits = (msiB.kvm.signal_exits! - msiA.kvm.signal_exits!) / irqs;
      s.msiThreads = Object.fromEntries(Object.entries(msiB.threads).map(([k, c]) => [k, c - (msiA!.threads[k] ?? 0)]));
    }
  }
  if (guestStatus(s.col.startsWith('qemu') ? 'qemu' : 'null', code) !== 0)
    s.error ??= `exit ${code}: ${l.stderr.trim().split('\n').slice(-2).join(' | ')}`;
  else if (profileDir && l.stderr.trim()) s.error ??= `stderr: ${l.stderr.trim().slice(-300)}`;
  return s;
}

const median = (xs: number[]) => {
  const a = [...xs].sort((x, y) => x - y);
  return a.length ? (a.length % 2 ? a[(a.length - 1) / 2]! : (a[a.length / 2 - 1]! + a[a.length / 2]!) / 2) : NaN;
};

export function table(samples: Sample[], cols: Column[]): string {
  const f = (col: Column, k: keyof Sample, digits: number) => {
    const xs = samples.filter((s) => s.col === col && typeof s[k] === 'number').map((s) => s[k] as number);
    return xs.length ? median(xs).toFixed(digits) : '–';
  };
  const q = (col: Column, k: keyof Sample) => {
    const a = Number(f(col, k, 6)),
      b = Number(f('qemu edu', k, 6));
    return Number.isFinite(a) && b > 0 ? `${(a / b).toFixed(2)}×` : '–';
  };
  const rows = [
    '| column | port I/O /s | ÷ QEMU | user µs/exit | kernel µs/exit | switches/exit | signal exits/exit | main-thread wake-ups/MSI | signal exits/MSI |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const c of cols)
    rows.push(
      `| ${c} | ${f(c, 'pio', 0)} | ${q(c, 'pio')} | ${f(c, 'pioUserUs', 1)} | ${f(c, 'pioSysUs', 1)} | ${f(c, 'pioSwitches', 3)} | ` +
        `${f(c, 'pioSignalExits', 4)} | ${c.endsWith('edu') ? f(c, 'wakeups', 4) : '–'} | ${c.endsWith('edu') ? f(c, 'msiSignalExits', 4) : '–'} |`,
    );
  return rows.join('\n') + '\n';
}

/** Within each round, a column's port-I/O rate over QEMU's (they ran minutes apart at most): median (min–max). */
export function withinRounds(samples: Sample[], col: Column): string {
  const r: number[] = [];
  for (const round of new Set(samples.map((s) => s.round))) {
    const a = samples.find((s) => s.round === round && s.col === col)?.pio;
    const q = samples.find((s) => s.round === round && s.col === 'qemu edu')?.pio;
    if (a && q) r.push(a / q);
  }
  return r.length
    ? `${median(r).toFixed(2)}× (${Math.min(...r).toFixed(2)}–${Math.max(...r).toFixed(2)}, ${r.length} rounds)`
    : '–';
}

/** The results file's body from vcpu0.json. */
export function render(j: { date: string; rounds: number; phaseMs: number; samples: Sample[] }): string {
  const cols = [...new Set(j.samples.map((s) => s.col))];
  return [
    `Run of ${j.date.slice(0, 10)}: ${j.rounds} rounds of ${j.phaseMs} ms loops, columns in rotated order; medians.`,
    '',
    table(j.samples, cols),
    'Port I/O ÷ QEMU within each round:',
    '',
    ...cols.filter((c) => c !== 'qemu edu').map((c) => `- ${c}: ${withinRounds(j.samples, c)}`),
    '',
  ].join('\n');
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  // --render FILE: vcpu0.json → markdown on stdout (outside the test host).
  if (argv[0] === '--render') {
    process.stdout.write(render(JSON.parse(readFileSync(argv[1]!, 'utf8'))));
    return;
  }
  const num = (name: string, d: number) => {
    const i = argv.indexOf(name);
    return i >= 0 ? Number(argv[i + 1]) : d;
  };
  const rounds = num('--rounds', 3),
    phaseMs = num('--phase-ms', 1000);
  const runDir = process.env.TSVMM_TESTHOST_RUN_DIR ?? tmpdir();
  const bdf = (JSON.parse(process.env.TSVMM_TESTHOST_DEVICES ?? '{}') as Record<string, { bdf: string }>).edu?.bdf;
  if (!bdf) throw new Error('bench/vcpu0.js runs inside the test host with edu (see its head)');
  ensureNullVmm();
  if (!(await ensureDebugfs())) throw new Error('no KVM debugfs');
  const tscKhz = hostTscKhz();
  // --edu-only: without the no-device columns (more rounds in the same time).
  const none = !argv.includes('--edu-only');
  const cols: Column[] = ['tsvmm edu', ...(none ? ['tsvmm none' as const] : []), 'qemu edu', 'null edu'];
  if (process.env.TSVMM_BENCH_BASELINE)
    cols.splice(none ? 2 : 1, 0, 'tsvmm-before edu', ...(none ? ['tsvmm-before none' as const] : []));
  // What the seccomp filter costs per exit (every KVM_RUN passes it).
  if (argv.includes('--unsandboxed')) cols.splice(1, 0, 'tsvmm-unsandboxed edu');
  // What a page touched per exit costs (the null VMM reading one byte of each of N pages per exit).
  if (argv.includes('--touch-pages')) cols.push('null-touch64 edu', 'null-touch256 edu');
  // Warm-up (uncounted): the first start of each pulls its files through the test host's 9p root.
  for (const c of cols) log(`warm-up ${c}: ${(await one(c, bdf, 100, tscKhz)).error ?? 'ok'}`);
  const samples: Sample[] = [];
  for (let r = 0; r < rounds; r++)
    for (let i = 0; i < cols.length; i++) {
      const c = cols[(i + r) % cols.length]!;
      const s = await one(c, bdf, phaseMs, tscKhz);
      s.round = r;
      samples.push(s);
      log(`round ${r + 1}/${rounds} ${JSON.stringify(s)}`);
      await sleep(200);
    }
  if (argv.includes('--profile')) {
    // Written where the VMM can write (tmpfs), then copied into the run dir.
    const tmp = join(tmpdir(), 'vcpu0-profile');
    const which: Column[] = process.env.TSVMM_BENCH_BASELINE
      ? ['tsvmm-before edu', 'tsvmm-before none', 'tsvmm edu', 'tsvmm none']
      : ['tsvmm edu', 'tsvmm none'];
    for (const c of which) {
      const d = join(tmp, c.replace(' ', '-'));
      mkdirSync(d, { recursive: true });
      log(`profile ${c}: ${JSON.stringify(await one(c, bdf, 4 * phaseMs, tscKhz, d))}`);
    }
    cpSync(tmp, join(runDir, 'vcpu0-profile'), { recursive: true });
  }
  writeFileSync(
    join(runDir, 'vcpu0.json'),
    JSON.stringify({ date: new Date().toISOString(), rounds, phaseMs, samples }, null, 1) + '\n',
  );
  process.stdout.write(table(samples, cols));
}

if (process.argv[1] && import.meta.url === `file://${process.argv[1]}`)
  main().catch((e) => {
    process.stderr.write(`bench vcpu0: ${(e as Error).stack}\n`);
    process.exitCode = 1;
  });
