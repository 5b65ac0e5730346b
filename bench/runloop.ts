// Run-loop rows, on a KVM without VFIO: this machine's /dev/kvm when it has one, else
// inside the test host (nested KVM under TCG). Rounds interleave the VMMs; ratios come from one run.
//   pio   trapped port-I/O round trips/s (test=bench-pio): tsvmm vs QEMU -accel kvm vs the null VMM
//   qmp   QMP query-status round trip while the guest exits as fast as it can (20 per launch)
//   ap    trapped port-I/O round trips/s from an application processor (2 vCPUs, test=smp count=MS)
//   ap4   the same from every vCPU at once, summed (4 vCPUs: 3 APs and vCPU 0, test=smp aps=3)
//   apcon  characters/s an AP writes as a polled console (LSR until THRE, THR; test=smp console=1)
//   qmpAll, sigintAll  QMP query-status round trips (100 per launch) and SIGINT → exit while all 4
//           vCPUs exit as fast as they can
//   sigint  SIGINT → process exit while the guest exits as fast as it can
//   viommu, viommuCpu  virtio-iommu request round trips/s (test=bench-viommu: a MAP answered S_NOENT,
//           the used ring polled; 1 vCPU, so each doorbell is an exit) and the VMM's CPU outside
//           the guest per request (tsvmm and QEMU's -device virtio-iommu-pci; the null VMM has none)
//   launch  launch → first serial byte (1 vCPU, RSS_MIB of RAM, no device), the main bench's launch row
//   private, pss  what a host pays beyond guest RAM, same launch, in the middle of its port-I/O loop:
//           private anonymous + shmem pages, and PSS (bench/vmm.ts hostMemory); again with 4 vCPUs
// With TSVMM_BENCH_BASELINE=/other/checkout/dist/bin/tsvmm.cjs the same rows for that build too
// ("before" numbers of a change).
//
//   node dist/bench/runloop.js [--rounds N] [--phase-ms MS] [--out FILE]   (runs where it is)
import { createConnection } from 'node:net';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  cpuUsBetween,
  ensureNullVmm,
  guestStatus,
  hostMemory,
  hostTscKhz,
  launch,
  parseDone,
  qemuCpu,
  trySnapshot,
  type HostMemory,
  type LaunchSpec,
  type Snapshot,
} from './vmm.js';
import { summarize, type VmmName } from './stats.js';
import { runIfMain } from './entry.js';

export type Column = VmmName | 'tsvmm-before';
export interface RunloopResults {
  date: string;
  where: string;
  rounds: number;
  phaseMs: number;
  /** Per column, per metric, the samples. */
  samples: Partial<Record<Column, Record<string, number[]>>>;
  errors: string[];
  /** QEMU's -cpu, and why it is not plain `host` when it is not (bench/vmm.ts qemuCpu). */
  qemuCpu?: string;
  qemuCpuNote?: string;
  /** The command that made these rows. */
  command?: string;
}

/** Guest RAM of the launch/memory launches: the main bench's size (its launch and memory rows). */
export const RSS_MIB = 256;
/** vCPU counts of the memory rows: every vCPU has a thread (and in tsvmm an isolate) the host pays for. */
export const MEMORY_VCPUS = [1, 4] as const;
/** The guest's quiet settle between "bench pio armed" and its loop (guest/src/bench.c). */
const SETTLE_MS = 500;

