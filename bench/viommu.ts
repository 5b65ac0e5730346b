// vIOMMU rows, INSIDE the test host with nvme bound to vfio-pci (bench/main.ts --viommu-only starts it
// there): the Debian guest kernel of bench/linux.ts under tsvmm and QEMU, nvme assigned, in four modes:
//   none      no vIOMMU (nvme mapped 1:1, as bench/linux.ts);
//   identity  the virtio-iommu, guest `iommu.passthrough=1` (an identity domain: all of RAM mapped once);
//   lazy      the virtio-iommu, the guest's default DMA domain (unmaps batched behind a flush queue);
//   strict    the virtio-iommu, `iommu.strict=1` (a MAP and an UNMAP per I/O).
// QEMU gets `-device virtio-iommu-pci` and the same guest cmdline. In each launch the guest runs
// guest/linux/nvme-read: `seq` (1 MiB O_DIRECT reads) then `rand` (4 KiB, queue depth 1) for SECONDS each, then
// both again (the second pass: both VMMs warm).
// Around the rand phase the host takes a snapshot of the VMM's CPU (bench/vmm.ts) and, for tsvmm, QMP
// x-query-viommu's map/unmap counters: requests per second at that IOPS, and VMM CPU per request.
//
//   node dist/bench/viommu.js [--rounds N] [--seconds S] [--profile] [--out FILE] [--modes lazy,strict] [--vmm tsvmm] [--perf DIR] [--strace DIR] [--trace-jit DIR] [--node-flag F]... [--tsvmm PATH]
// --profile: after the rounds (--rounds 0: only it), not counted, one tsvmm launch in strict mode under
// `node --cpu-prof` into <run dir>/viommu-profile (bench/main.ts copies it to dist/bench/viommu-profile).
import { spawn } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, release, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { buildInitramfs } from '../machine/loader/initramfs.js';
import { innerQemuArgs } from '../testhost/qemu.js';
import { qmpCall } from '../frontend/qmp/client.js';
import { CMDLINE, MEM_MIB, linuxBenchSetup, qemuVersion, withMarkerInit, type SerialLine } from './linux.js';
import { cpuUsBetween, ensureDebugfs, QEMU, trySnapshot, tsvmmJs, type Snapshot } from './vmm.js';
export { cpuUsBetween } from './vmm.js';
import { runIfMain } from './entry.js';

export const MODES = ['none', 'identity', 'lazy', 'strict'] as const;
export type Mode = (typeof MODES)[number];
const MARK = 'bench-viommu:';

/** The guest cmdline of a mode (both VMMs). */
export function modeCmdline(mode: Mode): string {
  if (mode === 'identity') return `${CMDLINE} iommu.passthrough=1`;
  if (mode === 'strict') return `${CMDLINE} iommu.strict=1`;
  return CMDLINE;
}

/** One launch: what its guest printed (parseViommuRun's figures) and what the VMM was measured at. */
export interface ViommuSample extends Omit<ParsedViommuRun, 'problems'> {
  vmm: 'tsvmm' | 'qemu';
  mode: Mode;
  round: number;
  exitCode: number | null;
  /** tsvmm: host-side map/unmap requests over the rand phase (x-query-viommu's host stats). */
  maps?: number;
  unmaps?: number;
  /** VMM CPU outside the guest over the rand phase (all threads, user + system), µs. */
  cpuUs?: number;
  /** Over the rand phase: KVM's per-VM counters (debugfs, summed over vCPUs) and each thread's CPU outside the guest (µs, by name). */
  kvm?: Record<string, number>;
  threadCpuUs?: Record<string, number>;
  error?: string;
}

export interface ViommuResults {
  date: string;
  where: string;
  kernel: string;
  qemu: string;
  seconds: number;
  rounds: number;
  command?: string;
  /** Written by hand into the JSON after a run (what the figures mean, what was seen); `--render` keeps them. */
  notes?: string[];
  samples: ViommuSample[];
}

// ---- the guest side -----------------------------------------------------------------------

