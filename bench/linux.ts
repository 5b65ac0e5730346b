// Linux rows, INSIDE the test host with nvme bound to vfio-pci (bench/main.ts
// --linux-only starts it there): the Debian kernel the test host caches, with the same initramfs
// file, under tsvmm (`tsvmm run`, kernel.initrd) and QEMU (-accel kvm -M q35, SeaBIOS, -kernel
// -initrd), nvme assigned to both, rounds interleaved.
//   launch → userspace: spawn → the host reads the first line /init prints ("bench-linux: init");
//     the guest's uptime at that point splits it into the kernel's own boot and what came before.
//   serial: /init's script writes CHARS characters (lines of 64) to /dev/ttyS0; the host times the
//     arrival of the payload lines; the guest times write → the UART sent them all (its tx counter
//     in /proc/tty/driver/serial); KVM's per-VM exit counters and the VMM's CPU time over the same
//     span (bench/vmm.ts snapshot) say where the time goes.
//
//   node dist/bench/linux.js [--rounds N] [--chars N] [--no-warmup] [--profile] [--out FILE]
// --profile: after the rounds, not counted, tsvmm once under `node --cpu-prof` and tsvmm and QEMU once each
// under `strace -f -c` (into <run dir>/linux-profile; bench/main.ts copies it to dist/bench/linux-profile).
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, release, tmpdir, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { buildInitramfs, cpioNewc, INIT_SCRIPT } from '../machine/loader/initramfs.js';
import { cachedDebianKernel } from '../testhost/kernel.js';
import { innerQemuArgs } from '../testhost/qemu.js';
import { nvmePattern } from '../testhost/index.js';
import {
  fmtRatio,
  renderMarkdown,
  summarize,
  type MetricDef,
  type MetricResult,
  type Summary,
  type VmmName,
} from './stats.js';
import { ensureDebugfs, QEMU, snapshot, tsvmmJs, type Snapshot } from './vmm.js';

export const MEM_MIB = 256;
export const CMDLINE = 'console=ttyS0 quiet';
/** Payload line: 63 characters and the newline (the tty's ONLCR adds a CR: 65 bytes through the UART). */
export const PAYLOAD_LINE = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_';
const NVME_CHECK_BYTES = 2 ** 20;
const MARK = 'bench-linux:';

export interface LinuxSample {
  vmm: VmmName;
  /** tsvmm only: another build's dist/bin/tsvmm.cjs ran (TSVMM_BENCH_LINUX_ALT), not this one. */
  alt?: string;
  round: number;
  exitCode: number | null;
  /** spawn → arrival of /init's first line. */
  userspaceMs?: number;
  /** The guest's /proc/uptime when /init started. */
  guestUptimeMs?: number;
  /** Host: arrival span of the payload lines after the first, per UART byte. */
  serialHostUsPerChar?: number;
  /** Guest: write → its UART's tx counter reached the payload's size, per byte. */
  serialGuestUsPerChar?: number;
  /** Over the host span: KVM exits (all, port I/O), interrupts injected, VMM CPU outside the guest, per byte. */
  exitsPerChar?: number;
  ioExitsPerChar?: number;
  irqsPerChar?: number;
  cpuUsPerChar?: number;
  /** The same CPU time split by thread (the main thread as "main", others by name, same names summed). */
  threadUsPerChar?: Record<string, number>;
  /** The guest's line for ttyS0 in /proc/tty/driver/serial (which UART Linux found). */
  uart?: string;
  nvmeOk?: boolean;
  error?: string;
}

export interface LinuxResults {
  date: string;
  where: string;
  kernel: string;
  qemu: string;
  chars: number;
  memMiB: number;
  rounds: number;
  /** Whether a warm-up launch of each VMM ran first (not counted). */
  warmup?: boolean;
  samples: LinuxSample[];
}

// ---- the guest side -----------------------------------------------------------------------

/**
 * /init: its first line is the marker the host times; then the standard tsvmm initramfs /init
 * (machine/loader/initramfs.ts, appended as /stdinit) mounts, loads the modules and runs /script.
 */
export const MARKER_INIT = `#!/bin/busybox sh
echo "${MARK} init"
/bin/busybox mkdir -p /proc
/bin/busybox mount -t proc proc /proc
read u _ < /proc/uptime
echo "${MARK} uptime $u"
/bin/busybox umount /proc
exec /bin/busybox sh /stdinit
`;