const log = (s: string) => process.stderr.write(`bench runloop: ${s}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function spec(col: Column, cmdline: string, extra: Partial<LaunchSpec> = {}): LaunchSpec {
  const base = process.env.TSVMM_BENCH_BASELINE;
  return {
    vmm: col === 'tsvmm-before' ? 'tsvmm' : col,
    memMiB: 64,
    cmdline,
    bdf: '',
    ...(col === 'tsvmm-before' && base ? { tsvmmJs: base } : {}),
    ...extra,
  };
}

/** query-status round trips (ms) over one QMP connection. */
async function qmpRoundTrips(path: string, n: number): Promise<number[]> {
  const s = createConnection(path);
  s.setEncoding('utf8');
  let buf = '';
  const waiters: (() => void)[] = [];
  const lines: string[] = [];
  s.on('data', (c: string) => {
    buf += c;
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const l = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (!l.includes('"event"')) {
        lines.push(l);
        waiters.shift()?.();
      }
    }
  });
  const next = async () => {
    if (!lines.length) await Promise.race([new Promise<void>((r) => waiters.push(r)), sleep(10_000)]);
    const l = lines.shift();
    if (l === undefined) throw new Error('no QMP reply within 10 s');
    return l;
  };
  try {
    await new Promise<void>((res, rej) => {
      s.once('connect', res);
      s.once('error', rej);
    });
    await next();
    s.write('{"execute":"qmp_capabilities"}\n');
    await next();
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      const t = performance.now();
      s.write('{"execute":"query-status"}\n');
      const r = await next();
      if (!r.includes('"return"')) throw new Error(`query-status: ${r}`);
      out.push(performance.now() - t);
    }
    return out;
  } finally {
    s.destroy();
  }
}

async function waitFor(pred: () => boolean, ms: number): Promise<boolean> {
  for (let t = 0; t < ms && !pred(); t += 20) await sleep(20);
  return pred();
}

export async function runRunloopBench(o: { rounds: number; phaseMs: number; where: string }): Promise<RunloopResults> {
  const tscKhz = hostTscKhz();
  const cols: Column[] = [
    'tsvmm',
    ...(process.env.TSVMM_BENCH_BASELINE ? ['tsvmm-before' as const] : []),
    'qemu',
    'null',
  ];
  const res: RunloopResults = {
    date: new Date().toISOString(),
    where: o.where,
    rounds: 0,
    phaseMs: o.phaseMs,
    samples: {},
    errors: [],
  };
  const add = (c: Column, k: string, v: number | number[]) => {
    const m = (res.samples[c] ??= {});
    (m[k] ??= []).push(...(Array.isArray(v) ? v : [v]));
  };
  // Launch → first serial byte, and the memory a host pays beyond guest RAM halfway through the
  // port-I/O loop (the VMM up, its exit path hot; the snapshot's CPU does not touch a measured loop).
  const launchAndMemory = async (c: Column, r: number, vcpus: number) => {
    let timer: NodeJS.Timeout | undefined;
    let mem: HostMemory | undefined;
    let err: string | undefined;
    const l = launch(
      spec(c, `test=bench-pio count=${o.phaseMs}`, { memMiB: RSS_MIB, vcpus }),
      (line, l) => {
        if (line !== 'bench pio armed') return;
        timer = setTimeout(
          () => {
            try {
              mem = hostMemory(readFileSync(`/proc/${l.pid}/smaps`, 'utf8'), RSS_MIB * 1024);
            } catch (e) {
              err = (e as Error).message;
            }
          },
          SETTLE_MS + o.phaseMs / 2,
        );
      },
      60_000,
    );
    const code = await l.done;
    clearTimeout(timer);
    const ok = guestStatus(c === 'tsvmm-before' ? 'tsvmm' : c, code) === 0;
    if (ok && vcpus === 1 && l.firstByteMs !== undefined) add(c, 'launch', l.firstByteMs);
    if (ok && mem) {
      add(c, `private${vcpus}`, mem.privateMiB);
      add(c, `pss${vcpus}`, mem.pssMiB);
      add(c, `guestRam${vcpus}`, mem.guestMiB); // evidence in the JSON: how much of guest RAM the guest touched
    } else
      res.errors.push(
        `${c} launch/memory (${vcpus} vCPU) round ${r + 1}: exit ${code}${err ? `: ${err}` : mem ? '' : ': no snapshot in the loop'} ${l.stderr.trim().split('\n').slice(-2).join(' | ')}`.trimEnd(),
      );
  };
  // The virtio-iommu's request path: the doorbell's exit, the request parsed and answered, the used
  // ring written (no host DMA work: the domain does not exist), CPU snapshots around the loop.
  const viommuRequests = async (c: Column, r: number) => {
    let before: Snapshot | undefined, rate: number | undefined, cpuUs: number | undefined, err: string | undefined;
    const snap = (pid: number) => trySnapshot(pid, (m) => (err ??= m));
    const l = launch(
      spec(c, `test=bench-viommu count=${o.phaseMs}`, { viommu: true }),
      (line, l) => {
        if (line === 'bench viommu armed') before = snap(l.pid);
        const d = parseDone(line);
        if (d?.phase !== 'viommu') return;
        rate = d.n / (d.ticks / (tscKhz * 1000));
        const after = snap(l.pid);
        if (before && after && d.n) cpuUs = cpuUsBetween(before, after) / d.n;
      },
      60_000,
    );
    const code = await l.done;
    if (rate !== undefined && guestStatus(c === 'tsvmm-before' ? 'tsvmm' : c, code) === 0) {
      add(c, 'viommu', rate);
      if (cpuUs !== undefined) add(c, 'viommuCpu', cpuUs);
    } else
      res.errors.push(
        `${c} viommu round ${r + 1}: exit ${code}${err ? `: ${err}` : ''} ${l.lines.slice(-2).join(' | ').slice(-300)}`,
      );
  };
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-runloop-'));
  try {
    for (let r = 0; r < o.rounds; r++) {
      const order = cols.map((_, i) => cols[(i + r) % cols.length]!);
      for (const c of order) {
        // Port I/O round trips, and for tsvmm/QEMU the QMP round trips and SIGINT in the same kind of loop.
        const sock = join(dir, `qmp-${c}-${r}.sock`);
        const withQmp = c !== 'null';
        const long = withQmp ? 60_000 : o.phaseMs;
        let rate: number | undefined;
        const l = launch(
          spec(c, `test=bench-pio count=${o.phaseMs}`),
          (line) => {
            const d = parseDone(line);
            if (d?.phase === 'pio') rate = d.n / (d.ticks / (tscKhz * 1000));
          },
          60_000,
        );
        const code = await l.done;
        if (rate !== undefined && guestStatus(c === 'tsvmm-before' ? 'tsvmm' : c, code) === 0) add(c, 'pio', rate);
        else
          res.errors.push(`${c} pio round ${r + 1}: exit ${code} ${l.stderr.trim().split('\n').slice(-2).join(' | ')}`);
        for (const n of MEMORY_VCPUS) await launchAndMemory(c, r, n);
        if (withQmp) await viommuRequests(c, r);
        if (withQmp) {
          const q = launch(spec(c, `test=bench-pio count=${long}`, { qmp: sock }), () => {}, 90_000);
          try {
            if (!(await waitFor(() => q.lines.includes('bench pio armed'), 30_000)))
              throw new Error('guest did not arm');
            await sleep(800); // past its 500 ms settle: in the exit loop
            add(c, 'qmp', await qmpRoundTrips(sock, 20));
            const t = performance.now();
            q.child.kill('SIGINT');
            const done = await Promise.race([q.done.then(() => true), sleep(10_000).then(() => false)]);
            if (done) add(c, 'sigint', performance.now() - t);
            else res.errors.push(`${c} round ${r + 1}: SIGINT did not end it within 10 s`);
          } catch (e) {
            res.errors.push(`${c} qmp round ${r + 1}: ${(e as Error).message} ${q.stderr.slice(-300)}`);
          } finally {
            q.child.kill('SIGKILL');
            await q.done;
            rmSync(sock, { force: true });
          }
          // An application processor's trapped I/O (the null VMM has no APs).
          let apRate: number | undefined;
          const a = launch(
            spec(c, `test=smp count=${o.phaseMs}`, { vcpus: 2 }),
            (line) => {
              const d = parseDone(line);
              if (d?.phase === 'ap') apRate = d.n / (d.ticks / (tscKhz * 1000));
            },
            60_000,
          );
          const ac = await a.done;
          if (apRate !== undefined) add(c, 'ap', apRate);
          else
            res.errors.push(
              `${c} ap round ${r + 1}: exit ${ac}: ${a.lines.slice(-3).join(' | ')} ${a.stderr.slice(-300)}`,
            );
          // Every vCPU at once (summed), and an AP's polled console.
          for (const [id, cmdline, vcpus, phase] of [
            ['ap4', `test=smp count=${o.phaseMs} aps=3`, 4, 'smp'],
            ['apcon', `test=smp count=${o.phaseMs} console=1`, 2, 'apcon'],
          ] as const) {
            let rate: number | undefined;
            const b = launch(
              spec(c, cmdline, { vcpus }),
              (line) => {
                const d = parseDone(line);
                if (d?.phase === phase) rate = d.n / (d.ticks / (tscKhz * 1000));
              },
              60_000,
            );
            const bc = await b.done;
            if (rate !== undefined) add(c, id, rate);
            else res.errors.push(`${c} ${id} round ${r + 1}: exit ${bc}: ${b.lines.slice(-2).join(' | ').slice(-300)}`);
          }
          // The control plane while every vCPU exits: 3 APs and vCPU 0 in their port-read loops.
          const qa = launch(spec(c, `test=smp count=${long} aps=3`, { vcpus: 4, qmp: sock }), () => {}, 90_000);
          try {
            if (!(await waitFor(() => qa.lines.includes('smp check ok'), 30_000)))
              throw new Error('the APs did not start their loops');
            await sleep(300);
            add(c, 'qmpAll', await qmpRoundTrips(sock, 100));
            const t = performance.now();
            qa.child.kill('SIGINT');
            const done = await Promise.race([qa.done.then(() => true), sleep(10_000).then(() => false)]);
            if (done) add(c, 'sigintAll', performance.now() - t);
            else res.errors.push(`${c} round ${r + 1}: SIGINT (4 vCPUs) did not end it within 10 s`);
          } catch (e) {
            res.errors.push(`${c} qmp (4 vCPUs) round ${r + 1}: ${(e as Error).message} ${qa.stderr.slice(-300)}`);
          } finally {
            qa.child.kill('SIGKILL');
            await qa.done;
            rmSync(sock, { force: true });
          }
        }
        log(
          `round ${r + 1}/${o.rounds} ${c}: ${Object.entries(res.samples[c] ?? {})
            .map(([k, v]) => `${k}=${v[v.length - 1]!.toPrecision(4)}`)
            .join(' ')}`,
        );
      }
      res.rounds = r + 1;
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return res;
}

/** The markdown rows: medians (min–max) and tsvmm's ratios against each other column. */
export function renderRunloop(r: RunloopResults): string {
  const cols = (['tsvmm', 'tsvmm-before', 'qemu', 'null'] as Column[]).filter((c) => r.samples[c]);
  const metrics: {
    id: string;
    label: string;
    unit: string;
    digits: number;
    better: 'higher' | 'lower';
    /** max: the max of each launch's `per` samples (default 20); the median of those maxima over the rounds. */
    stat?: 'max';
    per?: number;
  }[] = [
    { id: 'pio', label: 'Trapped port-I/O round trips', unit: '/s', digits: 0, better: 'higher' },
    { id: 'ap', label: 'Trapped port I/O from an AP (2 vCPUs)', unit: '/s', digits: 0, better: 'higher' },
    { id: 'qmp', label: 'QMP query-status under exit load, median', unit: 'ms', digits: 2, better: 'lower' },
    {
      id: 'qmp',
      label: 'QMP query-status under exit load, max of 20',
      unit: 'ms',
      digits: 2,
      better: 'lower',
      stat: 'max',
    },
    { id: 'sigint', label: 'SIGINT → exit under exit load', unit: 'ms', digits: 0, better: 'lower' },
    {
      id: 'viommu',
      label: 'virtio-iommu request round trips (a MAP answered S_NOENT; 1 vCPU)',
      unit: '/s',
      digits: 0,
      better: 'higher',
    },
    {
      id: 'viommuCpu',
      label: 'VMM CPU per virtio-iommu request, outside the guest',
      unit: 'µs',
      digits: 1,
      better: 'lower',
    },
    {
      id: 'ap4',
      label: 'Trapped port I/O from every vCPU at once, summed (4 vCPUs)',
      unit: '/s',
      digits: 0,
      better: 'higher',
    },
    { id: 'apcon', label: "An AP's polled console output (2 vCPUs)", unit: 'chars/s', digits: 0, better: 'higher' },
    {
      id: 'qmpAll',
      label: 'QMP query-status under exit load from 4 vCPUs, max of 100',
      unit: 'ms',
      digits: 2,
      better: 'lower',
      stat: 'max',
      per: 100,
    },
    { id: 'sigintAll', label: 'SIGINT → exit under exit load from 4 vCPUs', unit: 'ms', digits: 0, better: 'lower' },
    {
      id: 'launch',
      label: `Launch → first serial byte (1 vCPU, ${RSS_MIB} MiB, no device)`,
      unit: 'ms',
      digits: 0,
      better: 'lower',
    },
    ...MEMORY_VCPUS.flatMap((n) => [
      {
        id: `private${n}`,
        label: `Private memory beyond guest RAM, anonymous + shmem (${n} vCPU, ${RSS_MIB} MiB)`,
        unit: 'MiB',
        digits: 1,
        better: 'lower' as const,
      },
      {
        id: `pss${n}`,
        label: `PSS beyond guest RAM (${n} vCPU, ${RSS_MIB} MiB)`,
        unit: 'MiB',
        digits: 1,
        better: 'lower' as const,
      },
    ]),
  ];
  const val = (c: Column, m: (typeof metrics)[number]) => {
    const s = r.samples[c]?.[m.id];
    if (m.stat === 'max') {
      // Max of `per` per launch; the median of those maxima over the rounds.
      const n = m.per ?? 20;
      const per: number[] = [];
      for (let i = 0; s && i + n <= s.length; i += n) per.push(Math.max(...s.slice(i, i + n)));
      return summarize(per);
    }
    return s ? summarize(s) : undefined;
  };
  const fmt = (x: number | undefined, d: number) => (x === undefined ? '–' : x.toFixed(d));
  const head = `| Metric | ${cols.join(' | ')} | ${cols
    .filter((c) => c !== 'tsvmm')
    .map((c) => `tsvmm ÷ ${c}`)
    .join(' | ')} |`;
  const lines = [head, `|${'---|'.repeat(1 + cols.length * 2 - 1)}`];
  for (const m of metrics) {
    const sums = cols.map((c) => val(c, m));
    const t = sums[0]?.median;
    const ratios = cols.slice(1).map((_, i) => {
      const o = sums[i + 1]?.median;
      return t === undefined || o === undefined || o === 0 ? '–' : `${(t / o).toFixed(2)}×`;
    });
    lines.push(
      `| ${m.label} (${m.unit}, ${m.better}) | ${sums.map((s) => (s ? `${fmt(s.median, m.digits)} (${fmt(s.min, m.digits)}–${fmt(s.max, m.digits)})` : '–')).join(' | ')} | ${ratios.join(' | ')} |`,
    );
  }
  return (
    [
      `Run-loop rows, ${r.date.slice(0, 10)}: ${r.where}; ${r.rounds} rounds, ${r.phaseMs} ms loops, VMMs interleaved. Medians (min–max).`,
      ...(r.command ? ['', `Made by: \`${r.command}\`.`] : []),
      ...(r.qemuCpu ? ['', `QEMU: -accel kvm -cpu ${r.qemuCpu}${r.qemuCpuNote ? ` (${r.qemuCpuNote})` : ''}.`] : []),
      '',
      ...lines,
      ...(r.errors.length ? ['', 'Errors:', ...r.errors.map((e) => `- ${e}`)] : []),
    ].join('\n') + '\n'
  );
}