export function viommuScript(seconds: number): string {
  if (!Number.isInteger(seconds) || seconds < 1) throw new Error(`--seconds ${seconds}: a whole number ≥ 1`);
  return `i=0; while [ ! -b /dev/nvme0n1 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo "${MARK} iommu $(dmesg | grep -oE 'Default domain type: [A-Za-z]+|invalidation policy: [a-z]+ mode' | tr '\\n' ' ')"
nvme-read seq /dev/nvme0n1 ${seconds}
echo "${MARK} rand start"
sleep 1
nvme-read rand /dev/nvme0n1 ${seconds}
sleep 1
echo "${MARK} second pass"
nvme-read seq /dev/nvme0n1 ${seconds}
nvme-read rand /dev/nvme0n1 ${seconds}
echo "${MARK} done"
`;
}

function buildInitrd(seconds: number, modulesDir: string): Uint8Array {
  return withMarkerInit(buildInitramfs({ script: viommuScript(seconds), modulesDir, programs: ['nvme-read'] }));
}

// ---- parsing (pure) -------------------------------------------------------------------------

export interface ParsedViommuRun {
  userspaceMs?: number;
  guestUptimeMs?: number;
  seqMBps?: number;
  iops?: number;
  randIos?: number;
  randUs?: number;
  /** The same two phases run again right after (both VMMs warmed up: JIT, caches, the guest's own). */
  seq2MBps?: number;
  iops2?: number;
  /** The guest's own words on its DMA domain (dmesg: default domain type, invalidation policy). */
  guestIommu?: string;
  problems: string[];
}

export function parseViommuRun(lines: readonly SerialLine[]): ParsedViommuRun {
  const p: ParsedViommuRun = { problems: [] };
  const find = (re: RegExp, from = 0) => {
    for (const l of lines.slice(from)) {
      const m = re.exec(l.text);
      if (m) return { m, t: l.t };
    }
    return undefined;
  };
  const init = find(/^bench-linux: init$/);
  if (init) p.userspaceMs = init.t;
  else p.problems.push('no "bench-linux: init" line (did /init run?)');
  const up = find(/^bench-linux: uptime ([\d.]+)/);
  if (up) p.guestUptimeMs = Number(up.m[1]) * 1000;
  const io = find(/^bench-viommu: iommu (.*)$/);
  if (io) p.guestIommu = io.m[1]!.trim();
  const seq = find(/^nvme-read seq bytes=\d+ usec=\d+ MBps=([\d.]+)/);
  if (seq) p.seqMBps = Number(seq.m[1]);
  else
    p.problems.push(
      `no seq result${find(/^nvme-read error (.*)$/) ? `: ${find(/^nvme-read error (.*)$/)!.m[1]}` : ''}`,
    );
  const rand = find(/^nvme-read rand ios=(\d+) usec=(\d+) iops=([\d.]+)/);
  if (rand) {
    p.randIos = Number(rand.m[1]);
    p.randUs = Number(rand.m[2]);
    p.iops = Number(rand.m[3]);
  } else p.problems.push('no rand result');
  // The second pass, after its marker (older runs have none).
  const second = lines.findIndex((l) => l.text === `${MARK} second pass`);
  if (second >= 0) {
    const seq2 = find(/^nvme-read seq bytes=\d+ usec=\d+ MBps=([\d.]+)/, second);
    if (seq2) p.seq2MBps = Number(seq2.m[1]);
    else p.problems.push('no second seq result');
    const rand2 = find(/^nvme-read rand ios=\d+ usec=\d+ iops=([\d.]+)/, second);
    if (rand2) p.iops2 = Number(rand2.m[1]);
    else p.problems.push('no second rand result');
  }
  return p;
}

/** tsvmm's host-side request counters out of an x-query-viommu reply (undefined when it has none). */
export function viommuCounts(reply: unknown): { maps: number; unmaps: number } | undefined {
  const s = (reply as { host?: { stats?: { maps?: unknown; unmaps?: unknown } } } | null)?.host?.stats;
  return typeof s?.maps === 'number' && typeof s.unmaps === 'number' ? { maps: s.maps, unmaps: s.unmaps } : undefined;
}

/** Each thread's CPU outside the guest between two snapshots, µs, user and system, summed by thread name (nonzero only). */
export function threadCpuUsBetween(a: Snapshot, b: Snapshot): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, [u, s, g]] of Object.entries(b.threadCpu)) {
    const o = a.threadCpu[k];
    if (!o) continue;
    // The main thread (vCPU 0 and every device) apart from the others (V8's, libuv's, watchers).
    const name = k.startsWith(`${b.pid} `) ? `${k.slice(String(b.pid).length + 1)} (main)` : k.replace(/^\d+ /, '');
    const user = (u - g - (o[0] - o[2])) * 1e4,
      sys = (s - o[1]) * 1e4;
    if (user) out[`${name} user`] = (out[`${name} user`] ?? 0) + user;
    if (sys) out[`${name} sys`] = (out[`${name} sys`] ?? 0) + sys;
  }
  return out;
}

