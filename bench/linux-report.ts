// The Linux rows (bench/linux.ts runs them), pure: a sample's per-character costs from two
// snapshots, each metric from the samples, the paired ratios, the VMM's threads, the results page.
import {
  fmtRatio,
  renderMarkdown,
  summarize,
  type MetricDef,
  type MetricResult,
  type Summary,
  type VmmName,
} from './stats.js';
import type { LinuxResults, LinuxSample } from './linux.js';
import type { Snapshot } from './vmm.js';

export const MEM_MIB = 256;
export const CMDLINE = 'console=ttyS0 quiet';

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
// strace -c) in the run of 2026-11-27; keyed by metric id.
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