/** /script: nvme check, then the serial payload (chars: a multiple of 64). */
export function benchScript(chars: number, nvmeBytes = NVME_CHECK_BYTES): string {
  if (chars % 64 || chars <= 64) throw new Error(`--chars ${chars}: a multiple of 64 above 64`);
  const uartBytes = (chars / 64) * 65;
  return `i=0; while [ ! -b /dev/nvme0n1 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo "${MARK} nvme $(head -c ${nvmeBytes} /dev/nvme0n1 | sha256sum)"
# tx counter of ttyS0 without a fork (the poll below must not add work of its own)
tx() { while read -r n rest; do if [ "$n" = 0: ]; then t=\${rest#*tx:}; TX=\${t%% *}; fi; done < /proc/tty/driver/serial; }
yes ${PAYLOAD_LINE} | head -c ${chars} > /tmp/payload
echo "${MARK} uart $(grep '^0:' /proc/tty/driver/serial)"
echo "${MARK} serial start"
sleep 0.5
tx; tx0=$TX; read a _ < /proc/uptime
cat /tmp/payload > /dev/ttyS0
want=$((tx0 + ${uartBytes}))
j=0; while tx; [ "$TX" -lt "$want" ] && [ $j -lt 3000 ]; do sleep 0.02; j=$((j+1)); done
read b _ < /proc/uptime
echo "${MARK} serial end $a $b $((TX - tx0))"
`;
}

/** The initrd both VMMs load: tsvmm's standard initramfs with the script, plus the marker /init appended. */
export function buildBenchInitrd(chars: number, modulesDir: string): Uint8Array {
  const base = buildInitramfs({ script: benchScript(chars), modulesDir });
  // A second newc archive after the first: the kernel unpacks both, later names replace earlier ones.
  const enc = new TextEncoder();
  const tail = cpioNewc([
    { name: 'init', mode: 0o100755, data: enc.encode(MARKER_INIT) },
    { name: 'stdinit', mode: 0o100755, data: enc.encode(INIT_SCRIPT) },
  ]);
  const out = new Uint8Array(base.length + tail.length);
  out.set(base);
  out.set(tail, base.length);
  return out;
}

// ---- parsing a run (pure) -----------------------------------------------------------------

/** A serial line as the host got it: arrival time (ms since spawn), text without CR/LF, raw bytes. */
export interface SerialLine {
  t: number;
  text: string;
  bytes: number;
}

export interface ParsedRun {
  userspaceMs?: number;
  guestUptimeMs?: number;
  /** Index of the first and last payload line in the list, and how many arrived. */
  payload?: { first: number; last: number; lines: number };
  serialHostUsPerChar?: number;
  serialGuestUsPerChar?: number;
  uart?: string;
  nvmeSha?: string;
  problems: string[];
}

/** Reads the markers and the payload out of the lines of one launch. */
export function parseRun(lines: SerialLine[], chars: number): ParsedRun {
  const p: ParsedRun = { problems: [] };
  const at = (re: RegExp) => lines.findIndex((l) => re.test(l.text));
  const init = at(/^bench-linux: init$/);
  if (init < 0) p.problems.push('no "bench-linux: init" line (did /init run?)');
  else p.userspaceMs = lines[init]!.t;
  const up = lines.find((l) => l.text.startsWith(`${MARK} uptime `));
  if (up) p.guestUptimeMs = Number(up.text.split(' ')[2]) * 1000;
  p.uart = lines.find((l) => l.text.startsWith(`${MARK} uart `))?.text.slice(`${MARK} uart `.length);
  p.nvmeSha = /^bench-linux: nvme ([0-9a-f]{64})\b/.exec(
    lines.find((l) => l.text.startsWith(`${MARK} nvme`))?.text ?? '',
  )?.[1];
  const start = at(/^bench-linux: serial start$/),
    end = at(/^bench-linux: serial end /);
  if (start < 0 || end < 0) {
    p.problems.push('no serial start/end markers');
    return p;
  }
  const idx: number[] = [];
  for (let i = start + 1; i < end; i++) if (lines[i]!.text === PAYLOAD_LINE) idx.push(i);
  const want = chars / 64;
  if (idx.length !== want) p.problems.push(`${idx.length} of ${want} payload lines arrived intact`);
  if (idx.length >= 2) {
    const first = idx[0]!,
      last = idx[idx.length - 1]!;
    p.payload = { first, last, lines: idx.length };
    // Bytes that arrived after the first payload line, up to the last one (its own bytes included).
    let bytes = 0;
    for (let i = first + 1; i <= last; i++) bytes += lines[i]!.bytes;
    p.serialHostUsPerChar = ((lines[last]!.t - lines[first]!.t) * 1000) / bytes;
  }
  const e = /^bench-linux: serial end ([\d.]+) ([\d.]+) (\d+)$/.exec(lines[end]!.text);
  if (e && Number(e[3]) > 0) p.serialGuestUsPerChar = ((Number(e[2]) - Number(e[1])) * 1e6) / Number(e[3]);
  return p;
}