/** KVM's counters between two snapshots (those both have). */
export function kvmBetween(a: Snapshot, b: Snapshot): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(b.kvm)) if (a.kvm[k] !== undefined) out[k] = v - a.kvm[k]!;
  return out;
}

// ---- the page (pure) ------------------------------------------------------------------------

const median = (xs: number[]) => {
  if (!xs.length) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const fmt = (x: number | undefined, d = 0) =>
  x === undefined ? '—' : x.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d });
const ratio = (a: number | undefined, b: number | undefined) =>
  a === undefined || b === undefined || b === 0 ? undefined : a / b;

/** One value per (vmm, mode): the median over rounds of the samples without an error for that field. */
export function pick(r: ViommuResults, vmm: 'tsvmm' | 'qemu', mode: Mode, f: (s: ViommuSample) => number | undefined) {
  return median(
    r.samples
      .filter((s) => s.vmm === vmm && s.mode === mode)
      .map(f)
      .filter((x): x is number => x !== undefined && Number.isFinite(x)),
  );
}

export function renderViommu(r: ViommuResults): string {
  const rows: string[] = [];
  const row = (label: string, unit: string, better: 'higher' | 'lower', t?: number, q?: number, d = 0) => {
    const x = ratio(t, q);
    const worse = x !== undefined && (better === 'higher' ? x < 0.95 : x > 1.05);
    const xs = x === undefined ? '—' : `${worse ? '**' : ''}${x.toFixed(2)}×${worse ? '**' : ''}`;
    rows.push(`| ${label} | ${unit} | ${better} | ${fmt(t, d)} | ${fmt(q, d)} | ${xs} |`);
  };
  // The second pass: the same phases again in the same launch, once both VMMs are warm.
  const passes = [
    { suffix: '', seq: (s: ViommuSample) => s.seqMBps, iops: (s: ViommuSample) => s.iops },
    { suffix: ', second pass', seq: (s: ViommuSample) => s.seq2MBps, iops: (s: ViommuSample) => s.iops2 },
  ];
  for (const p of passes) {
    for (const m of MODES)
      row(
        `nvme sequential read, ${m}${p.suffix}`,
        'MB/s',
        'higher',
        pick(r, 'tsvmm', m, p.seq),
        pick(r, 'qemu', m, p.seq),
        1,
      );
    for (const m of MODES)
      row(
        `nvme 4 KiB random read (QD1), ${m}${p.suffix}`,
        'IOPS',
        'higher',
        pick(r, 'tsvmm', m, p.iops),
        pick(r, 'qemu', m, p.iops),
      );
  }
  for (const m of MODES) {
    const cpu = (s: ViommuSample) => (s.cpuUs !== undefined && s.randIos ? s.cpuUs / s.randIos : undefined);
    row(`VMM CPU per 4 KiB read (rand phase), ${m}`, 'µs', 'lower', pick(r, 'tsvmm', m, cpu), pick(r, 'qemu', m, cpu));
  }
  const boot = (s: ViommuSample) => s.userspaceMs;
  row(
    'Linux launch → userspace, vIOMMU on (lazy mode launch)',
    'ms',
    'lower',
    pick(r, 'tsvmm', 'lazy', boot),
    pick(r, 'qemu', 'lazy', boot),
  );
  row(
    'Linux launch → userspace, no vIOMMU',
    'ms',
    'lower',
    pick(r, 'tsvmm', 'none', boot),
    pick(r, 'qemu', 'none', boot),
  );

  const req: string[] = [];
  for (const m of ['identity', 'lazy', 'strict'] as const) {
    const n = (s: ViommuSample) => (s.maps !== undefined && s.unmaps !== undefined ? s.maps + s.unmaps : undefined);
    const perS = pick(r, 'tsvmm', m, (s) => (n(s) !== undefined && s.randUs ? (n(s)! * 1e6) / s.randUs : undefined));
    const perIo = pick(r, 'tsvmm', m, (s) => (n(s) !== undefined && s.randIos ? n(s)! / s.randIos : undefined));
    const cpuPer = pick(r, 'tsvmm', m, (s) => (n(s) && s.cpuUs !== undefined ? s.cpuUs / n(s)! : undefined));
    const maps = pick(r, 'tsvmm', m, (s) => s.maps),
      unmaps = pick(r, 'tsvmm', m, (s) => s.unmaps);
    req.push(
      `| ${m} | ${fmt(maps)} | ${fmt(unmaps)} | ${fmt(perS)} | ${fmt(perIo, 2)} | ${fmt(cpuPer, 1)} | ${fmt(pick(r, 'tsvmm', m, (s) => s.iops))} |`,
    );
  }
  const guest = MODES.map(
    (m) =>
      `- ${m}: tsvmm: ${r.samples.find((s) => s.vmm === 'tsvmm' && s.mode === m)?.guestIommu || '(nothing)'}; QEMU: ${r.samples.find((s) => s.vmm === 'qemu' && s.mode === m)?.guestIommu || '(nothing)'}`,
  );
  const errors = r.samples.filter((s) => s.error).map((s) => `- ${s.vmm} ${s.mode} round ${s.round + 1}: ${s.error}`);
  return (
    [
      `vIOMMU rows, ${r.date.slice(0, 10)}: ${r.where}. Guest: Debian ${r.kernel}, ${MEM_MIB} MiB, 1 vCPU, \`${CMDLINE}\` + the mode's option, nvme assigned (vfio-pci) to both; ${r.qemu} (\`-accel kvm -M q35\`, \`-device virtio-iommu-pci\` in the vIOMMU modes). nvme-read: ${r.seconds} s of 1 MiB sequential O_DIRECT reads, then ${r.seconds} s of 4 KiB random reads at queue depth 1, then both again in the same launch (the second pass). ${r.rounds} round(s), medians.`,
      '',
      '| metric | unit | better | tsvmm | QEMU | tsvmm ÷ QEMU |',
      '| --- | --- | --- | ---: | ---: | ---: |',
      ...rows,
      '',
      "**bold**: tsvmm worse by more than 5 %. VMM CPU: the VMM process's user + system time outside the guest over the rand phase (USER_HZ ticks of 10 ms), divided by the reads done.",
      '',
      "tsvmm's virtio-iommu requests over the rand phase (x-query-viommu `host.stats`, read before and after it):",
      '',
      '| mode | MAPs | UNMAPs | MAP+UNMAP per second | per 4 KiB read | VMM CPU per request (µs) | IOPS |',
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
      ...req,
      '',
      "The guest's DMA domain (its dmesg):",
      '',
      ...guest,
      ...(errors.length ? ['', 'Errors:', '', ...errors] : []),
      ...(r.notes?.length ? ['', 'Notes:', '', ...r.notes.map((n) => `- ${n}`)] : []),
    ].join('\n') + '\n'
  );
}

