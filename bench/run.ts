// The benchmark runner, INSIDE the test host (bench/main.ts starts it there): the same guest
// workloads under tsvmm, QEMU (-accel kvm, vfio-pci) and the null VMM, interleaved round by
// round, and the same external counters for all three. Writes the raw samples as JSON.
//
//   node dist/bench/run.js [--rounds N] [--dma-rounds N] [--phase-ms MS] [--dma-sizes 256,1024,2048]
//                          [--budget-s S] [--out FILE]
import { stracePrefaultSpan } from './memory.js';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { VMMS, type VmmName } from './stats.js';
import {
  ensureDebugfs,
  guestElf,
  guestStatus,
  hostMemory,
  hostTscKhz,
  launch,
  ensureNullVmm,
  parseDone,
  QEMU,
  trySnapshot,
  straceMapDma,
  tsvmmJs,
  type Snapshot,
} from './vmm.js';
import { METRICS, type BenchResults, type LaunchRecord } from './metrics.js';

interface Options {
  rounds: number;
  dmaRounds: number;
  phaseMs: number;
  dmaSizes: number[];
  budgetS: number;
  out: string;
  memMiB: number;
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    rounds: 7,
    dmaRounds: 3,
    phaseMs: 1000,
    dmaSizes: [256, 1024, 2048],
    budgetS: 720,
    memMiB: 256,
    out: join(process.env.TSVMM_TESTHOST_RUN_DIR ?? tmpdir(), 'bench.json'),
  };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i + 1];
    switch (argv[i]) {
      case '--rounds':
        o.rounds = Number(v);
        i++;
        break;
      case '--dma-rounds':
        o.dmaRounds = Number(v);
        i++;
        break;
      case '--phase-ms':
        o.phaseMs = Number(v);
        i++;
        break;
      case '--dma-sizes':
        o.dmaSizes = v!
          .split(',')
          .map(Number)
          .filter((x) => x > 0);
        i++;
        break;
      case '--budget-s':
        o.budgetS = Number(v);
        i++;
        break;
      case '--out':
        o.out = v!;
        i++;
        break;
      default:
        throw new Error(`bench/run: unknown argument ${argv[i]}`);
    }
  }
  return o;
}