/** Which KVM this is: a paravirtual one (kvm_pvm) cannot run every guest and exits differently; the results say so. */
function kvmKind(): string {
  if (existsSync('/sys/module/kvm_pvm')) return 'a paravirtual KVM, kvm_pvm';
  if (existsSync('/sys/module/kvm_amd')) return 'kvm_amd';
  if (existsSync('/sys/module/kvm_intel')) return 'kvm_intel';
  return 'KVM';
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const o = { rounds: 5, phaseMs: 1000, out: '' };
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--rounds') o.rounds = Number(args[++i]);
    else if (args[i] === '--phase-ms') o.phaseMs = Number(args[++i]);
    else if (args[i] === '--out') o.out = args[++i]!;
    else throw new Error(`bench/runloop: unknown argument ${args[i]}`);
  }
  if (!existsSync('/dev/kvm'))
    throw new Error('no /dev/kvm here: run through `npm run bench` (it uses the test host then)');
  const where =
    process.env.TSVMM_TESTHOST === '1'
      ? `inside the test host (nested KVM under QEMU TCG, ${cpus().length} vCPU, Linux ${release()})`
      : `this machine's /dev/kvm (${kvmKind()}; ${cpus()[0]?.model ?? '?'}, ${cpus().length} CPUs, Linux ${release()}, load average ${loadavg()
          .map((l) => l.toFixed(1))
          .join(' ')} at the start)`;
  // Decided before the rounds (QEMU started once per fallback), the null VMM built if it is not yet.
  const cpu = qemuCpu();
  ensureNullVmm();
  const r: RunloopResults = {
    ...(await runRunloopBench({ ...o, where })),
    qemuCpu: cpu.cpu,
    ...(cpu.note ? { qemuCpuNote: cpu.note } : {}),
  };
  const out = o.out || join(process.env.TSVMM_TESTHOST_RUN_DIR ?? tmpdir(), 'runloop.json');
  writeFileSync(out, JSON.stringify(r, null, 1) + '\n');
  process.stdout.write(renderRunloop(r));
  log(`results: ${out}`);
}

runIfMain(import.meta.url, 'runloop', main);