/** Per UART byte between two snapshots of the VMM: KVM exits, port-I/O exits, injections, CPU outside the guest (µs). */
export function perChar(a: Snapshot, b: Snapshot, bytes: number, pid: number): Partial<LinuxSample> {
  const d = (k: string) => (a.kvm[k] !== undefined && b.kvm[k] !== undefined ? b.kvm[k]! - a.kvm[k]! : undefined);
  const per = (x: number | undefined) => (x === undefined ? undefined : x / bytes);
  let ticks = 0;
  const byThread: Record<string, number> = {};
  for (const [k, [u, s, g]] of Object.entries(b.threadCpu)) {
    const o = a.threadCpu[k];
    if (!o) continue;
    const t = u - g - (o[0] - o[2]) + (s - o[1]);
    ticks += t;
    const [tid, ...name] = k.split(' ');
    // Threads of the same name told apart by where they sleep (tsvmm's loop watcher waits in poll, V8's
    // and libuv's helpers in futex, Node's platform timer thread in epoll).
    const where = b.wchan?.[k] ?? a.wchan?.[k];
    const who = Number(tid) === pid ? 'main' : `${name.join(' ')}${where ? ` (${where})` : ''}`;
    byThread[who] = (byThread[who] ?? 0) + (t * 1e4) / bytes;
  }
  return {
    exitsPerChar: per(d('exits')),
    ioExitsPerChar: per(d('io_exits')),
    irqsPerChar: per(d('irq_injections')),
    cpuUsPerChar: (ticks * 1e4) / bytes, // USER_HZ = 100: a tick is 10 ms
    threadUsPerChar: byThread,
  };
}

// ---- the rows (pure) ----------------------------------------------------------------------

const NA = { null: 'the null VMM boots no Linux (no firmware, no ACPI, no 8250).' };
type Field = keyof LinuxSample;
export const LINUX_METRICS: (MetricDef & { field: Field; derive?: (s: LinuxSample) => number | undefined })[] = [
  {
    id: 'linux-userspace',
    field: 'userspaceMs',
    label: `Linux launch → first line of /init (nvme assigned, ${MEM_MIB} MiB)`,
    unit: 'ms',
    better: 'lower',
    digits: 0,
    na: NA,
  },
  {
    id: 'linux-prekernel',
    field: 'userspaceMs',
    derive: (s) =>
      s.userspaceMs !== undefined && s.guestUptimeMs !== undefined ? s.userspaceMs - s.guestUptimeMs : undefined,
    label: "… before the guest kernel's clock starts (VMM start-up, firmware, loading; launch − guest uptime)",
    unit: 'ms',
    better: 'lower',
    digits: 0,
    na: NA,
  },
  {
    id: 'linux-kernel',
    field: 'guestUptimeMs',
    label: "… the guest kernel's own boot (its uptime when /init starts)",
    unit: 'ms',
    better: 'lower',
    digits: 0,
    na: NA,
  },
  {
    id: 'serial-host',
    field: 'serialHostUsPerChar',
    label: 'Linux serial console, per character (host: arrival of the payload)',
    unit: 'µs',
    better: 'lower',
    digits: 0,
    na: NA,
  },
  {
    id: 'serial-guest',
    field: 'serialGuestUsPerChar',
    label: "Linux serial console, per character (guest: write → its UART's tx counter)",
    unit: 'µs',
    better: 'lower',
    digits: 0,
    na: NA,
  },
  {
    id: 'serial-exits',
    field: 'exitsPerChar',
    label: 'KVM exits per console character (all reasons)',
    unit: 'exits',
    better: 'lower',
    digits: 2,
    na: NA,
  },
  {
    id: 'serial-io-exits',
    field: 'ioExitsPerChar',
    label: 'KVM port-I/O exits per console character',
    unit: 'exits',
    better: 'lower',
    digits: 2,
    na: NA,
  },
  {
    id: 'serial-irqs',
    field: 'irqsPerChar',
    label: 'interrupts injected per console character',
    unit: 'irqs',
    better: 'lower',
    digits: 3,
    na: NA,
  },
  {
    id: 'serial-cpu',
    field: 'cpuUsPerChar',
    label: 'VMM CPU outside the guest per console character (all threads, user + system)',
    unit: 'µs',
    better: 'lower',
    digits: 0,
    na: NA,
  },
];