// ---- running it (inside the test host) -------------------------------------------------------

function argvFor(
  vmm: 'tsvmm' | 'qemu',
  mode: Mode,
  o: { kernel: string; initrd: string; bdf: string; scratch: string; tsvmm?: string },
  qmp: string,
): string[] {
  const viommu = mode !== 'none';
  if (vmm === 'tsvmm') {
    const cfg = join(o.scratch, `tsvmm-${mode}.json`);
    writeFileSync(
      cfg,
      JSON.stringify({
        name: 'bench-viommu',
        memory: `${MEM_MIB}M`,
        kernel: { path: o.kernel, format: 'linux', initrd: o.initrd },
        cmdline: modeCmdline(mode),
        serial: { output: 'stdout' },
        ...(viommu ? { iommu: { type: 'virtio' } } : {}),
        devices: [{ type: 'vfio-pci', id: 'nvme', host: o.bdf, ...(viommu ? { iommu: true } : {}) }],
      }),
    );
    return [process.execPath, o.tsvmm ?? tsvmmJs, 'run', cfg, '--qmp', qmp];
  }
  return [
    QEMU,
    ...innerQemuArgs({ memMiB: MEM_MIB }),
    '-no-reboot',
    '-kernel',
    o.kernel,
    '-initrd',
    o.initrd,
    '-append',
    modeCmdline(mode),
    ...(viommu ? ['-device', 'virtio-iommu-pci'] : []),
    '-device',
    `vfio-pci,host=${o.bdf}`,
  ];
}