const log = (s: string) => process.stderr.write(`bench: ${s}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Round r's order: rotated, so no VMM always runs first (or right after another). */
export function order(r: number): VmmName[] {
  return VMMS.map((_, i) => VMMS[(i + r) % VMMS.length]!);
}

/**
 * One launch with `test=bench`: launch → first serial byte, then the pio, bar and msi phases.
 * bar: counters read at "armed" (the guest then stays quiet for 500 ms before its loop) and at
 * "done"; MMIO exits are unaffected by the serial lines in between (port I/O).
 * msi: the window is [armed + 250 ms, armed + 250 ms + phase]; the guest is quiet 500 ms before
 * and 1500 ms after its loop, so the window sees only the loop; its denominator is KVM's own
 * count of injected interrupts in the same window.
 */
async function mainLaunch(vmm: VmmName, bdf: string, o: Options, tscKhz: number, memfd = false): Promise<LaunchRecord> {
  const rec: LaunchRecord = { kind: 'main', vmm, memMiB: o.memMiB, values: {}, info: memfd ? { memfd: true } : {} };
  let pioA: Snapshot | undefined, barA: Snapshot | undefined, msiA: Snapshot | undefined, msiB: Snapshot | undefined;
  let msiDoneEarly = false;
  let mem: ReturnType<typeof hostMemory> | undefined;
  const timers: NodeJS.Timeout[] = [];
  const snap = (pid: number): Snapshot | undefined => trySnapshot(pid, (m) => (rec.error ??= `snapshot: ${m}`));
  const l = launch(
    { vmm, memMiB: o.memMiB, cmdline: `test=bench count=${o.phaseMs}`, bdf, memfd },
    (line, l) => {
      const d = parseDone(line);
      if (line === 'bench pio armed') pioA = snap(l.pid);
      else if (line === 'bench bar armed') barA = snap(l.pid);
      else if (line === 'bench msi armed') {
        timers.push(
          setTimeout(() => {
            msiA = snap(l.pid);
          }, 250),
        );
        timers.push(
          setTimeout(() => {
            msiB = snap(l.pid);
            try {
              mem = hostMemory(readFileSync(`/proc/${l.pid}/smaps`, 'utf8'), o.memMiB * 1024);
            } catch (e) {
              rec.error ??= `smaps: ${(e as Error).message}`;
            }
          }, 250 + o.phaseMs),
        );
      } else if (/^bench \w+ error/.test(line)) rec.error ??= line;
      if (!d) return;
      const perSec = d.n / (d.ticks / (tscKhz * 1000));
      if (d.phase === 'pio') {
        rec.values.pio = perSec;
        // Where a round trip's time goes: context switches and CPU per VMM thread over the loop.
        const b = snap(l.pid);
        if (pioA && b) rec.info.pioWindow = { roundTrips: d.n, ...cpuUse(pioA, b), kvm: kvmDelta(pioA, b) };
      }
      if (d.phase === 'bar') {
        rec.values.barRate = perSec;
        const b = snap(l.pid);
        if (barA && b) rec.info.barWindow = { ...cpuUse(barA, b), kvm: kvmDelta(barA, b) };
        if (barA && b && barA.kvm.mmio_exits !== undefined) {
          rec.values.barExits = ((b.kvm.mmio_exits! - barA.kvm.mmio_exits) * 1e6) / d.n;
          rec.info.barAllKvmExitsPerM = ((b.kvm.exits! - barA.kvm.exits!) * 1e6) / d.n;
          rec.info.barReads = d.n;
        } else rec.error ??= 'no KVM debugfs stats for the BAR phase';
      }
      if (d.phase === 'msi') {
        rec.values.msi = perSec;
        if (!msiB) msiDoneEarly = true;
      }
    },
    120_000,
  );
  const code = await l.done;
  for (const t of timers) clearTimeout(t);
  rec.exitCode = code;
  if (l.firstByteMs !== undefined) rec.values.launch = l.firstByteMs;
  if (msiA && msiB && !msiDoneEarly) {
    const irqs = msiB.kvm.irq_injections! - msiA.kvm.irq_injections!;
    const ctx = msiB.mainCtx - msiA.mainCtx;
    rec.info.msiWindow = {
      irqInjections: irqs,
      mainThreadSwitches: ctx,
      ms: msiB.t - msiA.t,
      ...cpuUse(msiA, msiB),
      kvm: kvmDelta(msiA, msiB),
    };
    if (irqs > 0) rec.values.wakeups = ctx / irqs;
    // What the host pays beyond guest RAM with everything up and all guest RAM pinned.
    if (mem) {
      rec.values.private = mem.privateMiB;
      rec.values.pss = mem.pssMiB;
    }
    rec.info.rss = msiB.rss;
  } else if (msiDoneEarly) rec.error ??= 'msi: the guest finished before the measurement window closed';
  const st = guestStatus(vmm, code);
  if (st !== 0)
    rec.error ??= `guest/VMM exit ${code}${l.stderr ? `: ${l.stderr.trim().split('\n').slice(-3).join(' | ')}` : ''}`;
  if (rec.error) rec.log = { serial: l.lines.slice(-20), stderr: l.stderr.slice(-2000) };
  return rec;
}

/** Where the CPU went between two snapshots: per VMM thread (switches, CPU and guest ticks) and host-wide. */
function cpuUse(a: Snapshot, b: Snapshot): Record<string, unknown> {
  const threads: Record<
    string,
    { switches: number; cpuTicks: number; userTicks: number; systemTicks: number; guestTicks: number }
  > = {};
  for (const [k, [user, system, guest]] of Object.entries(b.threadCpu)) {
    const [user0, system0, guest0] = a.threadCpu[k] ?? [0, 0, 0];
    const u = user - user0,
      sy = system - system0,
      g = guest - guest0;
    // utime includes guest time: userTicks is user space outside the guest.
    threads[k] = {
      switches: b.threads[k]! - (a.threads[k] ?? 0),
      cpuTicks: u + sy,
      userTicks: u - g,
      systemTicks: sy,
      guestTicks: g,
    };
  }
  const names = ['user', 'nice', 'system', 'idle', 'iowait', 'irq', 'softirq', 'steal', 'guest', 'guest_nice'];
  const host = Object.fromEntries(names.map((n, i) => [n, (b.hostCpu[i] ?? 0) - (a.hostCpu[i] ?? 0)]));
  return { threads, hostTicks: host };
}

function kvmDelta(a: Snapshot, b: Snapshot): Record<string, number> {
  return Object.fromEntries(
    Object.keys(b.kvm).map((k) => [k, k.startsWith('pages_') ? b.kvm[k]! : b.kvm[k]! - (a.kvm[k] ?? 0)]),
  );
}

/** One DMA launch under strace: the demo guest (enumerate PCI, exit) with memMiB of RAM. */
async function dmaLaunch(vmm: VmmName, bdf: string, memMiB: number, memfd = false): Promise<LaunchRecord> {
  const rec: LaunchRecord = { kind: 'dma', vmm, memMiB, values: {}, info: {} };
  const straceOut = join(tmpdir(), `bench-strace-${vmm}-${memMiB}-${process.pid}.log`);
  const l = launch({ vmm, memMiB, cmdline: '', bdf, straceOut, memfd }, () => {}, 240_000);
  const code = await l.done;
  rec.exitCode = code;
  if (guestStatus(vmm, code) !== 0) rec.error = `exit ${code}: ${l.stderr.trim().split('\n').slice(-3).join(' | ')}`;
  if (memfd) {
    // A diagnostic, kept out of the table's samples.
    const m = existsSync(straceOut) ? straceMapDma(readFileSync(straceOut, 'utf8')) : undefined;
    rmSync(straceOut, { force: true });
    rec.info.memfd = true;
    rec.info.memfdMapMs = m ? m.seconds * 1000 : NaN;
  } else if (existsSync(straceOut)) {
    const log = readFileSync(straceOut, 'utf8');
    const m = straceMapDma(log);
    rmSync(straceOut, { force: true });
    // The time to make RAM DMA-ready: tsvmm prefaults it in parallel first (bench/memory.ts).
    const prefaultMs = stracePrefaultSpan(log);
    rec.values[`dmaMs${memMiB}`] = m.seconds * 1000 + prefaultMs;
    rec.info.prefaultMs = prefaultMs;
    rec.values[`dmaCalls${memMiB}`] = m.calls;
    rec.info.mapDma = m;
  } else rec.error ??= 'no strace log';
  const own = /null-vmm: MAP_DMA bytes=(\d+) ns=(\d+)/.exec(l.stderr);
  if (own) rec.info.nullVmmOwnTimingMs = Number(own[2]) / 1e6;
  if (rec.error) rec.log = { serial: l.lines.slice(-10), stderr: l.stderr.slice(-2000) };
  return rec;
}

function sh(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return '?';
  }
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const t0 = performance.now();
  const elapsed = () => (performance.now() - t0) / 1000;
  const devices = JSON.parse(process.env.TSVMM_TESTHOST_DEVICES ?? '{}') as Record<string, { bdf: string }>;
  const edu = devices.edu;
  if (process.env.TSVMM_TESTHOST !== '1' || !edu)
    throw new Error('bench/run.js runs inside the test host with edu (npm run bench)');
  for (const f of [guestElf, tsvmmJs]) if (!existsSync(f)) throw new Error(`${f} is missing: npm run bench builds it`);
  ensureNullVmm();
  if (!(await ensureDebugfs())) log('warning: no KVM debugfs: BAR exits and wake-ups will be missing');
  const tscKhz = hostTscKhz();
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const results: BenchResults = {
    date: new Date().toISOString(),
    host: {
      kernel: sh('uname', ['-r']),
      cpu: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? '?',
      cpus: (cpuinfo.match(/^processor\s*:/gm) ?? []).length,
      memMiB: Math.round(Number(/^MemTotal:\s+(\d+)/m.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0) / 1024),
      tscKhz,
      qemu: sh(QEMU, ['--version']).split('\n')[0]!,
      node: process.version,
      thp: ['enabled', 'shmem_enabled']
        .map((f) => {
          try {
            return `${f}: ${readFileSync(`/sys/kernel/mm/transparent_hugepage/${f}`, 'utf8').trim()}`;
          } catch {
            return `${f}: ?`;
          }
        })
        .join(', '),
    },
    config: {
      rounds: o.rounds,
      dmaRounds: o.dmaRounds,
      phaseMs: o.phaseMs,
      dmaSizes: o.dmaSizes,
      guestMemMiB: o.memMiB,
    },
    roundsDone: 0,
    dmaRoundsDone: 0,
    launches: [],
  };
  const save = () => writeFileSync(o.out, JSON.stringify(results, null, 1) + '\n');
  log(
    `host: ${results.host.cpu}, ${results.host.cpus} CPU, ${results.host.memMiB} MiB, kernel ${results.host.kernel}, ${results.host.qemu}; edu ${edu.bdf}`,
  );

  // Warm-up (not recorded). The test host's RAM is lazily backed by the outer QEMU: the first pin of a page costs
  // ~10x a later one, so pin most of it once. And the first start of node, QEMU and the guest image pulls them through 9p.
  const warmMiB = Math.min(2560, results.host.memMiB - 1024);
  const warm = await dmaLaunch('null', edu.bdf, warmMiB);
  log(
    `warm-up: pinned ${warmMiB} MiB once (${warm.error ?? `${(warm.info.nullVmmOwnTimingMs as number | undefined)?.toFixed(0)} ms`})`,
  );
  for (const v of VMMS) {
    const r = await mainLaunch(v, edu.bdf, { ...o, phaseMs: 100 }, tscKhz);
    log(`warm-up ${v}: ${r.error ?? 'ok'}`);
  }
  // Diagnostic for the launch row: how long node itself takes to start and exit here.
  const nodeStart: number[] = [];
  for (let i = 0; i < 3; i++) {
    const t = performance.now();
    await new Promise<void>((res) =>
      spawn(process.execPath, ['-e', '0'], { stdio: 'ignore' })
        .on('close', () => res())
        .on('error', () => res()),
    );
    nodeStart.push(performance.now() - t);
  }
  results.nodeStartMs = nodeStart;
  for (let r = 0; r < o.rounds; r++) {
    if (r > 0 && elapsed() > o.budgetS * 0.55) {
      log(`time budget: stopping main rounds after ${r}`);
      break;
    }
    for (const v of order(r)) {
      const rec = await mainLaunch(v, edu.bdf, o, tscKhz);
      rec.round = r;
      results.launches.push(rec);
      log(
        `round ${r + 1}/${o.rounds} ${v}: ${Object.entries(rec.values)
          .map(([k, x]) => `${k}=${x.toPrecision(4)}`)
          .join(' ')}${rec.error ? ` ERROR ${rec.error}` : ''}`,
      );
      await sleep(200);
    }
    // Diagnostic (not a table column): the null VMM with its RAM in a memfd, as tsvmm's is, isolates the effect
    // of the RAM backing (page size in KVM's NPT) from that of the VMM's code.
    const diag = await mainLaunch('null', edu.bdf, o, tscKhz, true);
    diag.round = r;
    results.launches.push(diag);
    log(
      `round ${r + 1}/${o.rounds} null (memfd, diagnostic): ${Object.entries(diag.values)
        .map(([k, x]) => `${k}=${x.toPrecision(4)}`)
        .join(' ')}${diag.error ? ` ERROR ${diag.error}` : ''}`,
    );
    results.roundsDone = r + 1;
    save();
  }
  for (let r = 0; r < o.dmaRounds; r++) {
    if (r > 0 && elapsed() > o.budgetS) {
      log(`time budget: stopping DMA rounds after ${r}`);
      break;
    }
    for (const size of o.dmaSizes) {
      for (const v of order(r)) {
        const rec = await dmaLaunch(v, edu.bdf, size);
        rec.round = r;
        results.launches.push(rec);
        log(
          `dma round ${r + 1}/${o.dmaRounds} ${size} MiB ${v}: ${Object.entries(rec.values)
            .map(([k, x]) => `${k}=${x.toPrecision(4)}`)
            .join(' ')}${rec.error ? ` ERROR ${rec.error}` : ''}`,
        );
      }
    }
    if (r === 0) {
      // Diagnostic (not a table column): the null VMM's one MAP_DMA when its RAM is a memfd, as tsvmm's is.
      const mib = o.dmaSizes.includes(1024) ? 1024 : o.dmaSizes[0]!;
      const rec = await dmaLaunch('null', edu.bdf, mib, true);
      results.launches.push(rec);
      log(
        `dma diagnostic: null VMM on a memfd, ${mib} MiB: ${(rec.info.memfdMapMs as number).toFixed(0)} ms${rec.error ? ` ERROR ${rec.error}` : ''}`,
      );
    }
    results.dmaRoundsDone = r + 1;
    save();
  }
  results.seconds = elapsed();
  save();
  log(`done in ${results.seconds.toFixed(0)} s: ${o.out} (${METRICS(o.dmaSizes).length} metrics)`);
}

if (process.argv[1] && import.meta.url === `file://${process.argv[1]}`) {
  main().catch((e) => {
    process.stderr.write(`bench: ${(e as Error).stack}\n`);
    process.exitCode = 1;
  });
}