// Notes for rows where tsvmm is worse, from `--profile` (one tsvmm launch under --cpu-prof, both VMMs under
// strace -c) in the run of bench/results/linux.md; keyed by metric id.
const STARTUP =
  "tsvmm's own start-up before the guest's first instruction, against QEMU's start-up plus SeaBIOS and its fw_cfg " +
  'copy of kernel and initrd. tsvmm runs from one bundled file with a V8 code cache (docs/startup.md), so no ' +
  "ES modules are resolved and read over the test host's 9p root. What is left: Node's own bootstrap (`node -e 0`), building " +
  'the Machine (under the profiler before: the MAP_DMA of its 256 MiB 0.7 s, opening the VFIO group and device ' +
  '0.2 s, loading the bzImage and initrd 0.3 s) and compiling the functions only a VM runs. What would close it: ' +
  'RAM pinned in 2 MiB pages (fewer pages per MAP_DMA), a code cache that covers the machine.';
const CONSOLE =
  'the guest makes the same exits per character under both (1.3 port-I/O exits: Linux finds a 16550A and writes ' +
  'up to 16 bytes per THRE interrupt into its FIFO), so the difference is what each exit costs the VMM. A --cpu-prof of ' +
  "tsvmm's main thread over the console phase (4 s): 63 % in runSlice (the KVM_RUN ioctl — guest and KVM — and the " +
  "loop's decoding), ~13 % writing the output through process.stdout (the stream: WriteWrap, async hooks, a Buffer " +
  'copy, then a synchronous write(2) to the pipe, 8 % of it in writeBuffer), ~8 % in the device dispatch (AddressSpace, ' +
  "the UART model, setIrqLine's KVM_IRQ_LINE) and 2 % re-entering the run loop after each event-loop turn; tsvmm's " +
  "other threads (all named node: V8's GC and compiler helpers, libuv's pool, the loop watcher) add CPU of their own " +
  "(per-thread split below). QEMU writes every byte with its own writev (4,552 in the strace'd launch; tsvmm 1,321 " +
  'writes, one per event-loop turn). Writing the output to fd 1 with writeSync instead of the stream (measured as another build in the ' +
  "same rounds on 2026-11-27) made no measurable difference (its CPU per character 1.08× this build's, 0.39–1.58): " +
  "what is left to try: the run loop's own cost per exit (the run-loop rows; the main thread alone " +
  "spent 264 µs per character against QEMU's whole 176 µs in the quietest run) and the V8/libuv helper threads " +
  '(≈ 114 µs per character there, told apart by where they sleep; the loop watcher took 17 µs).';
const SMALL =
  'not analysed: a difference under 0.01 per character, while the exits per character (all reasons and ' +
  "port I/O) stay within a few per cent of QEMU's.";
export const WHY_WORSE: Record<string, string> = {
  'serial-exits': SMALL,
  'serial-io-exits': SMALL,
  'serial-irqs': SMALL,
  'linux-userspace': STARTUP,
  'linux-prekernel': STARTUP,
  'serial-host': CONSOLE,
  'serial-guest': CONSOLE,
  'serial-cpu': CONSOLE,
};