async function query(qmp: string): Promise<{ maps: number; unmaps: number } | undefined> {
  try {
    const r = await qmpCall(qmp, 'x-query-viommu');
    return 'return' in r ? viommuCounts(r.return) : undefined;
  } catch {
    return undefined;
  }
}

async function once(
  vmm: 'tsvmm' | 'qemu',
  mode: Mode,
  round: number,
  o: {
    kernel: string;
    initrd: string;
    bdf: string;
    scratch: string;
    perfDir?: string;
    straceDir?: string;
    jitDir?: string;
    nodeFlags?: string[];
    tsvmm?: string;
  },
  profileDir?: string,
): Promise<ViommuSample> {
  const qmp = join(o.scratch, `qmp-${vmm}-${mode}-${round}.sock`);
  const plain = argvFor(vmm, mode, o, qmp);
  const argv =
    profileDir && vmm === 'tsvmm'
      ? // The sandbox would stop the profile's write at exit (a mkdir it does not allow).
        [plain[0]!, '--cpu-prof', `--cpu-prof-dir=${profileDir}`, ...plain.slice(1), '--sandbox', 'off']
      : vmm === 'tsvmm' && (o.perfDir || o.straceDir) && !o.jitDir && !o.nodeFlags?.length
        ? // The sandbox kills a process that a tracer attaches to (restart_syscall is not in its filter).
          [plain[0]!, ...(o.perfDir ? ['--perf-basic-prof'] : []), ...plain.slice(1), '--sandbox', 'off']
        : vmm === 'tsvmm' && (o.jitDir || o.nodeFlags?.length)
          ? [
              plain[0]!,
              ...(o.jitDir ? ['--trace-opt', '--trace-deopt'] : []),
              ...(o.nodeFlags ?? []),
              ...plain.slice(1),
            ]
          : plain;
  let perf: ReturnType<typeof spawn> | undefined, strace: ReturnType<typeof spawn> | undefined;
  const lines: SerialLine[] = [];
  let snapA: Snapshot | undefined, snapB: Snapshot | undefined;
  let qA: Promise<{ maps: number; unmaps: number } | undefined> | undefined,
    qB: Promise<{ maps: number; unmaps: number } | undefined> | undefined;
  const t0 = performance.now();
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  const snap = () => trySnapshot(child.pid!);
  let partial = '',
    stderr = '';
  child.stdout.on('data', (b: Buffer) => {
    const t = performance.now() - t0;
    partial += b.toString('latin1');
    let i: number;
    while ((i = partial.indexOf('\n')) >= 0) {
      const raw = partial.slice(0, i + 1);
      partial = partial.slice(i + 1);
      const text = raw.replace(/\r?\n$/, '').replace(/^\r+/, '');
      lines.push({ t, text, bytes: raw.length });
      // The guest sleeps 1 s after each of these two lines: the counters are read while it is idle.
      if (text === `${MARK} rand start`) {
        snapA = snap();
        if (vmm === 'tsvmm' && mode !== 'none') qA = query(qmp);
        if (o.straceDir)
          strace = spawn(
            'strace',
            [
              '-f',
              '-c',
              '-S',
              'calls',
              '-p',
              String(child.pid),
              '-o',
              join(o.straceDir, `strace-${vmm}-${mode}-${round}.txt`),
            ],
            { stdio: 'ignore' },
          );
        if (o.perfDir && vmm === 'tsvmm')
          perf = spawn(
            'perf',
            [
              'record',
              '-e',
              'cpu-clock',
              '-g',
              '-F',
              '499',
              '-p',
              String(child.pid),
              '-o',
              join(o.perfDir, `perf-${vmm}-${mode}-${round}.data`),
            ],
            { stdio: 'ignore' },
          );
      } else if (text.startsWith('nvme-read rand ') && !snapB) {
        snapB = snap();
        if (vmm === 'tsvmm' && mode !== 'none') qB = query(qmp);
        perf?.kill('SIGINT');
        strace?.kill('SIGINT');
      }
    }
  });
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 300_000);
  const code = await new Promise<number | null>((res) => {
    child.on('error', (e) => {
      stderr += `spawn: ${e.message}`;
      res(null);
    });
    child.on('close', (c) => res(c));
  });
  clearTimeout(timer);
  if (o.jitDir && vmm === 'tsvmm')
    writeFileSync(
      join(o.jitDir, `jit-${vmm}-${mode}-${round}.txt`),
      lines.map((l) => `${l.t.toFixed(0)} ${l.text}`).join('\n'),
    );
  const [a, b] = await Promise.all([qA, qB]);
  const p = parseViommuRun(lines);
  const s: ViommuSample = {
    vmm,
    mode,
    round,
    exitCode: code,
    userspaceMs: p.userspaceMs,
    guestUptimeMs: p.guestUptimeMs,
    seqMBps: p.seqMBps,
    iops: p.iops,
    ...(p.seq2MBps !== undefined ? { seq2MBps: p.seq2MBps } : {}),
    ...(p.iops2 !== undefined ? { iops2: p.iops2 } : {}),
    randIos: p.randIos,
    randUs: p.randUs,
    guestIommu: p.guestIommu,
    ...(a && b ? { maps: b.maps - a.maps, unmaps: b.unmaps - a.unmaps } : {}),
    ...(snapA && snapB
      ? {
          cpuUs: cpuUsBetween(snapA, snapB),
          kvm: kvmBetween(snapA, snapB),
          threadCpuUs: threadCpuUsBetween(snapA, snapB),
        }
      : {}),
  };
  const problems = [...p.problems];
  if (code !== 0) problems.push(`exit ${code}: ${stderr.trim().split('\n').slice(-4).join(' | ')}`);
  if (problems.length)
    s.error = `${problems.join('; ')}; last lines: ${lines
      .slice(-3)
      .map((l) => l.text)
      .join(' | ')}`;
  return s;
}