export function linuxMetrics(r: LinuxResults): MetricResult[] {
  return LINUX_METRICS.map(({ field, derive, ...def }) => {
    const samples = { tsvmm: [] as number[], qemu: [] as number[], null: [] as number[] };
    for (const s of r.samples) {
      if (s.alt || (s.error && s.userspaceMs === undefined)) continue;
      const v = derive ? derive(s) : (s[field] as number | undefined);
      if (typeof v === 'number' && Number.isFinite(v)) samples[s.vmm].push(v);
    }
    return { def: { ...def, ...(WHY_WORSE[def.id] ? { whyWorse: WHY_WORSE[def.id] } : {}) }, samples };
  });
}

/**
 * tsvmm ÷ QEMU within each round (both ran back to back, under the same load), summarised over the rounds;
 * with alt, the other build's tsvmm ÷ this one.
 */
export function pairedRatios(r: LinuxResults, id: string, alt = false): Summary | undefined {
  const m = LINUX_METRICS.find((x) => x.id === id);
  if (!m) throw new Error(`no Linux metric ${id}`);
  const val = (s: LinuxSample | undefined) =>
    s && !(s.error && s.userspaceMs === undefined)
      ? m.derive
        ? m.derive(s)
        : (s[m.field] as number | undefined)
      : undefined;
  const out: number[] = [];
  for (let i = 0; i < r.rounds; i++) {
    const t = val(r.samples.find((s) => s.vmm === 'tsvmm' && s.round === i && !!s.alt === alt)),
      q = val(r.samples.find((s) => s.round === i && (alt ? s.vmm === 'tsvmm' && !s.alt : s.vmm === 'qemu')));
    if (t !== undefined && q !== undefined && q > 0) out.push(t / q);
  }
  return summarize(out);
}

/** Median per-character CPU of each tsvmm/QEMU thread over the rounds (where the VMM's CPU goes). */
export function threadSplit(r: LinuxResults, vmm: VmmName, alt = false): [string, number][] {
  const per = new Map<string, number[]>();
  for (const s of r.samples.filter((x) => x.vmm === vmm && !!x.alt === alt && x.threadUsPerChar))
    for (const [k, v] of Object.entries(s.threadUsPerChar!)) per.set(k, [...(per.get(k) ?? []), v]);
  return [...per]
    .map(([k, v]) => [k, summarize(v)!.median] as [string, number])
    .filter(([, v]) => v > 0)
    .sort((a, b) => b[1] - a[1]);
}

export function renderLinux(r: LinuxResults): string {
  const uarts = [
    ...new Set(r.samples.filter((s) => s.uart).map((s) => `${s.vmm}: ${s.uart!.replace(/ tx:\d+ rx:\d+/, '')}`)),
  ];
  const nvme = r.samples.filter((s) => s.nvmeOk).length;
  const errors = r.samples.filter((s) => s.error);
  const lines = [
    `Linux rows, ${r.date.slice(0, 10)}: ${r.where}. Guest: Debian ${r.kernel}, ${r.memMiB} MiB, 1 vCPU, ` +
      `\`${CMDLINE}\`, nvme assigned (vfio-pci), the same bzImage and initrd for both; QEMU: ${r.qemu} ` +
      `(\`-accel kvm -M q35 -cpu host -kernel -initrd -serial stdio\`, SeaBIOS). Serial payload: ${r.chars} characters ` +
      `in lines of 64 (${(r.chars / 64) * 65} bytes through the UART with the CRs).`,
    '',
    renderMarkdown(linuxMetrics(r), {
      rounds: `${r.rounds} rounds (VMMs interleaved, order rotated${r.warmup === false ? '; no warm-up launch' : '; a warm-up launch of each first, not counted'})`,
    }).trimEnd(),
    '',
    `nvme read right (first MiB's sha256) in ${nvme} of ${r.samples.length} launches. UART Linux found: ${uarts.join('; ') || '?'}.`,
  ];
  // The host is shared and its load drifts between rounds: the ratio within each round is the steadier figure.
  const paired = LINUX_METRICS.filter((m) =>
    ['linux-userspace', 'linux-prekernel', 'serial-host', 'serial-cpu'].includes(m.id),
  )
    .map((m) => {
      const p = pairedRatios(r, m.id);
      return p
        ? `${m.label.replace(/ \(.*$/, '')}: ${fmtRatio(p.median, m.better)} (${p.min.toFixed(2)}–${p.max.toFixed(2)})`
        : '';
    })
    .filter(Boolean);
  if (paired.length)
    lines.push('', 'tsvmm ÷ QEMU within each round (median over rounds, min–max):', '', ...paired.map((x) => `- ${x}`));
  const split = (['tsvmm', 'qemu'] as const)
    .map((v) => {
      const t = threadSplit(r, v);
      return t.length ? `${v}: ${t.map(([k, x]) => `${k} ${x.toFixed(0)}`).join(', ')}` : '';
    })
    .filter(Boolean);
  const alt = r.samples.find((s) => s.alt)?.alt;
  if (alt) {
    const t = threadSplit(r, 'tsvmm', true);
    split.push(`tsvmm (${alt}): ${t.map(([k, x]) => `${k} ${x.toFixed(0)}`).join(', ')}`);
    lines.push(
      '',
      `Another build, ${alt}, in the same rounds (not in the table): it ÷ this tsvmm within each round (median, min–max):`,
      '',
      ...LINUX_METRICS.filter((m) => ['linux-userspace', 'serial-host', 'serial-cpu'].includes(m.id)).map((m) => {
        const p = pairedRatios(r, m.id, true);
        return `- ${m.label.replace(/ \(.*$/, '')}: ${p ? `${p.median.toFixed(2)}× (${p.min.toFixed(2)}–${p.max.toFixed(2)})` : '—'}`;
      }),
    );
  }
  if (split.length)
    lines.push(
      '',
      'VMM CPU per console character by thread (µs, medians; outside the guest, user + system):',
      '',
      ...split.map((x) => `- ${x}`),
    );
  if (errors.length)
    lines.push('', 'Failed launches:', '', ...errors.map((s) => `- ${s.vmm} round ${s.round + 1}: ${s.error}`));
  return lines.join('\n') + '\n';
}

// ---- running it (inside the test host) -------------------------------------------------------

function argvFor(vmm: VmmName, kernel: string, initrd: string, bdf: string, scratch: string, js = tsvmmJs): string[] {
  if (vmm === 'tsvmm') {
    const cfg = join(scratch, 'tsvmm-linux.json');
    writeFileSync(
      cfg,
      JSON.stringify({
        name: 'bench-linux',
        memory: `${MEM_MIB}M`,
        kernel: { path: kernel, format: 'linux', initrd },
        cmdline: CMDLINE,
        serial: { output: 'stdout' },
        devices: [{ type: 'vfio-pci', id: 'nvme', host: bdf }],
      }),
    );
    return [process.execPath, js, 'run', cfg];
  }
  if (vmm === 'qemu')
    return [
      QEMU,
      ...innerQemuArgs({ memMiB: MEM_MIB }),
      '-no-reboot',
      '-kernel',
      kernel,
      '-initrd',
      initrd,
      '-append',
      CMDLINE,
      '-device',
      `vfio-pci,host=${bdf}`,
    ];
  throw new Error('the null VMM boots no Linux');
}

/** A diagnostic launch (not counted): tsvmm under `node --cpu-prof`, or either VMM under `strace -f -c`. */
type Profile = { kind: 'cpu-prof' | 'strace'; dir: string };

function profiled(argv: string[], vmm: VmmName, p: Profile): string[] {
  if (p.kind === 'cpu-prof')
    return vmm === 'tsvmm' ? [argv[0]!, '--cpu-prof', `--cpu-prof-dir=${p.dir}`, ...argv.slice(1)] : argv;
  return ['strace', '-f', '-qq', '-c', '-o', join(p.dir, `strace-c-${vmm}.txt`), ...argv];
}