export async function runViommuBench(o: {
  rounds: number;
  seconds: number;
  log: (s: string) => void;
  save?: (r: ViommuResults) => void;
  profileDir?: string;
  /** `perf record -g` of each launch's rand phase into this directory (a diagnosis, not a row). */
  perfDir?: string;
  /** V8's --trace-opt/--trace-deopt lines of each tsvmm launch (its stdout, with the guest's, timed) into this directory. */
  jitDir?: string;
  /** Extra node flags for tsvmm launches (an experiment: such a run is no row). */
  nodeFlags?: string[];
  /** `strace -f -c` (syscall counts and times) of each launch's rand phase into this directory (a diagnosis). */
  straceDir?: string;
  /** Another build's dist/bin/tsvmm.cjs in the tsvmm column (an A/B of two builds: run once with each, compare). */
  tsvmm?: string;
  /** Only these modes / VMMs (a quick look; the page then has dashes where nothing ran). */
  modes?: readonly Mode[];
  vmms?: readonly ('tsvmm' | 'qemu')[];
}): Promise<ViommuResults> {
  const devices = JSON.parse(process.env.TSVMM_TESTHOST_DEVICES ?? '{}') as Record<string, { bdf: string }>;
  if (!devices.nvme) throw new Error('no nvme in the test host (--devices nvme)');
  await ensureDebugfs();
  const { k, scratch, kernel, initrd } = linuxBenchSetup('viommu', '--viommu-only');
  writeFileSync(initrd, buildInitrd(o.seconds, k.guestModules));
  const qemu = (await qemuVersion()) ?? '?';
  const r: ViommuResults = {
    date: new Date().toISOString(),
    where: `inside the test host (nested KVM under QEMU TCG, ${cpus().length} vCPU, ${Math.round(totalmem() / 2 ** 20)} MiB, Linux ${release()})`,
    kernel: k.version,
    qemu: `QEMU ${qemu}`,
    seconds: o.seconds,
    rounds: 0,
    samples: [],
  };
  const args = {
    kernel,
    initrd,
    bdf: devices.nvme.bdf,
    scratch,
    ...(o.perfDir ? { perfDir: o.perfDir } : {}),
    ...(o.jitDir ? { jitDir: o.jitDir } : {}),
    ...(o.nodeFlags?.length ? { nodeFlags: o.nodeFlags } : {}),
    ...(o.straceDir ? { straceDir: o.straceDir } : {}),
    ...(o.tsvmm ? { tsvmm: o.tsvmm } : {}),
  };
  try {
    for (let i = 0; i < o.rounds; i++) {
      for (const mode of o.modes ?? MODES) {
        // Order alternates per mode and round: neither VMM always runs first.
        const order: ('tsvmm' | 'qemu')[] = (MODES.indexOf(mode) + i) % 2 ? ['qemu', 'tsvmm'] : ['tsvmm', 'qemu'];
        for (const vmm of order.filter((v) => !o.vmms || o.vmms.includes(v))) {
          const s = await once(vmm, mode, i, args);
          r.samples.push(s);
          o.log(
            `viommu round ${i + 1} ${mode} ${vmm}: userspace ${s.userspaceMs?.toFixed(0)} ms, seq ${s.seqMBps} MB/s, rand ${s.iops} IOPS, second pass seq ${s.seq2MBps} MB/s rand ${s.iops2} IOPS, maps ${s.maps} unmaps ${s.unmaps}, cpu ${s.cpuUs} µs, iommu "${s.guestIommu}"${s.error ? ` ERROR ${s.error}` : ''}`,
          );
          o.log(`  kvm ${JSON.stringify(s.kvm)} threads ${JSON.stringify(s.threadCpuUs)}`);
          o.save?.(r);
        }
      }
      r.rounds = i + 1;
      o.save?.(r);
    }
    if (o.profileDir) {
      mkdirSync(o.profileDir, { recursive: true });
      const s = await once('tsvmm', 'strict', -1, args, o.profileDir);
      o.log(
        `viommu profile tsvmm strict: seq ${s.seqMBps} MB/s, rand ${s.iops} IOPS, maps ${s.maps} unmaps ${s.unmaps}, cpu ${s.cpuUs} µs${s.error ? ` ERROR ${s.error}` : ''}`,
      );
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  return r;
}

async function main(): Promise<void> {
  const a = process.argv.slice(2);
  const o = {
    rounds: 1,
    seconds: 3,
    out: '',
    profileDir: undefined as string | undefined,
    modes: undefined as Mode[] | undefined,
    vmms: undefined as ('tsvmm' | 'qemu')[] | undefined,
    perfDir: undefined as string | undefined,
    jitDir: undefined as string | undefined,
    nodeFlags: [] as string[],
    straceDir: undefined as string | undefined,
    tsvmm: undefined as string | undefined,
  };
  for (let i = 0; i < a.length; i++) {
    if (a[i] === '--rounds') o.rounds = Number(a[++i]);
    else if (a[i] === '--seconds') o.seconds = Number(a[++i]);
    else if (a[i] === '--out') o.out = a[++i]!;
    else if (a[i] === '--perf') o.perfDir = a[++i]!;
    else if (a[i] === '--trace-jit') o.jitDir = a[++i]!;
    else if (a[i] === '--node-flag') o.nodeFlags.push(a[++i]!);
    else if (a[i] === '--strace') o.straceDir = a[++i]!;
    else if (a[i] === '--tsvmm') o.tsvmm = a[++i]!;
    else if (a[i] === '--modes') {
      o.modes = (a[++i] ?? '').split(',') as Mode[];
      for (const m of o.modes)
        if (!MODES.includes(m)) throw new Error(`bench/viommu: --modes ${m}: one of ${MODES.join(', ')}`);
    } else if (a[i] === '--vmm') {
      const v = a[++i];
      if (v !== 'tsvmm' && v !== 'qemu') throw new Error(`bench/viommu: --vmm ${v}: tsvmm or qemu`);
      o.vmms = [v];
    } else if (a[i] === '--profile')
      o.profileDir = join(process.env.TSVMM_TESTHOST_RUN_DIR ?? tmpdir(), 'viommu-profile');
    else throw new Error(`bench/viommu: unknown argument ${a[i]}`);
  }
  viommuScript(o.seconds); // checks --seconds before booting anything
  const out = o.out || join(process.env.TSVMM_TESTHOST_RUN_DIR ?? tmpdir(), 'bench-viommu.json');
  const save = (r: ViommuResults) => writeFileSync(out, JSON.stringify(r, null, 1) + '\n');
  const r = await runViommuBench({ ...o, log: (s) => process.stderr.write(`${s}\n`), save });
  save(r);
  process.stdout.write(renderViommu(r));
}

runIfMain(import.meta.url, 'viommu', main);