async function once(
  vmm: VmmName,
  round: number,
  o: { kernel: string; initrd: string; bdf: string; scratch: string; chars: number; nvmeSha: string },
  profile?: Profile,
  alt?: string,
): Promise<LinuxSample> {
  const plain = argvFor(vmm, o.kernel, o.initrd, o.bdf, o.scratch, alt);
  const argv = profile ? profiled(plain, vmm, profile) : plain;
  const lines: SerialLine[] = [];
  const payloadLines = o.chars / 64;
  let payloadSeen = 0,
    payloadBytes = 0;
  let snapA: Snapshot | undefined, snapB: Snapshot | undefined;
  const t0 = performance.now();
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
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
      if (text === PAYLOAD_LINE) {
        payloadSeen++;
        // Counters over the same span as the host's timing: first payload line → last one.
        if (profile) continue; // the wrapper's pid is not the VMM's
        if (payloadSeen === 1) snapA = safeSnapshot(child.pid!);
        else {
          payloadBytes += raw.length;
          if (payloadSeen === payloadLines) snapB = safeSnapshot(child.pid!);
        }
      }
    }
  });
  child.stderr.on('data', (b: Buffer) => {
    stderr += b.toString();
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), 240_000);
  const code = await new Promise<number | null>((res) => {
    child.on('error', (e) => {
      stderr += `spawn: ${e.message}`;
      res(null);
    });
    child.on('close', (c) => res(c));
  });
  clearTimeout(timer);
  const p = parseRun(lines, o.chars);
  const s: LinuxSample = {
    vmm,
    ...(alt ? { alt } : {}),
    round,
    exitCode: code,
    userspaceMs: p.userspaceMs,
    guestUptimeMs: p.guestUptimeMs,
    serialHostUsPerChar: p.serialHostUsPerChar,
    serialGuestUsPerChar: p.serialGuestUsPerChar,
    uart: p.uart,
    nvmeOk: p.nvmeSha === o.nvmeSha,
    ...(snapA && snapB && payloadBytes ? perChar(snapA, snapB, payloadBytes, child.pid!) : {}),
  };
  const problems = [...p.problems];
  if (!s.nvmeOk) problems.push(`nvme read ${p.nvmeSha ?? 'nothing'}, want ${o.nvmeSha}`);
  if (code !== 0) problems.push(`exit ${code}: ${stderr.trim().split('\n').slice(-3).join(' | ')}`);
  if (problems.length)
    s.error = `${problems.join('; ')}; last lines: ${lines
      .slice(-3)
      .map((l) => l.text)
      .join(' | ')}`;
  return s;
}

function safeSnapshot(pid: number): Snapshot | undefined {
  try {
    return snapshot(pid);
  } catch {
    return undefined;
  }
}

export async function runLinuxBench(o: {
  rounds: number;
  chars: number;
  warmup: boolean;
  /** After the rounds, not counted: tsvmm under --cpu-prof and both under strace -c, output into this dir. */
  profileDir?: string;
  log: (s: string) => void;
  /** Called after each round (results so far survive a test host that runs out of time). */
  save?: (r: LinuxResults) => void;
}): Promise<LinuxResults> {
  const run = process.env.TSVMM_TESTHOST_RUN_DIR;
  if (process.env.TSVMM_TESTHOST !== '1' || !run)
    throw new Error('run inside the test host (bench/main.ts --linux-only)');
  process.env.TSVMM_CACHE_DIR ??= dirname(dirname(run));
  const k = cachedDebianKernel();
  if (!k?.guestModules) throw new Error('no cached Debian kernel with guest-modules/ (tsvmm testhost build-kernel)');
  const devices = JSON.parse(process.env.TSVMM_TESTHOST_DEVICES ?? '{}') as Record<string, { bdf: string }>;
  if (!devices.nvme) throw new Error('no nvme in the test host (--devices nvme)');
  await ensureDebugfs();
  const scratch = mkdtempSync(join(tmpdir(), 'tsvmm-bench-linux-'));
  // Both read the same two files from the test host's tmpfs (not over 9p).
  const kernel = join(scratch, 'vmlinuz'),
    initrd = join(scratch, 'initrd.cpio');
  copyFileSync(k.image, kernel);
  writeFileSync(initrd, buildBenchInitrd(o.chars, k.guestModules));
  const nvmeSha = createHash('sha256').update(nvmePattern().subarray(0, NVME_CHECK_BYTES)).digest('hex');
  const qemu = /version [^\s]+/.exec(
    await new Promise<string>((res) => {
      let out = '';
      const c = spawn(QEMU, ['--version']);
      c.stdout.on('data', (b: Buffer) => (out += b.toString()));
      c.on('close', () => res(out));
      c.on('error', () => res(''));
    }),
  )?.[0];
  const r: LinuxResults = {
    date: new Date().toISOString(),
    where: `inside the test host (nested KVM under QEMU TCG, ${cpus().length} vCPU, ${Math.round(totalmem() / 2 ** 20)} MiB, Linux ${release()})`,
    kernel: k.version,
    qemu: `QEMU ${qemu ?? '?'}`,
    chars: o.chars,
    memMiB: MEM_MIB,
    rounds: 0,
    warmup: o.warmup,
    samples: [],
  };
  // TSVMM_BENCH_LINUX_ALT=<other build>/dist/bin/tsvmm.cjs: that build too, in the same rounds (a before/after).
  const altJs = process.env.TSVMM_BENCH_LINUX_ALT;
  const vmms: { vmm: VmmName; alt?: string }[] = [
    { vmm: 'tsvmm' },
    { vmm: 'qemu' },
    ...(altJs ? [{ vmm: 'tsvmm' as const, alt: altJs }] : []),
  ];
  const name = (v: { vmm: VmmName; alt?: string }) => (v.alt ? 'tsvmm-alt' : v.vmm);
  const args = { kernel, initrd, bdf: devices.nvme.bdf, scratch, chars: o.chars, nvmeSha };
  const fmt = (s: LinuxSample) =>
    `userspace ${s.userspaceMs?.toFixed(0)} ms (guest uptime ${s.guestUptimeMs?.toFixed(0)}), serial ${s.serialHostUsPerChar?.toFixed(0)} µs/char host, ${s.serialGuestUsPerChar?.toFixed(0)} guest, ${s.ioExitsPerChar?.toFixed(2)} io exits/char, cpu ${s.cpuUsPerChar?.toFixed(0)} µs/char${s.error ? ` ERROR ${s.error}` : ''}`;
  try {
    // Warm-up, not counted: the first launch reads node's modules, QEMU and the firmware over 9p.
    if (o.warmup)
      for (const v of vmms) {
        const w = await once(v.vmm, -1, args, undefined, v.alt);
        o.log(`linux warm-up ${name(v)}: ${fmt(w)}`);
      }
    for (let i = 0; i < o.rounds; i++) {
      for (const v of vmms.map((_, j) => vmms[(j + i) % vmms.length]!)) {
        const s = await once(v.vmm, i, args, undefined, v.alt);
        r.samples.push(s);
        o.log(`linux round ${i + 1}/${o.rounds} ${name(v)}: ${fmt(s)}`);
      }
      r.rounds = i + 1;
      o.save?.(r);
    }
    if (o.profileDir) {
      mkdirSync(o.profileDir, { recursive: true });
      for (const [v, kind] of [
        ['tsvmm', 'cpu-prof'],
        ['tsvmm', 'strace'],
        ['qemu', 'strace'],
      ] as const) {
        const s = await once(v, -1, args, { kind, dir: o.profileDir });
        o.log(`linux profile ${v} ${kind}: ${fmt(s)}`);
      }
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  return r;
}

async function main(): Promise<void> {
  const a = process.argv.slice(2);
  const o = { rounds: 3, chars: 4096, warmup: true, out: '', profileDir: undefined as string | undefined };
  for (let i = 0; i < a.length; i++) {
    if (a[i] === '--rounds') o.rounds = Number(a[++i]);
    else if (a[i] === '--chars') o.chars = Number(a[++i]);
    else if (a[i] === '--no-warmup') o.warmup = false;
    else if (a[i] === '--profile') o.profileDir = join(process.env.TSVMM_TESTHOST_RUN_DIR ?? tmpdir(), 'linux-profile');
    else if (a[i] === '--out') o.out = a[++i]!;
    else throw new Error(`bench/linux: unknown argument ${a[i]}`);
  }
  benchScript(o.chars); // checks --chars before booting anything
  const out = o.out || join(process.env.TSVMM_TESTHOST_RUN_DIR ?? tmpdir(), 'bench-linux.json');
  const save = (r: LinuxResults) => writeFileSync(out, JSON.stringify(r, null, 1) + '\n');
  const r = await runLinuxBench({ ...o, log: (s) => process.stderr.write(`${s}\n`), save });
  save(r);
  process.stdout.write(renderLinux(r));
}

if (process.argv[1] && import.meta.url === `file://${process.argv[1]}`) {
  main().catch((e) => {
    process.stderr.write(`bench linux: ${(e as Error).stack}\n`);
    process.exitCode = 1;
  });
}
