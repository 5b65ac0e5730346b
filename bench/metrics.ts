// What the benchmark measures (one MetricDef per table row), the raw results the runner writes,
// and how rows are gathered from them. The whyWorse notes come from profiles (see
// docs/benchmarks.md); they are printed only for rows where the run shows tsvmm behind QEMU.
import { summarize, type MetricDef, type MetricResult, type Summary, type VmmName } from './stats.js';

export interface LaunchRecord {
  kind: 'main' | 'dma';
  vmm: VmmName;
  memMiB: number;
  round?: number;
  exitCode?: number | null;
  /** Metric id → value measured in this launch. */
  values: Record<string, number>;
  info: Record<string, unknown>;
  error?: string;
  log?: { serial: string[]; stderr: string };
}

export interface BenchResults {
  date: string;
  host: {
    kernel: string;
    cpu: string;
    cpus: number;
    memMiB: number;
    tscKhz: number;
    qemu: string;
    node: string;
    thp?: string;
  };
  config: { rounds: number; dmaRounds: number; phaseMs: number; dmaSizes: number[]; guestMemMiB: number };
  roundsDone: number;
  dmaRoundsDone: number;
  launches: LaunchRecord[];
  /** `node -e 0`, spawn to exit (ms), a few times. */
  nodeStartMs?: number[];
  seconds?: number;
}

const size = (mib: number) => (mib >= 1024 ? `${mib / 1024} GiB` : `${mib} MiB`);

const NULL_ONE_THREAD =
  'the null VMM has a single thread, the vCPU thread itself; an interrupt delivered by irqfd never makes it leave KVM_RUN, so there is no VMM thread to wake.';

export function METRICS(dmaSizes: number[]): MetricDef[] {
  return [
    {
      id: 'launch',
      label: 'launch → first serial byte (edu assigned, 256 MiB)',
      unit: 'ms',
      better: 'lower',
      digits: 0,
      whyWorse:
        "tsvmm is a Node.js program: a launch is Node's own bootstrap (`node -e 0`, below) and then tsvmm's " +
        'JavaScript, one bundled file compiled with a V8 code cache (docs/startup.md): no module resolution over ' +
        'the 9p root. A --cpu-prof of an edu launch here puts the rest in the MAP_DMA of the 256 MiB (its row), ' +
        "opening the VFIO device (the kernel's VFIO_GROUP_GET_DEVICE_FD), the device's set-up (config space, BARs, " +
        'interrupts) and compiling the functions only a VM runs (the build-time code cache covers module loading and ' +
        "the config checks, not the Machine, which needs KVM). In this host the row swings with the shared machine's " +
        'load (min–max): an interleaved run of 10 launches each on 2026-11-27 had tsvmm at 0.90× QEMU. Fix: fewer ' +
        'syscalls at device set-up (config space in one read), and a code cache that covers the machine.',
    },
    {
      id: 'pio',
      label: 'trapped port-I/O round trips (inb 0x3ff)',
      unit: '1/s',
      better: 'higher',
      digits: 0,
      whyWorse:
        'vCPU 0 runs KVM_RUN on the device thread; a read of a published register (core/kvm/register-file.ts) is ' +
        'answered in native code without entering JavaScript, every other exit in JavaScript. In this host (nested ' +
        'KVM under TCG) every page the VMM touches after a KVM_RUN costs a TLB refill (QEMU flushes its software TLB ' +
        'at each emulated VMRUN and #VMEXIT), 0.3–0.6 µs per page (bench/results/vcpu0.md): an exit that reaches ' +
        'JavaScript (an unpublished port, MMIO, a write) touches a few hundred. The native answer measured 1.39–1.48× ' +
        'QEMU with edu assigned (vcpu0.md runs D, E); a loss here means the row ran exits the native path does not take.',
    },
    {
      id: 'msi',
      label: 'MSI interrupts delivered (edu raise → handler → ack)',
      unit: '1/s',
      better: 'higher',
      digits: 0,
      whyWorse:
        "no VMM code runs on this path: edu's MSI goes VFIO eventfd → KVM irqfd → guest, and tsvmm's main thread " +
        "does not wake (next row). The one structural difference is guest RAM: tsvmm's is a memfd, which this host " +
        "(shmem_enabled=never) backs with 4 KiB pages, so KVM's nested page tables map it with 4 KiB entries where " +
        'anonymous RAM gets 2 MiB ones (KVM pages_4k/pages_2m in latest.json). The null VMM run on a memfd is the control ' +
        'for that. If it shows the effect, the fix is huge pages for the memfd (MFD_HUGETLB, or shmem THP: ' +
        "shmem_enabled=advise plus MADV_HUGEPAGE); otherwise there is nothing to fix in tsvmm's interrupt path.",
    },
    {
      id: 'wakeups',
      label: 'VMM main-thread wake-ups per MSI',
      unit: 'per irq',
      better: 'lower',
      digits: 3,
      na: { null: NULL_ONE_THREAD },
      whyWorse:
        "tsvmm's main thread is vCPU 0's: what it counts is that thread's preemption by other processes on this " +
        "host's single CPU (the null VMM, whose only thread is its vCPU, counts about as many), not wake-ups: MSIs go " +
        'VFIO eventfd → KVM irqfd, and the loop watcher no longer kicks a vCPU that runs without exits (KVM signal ' +
        'exits per MSI: 0, bench/results/vcpu0.md). Fix: vCPU 0 on a thread of its own.',
    },
    {
      id: 'barExits',
      label: 'VMM exits per 10⁶ reads of a mapped BAR page',
      unit: 'exits',
      better: 'lower',
      digits: 1,
      whyWorse:
        'BAR0 is not (entirely) mapped into the guest: some reads exit to userspace. Fix: check the BAR memslot.',
    },
    {
      id: 'barRate',
      label: 'reads of a mapped BAR page (no VMM involved)',
      unit: '1/s',
      better: 'higher',
      digits: 0,
      whyWorse:
        "no VMM code runs on this path: the guest reads the device through KVM's nested page tables, with almost no " +
        "exits. As for MSI, the null VMM on a memfd is the control for the RAM backing; otherwise a difference is this host's " +
        'noise (TCG on a shared 2-CPU machine).',
    },
    ...dmaSizes.map(
      (mib): MetricDef => ({
        id: `dmaMs${mib}`,
        label: `VFIO_IOMMU_MAP_DMA time for ${size(mib)} of guest RAM (tsvmm: + its prefault)`,
        unit: 'ms',
        better: 'lower',
        digits: 0,
        whyWorse:
          'making RAM DMA-ready is faulting it in and pinning it: tsvmm prefaults it (MADV_POPULATE_WRITE on worker threads, ' +
          'one per host core) and then pins it with one MAP_DMA per RAM section; QEMU and the null VMM fault and pin in the MAP_DMA. ' +
          'With one host core the prefault cannot overlap, so it only adds its own overhead; per backing: bench/results/memory.md.',
      }),
    ),
    ...dmaSizes.map(
      (mib): MetricDef => ({
        id: `dmaCalls${mib}`,
        label: `VFIO_IOMMU_MAP_DMA calls for ${size(mib)} of guest RAM`,
        unit: 'calls',
        better: 'lower',
        digits: 0,
        whyWorse: 'more RAM sections than QEMU: check the flat view (holes split RAM into sections).',
      }),
    ),
    {
      id: 'private',
      label: 'VMM private memory beyond guest RAM, anonymous + shmem (256 MiB guest, all pinned)',
      unit: 'MiB',
      better: 'lower',
      digits: 1,
      whyWorse:
        'tsvmm is a Node.js process: its private memory is the V8 heap and code of its isolate, the vCPU ' +
        "workers' isolates and the libuv/V8 thread stacks. Fix: a smaller heap (--max-semi-space-size), fewer isolates.",
    },
    {
      id: 'pss',
      label: 'VMM PSS beyond guest RAM (256 MiB guest, all pinned)',
      unit: 'MiB',
      better: 'lower',
      digits: 1,
      whyWorse:
        'PSS adds the share of the node binary and libraries this process maps (shared with every other node ' +
        'process on the host). Fix: the private part above, and a node built with small ICU.',
    },
  ];
}

type ThreadUse = Record<
  string,
  { switches: number; cpuTicks: number; userTicks: number; systemTicks: number; guestTicks: number }
>;
const med = (xs: number[]) => {
  const v = [...xs].sort((a, b) => a - b);
  return v.length ? (v.length % 2 ? v[v.length >> 1]! : (v[(v.length >> 1) - 1]! + v[v.length >> 1]!) / 2) : NaN;
};

/** Evidence from this run's own counters, appended to the notes (USER_HZ = 100: a tick is 10 ms). */
export function evidence(r: BenchResults): Record<string, string> {
  const out: Record<string, string> = {};
  const pio = (vmm: VmmName) => {
    const per = r.launches
      .filter((l) => l.kind === 'main' && l.vmm === vmm && l.info.pioWindow)
      .map((l) => {
        const w = l.info.pioWindow as { roundTrips: number; threads: ThreadUse; kvm?: Record<string, number> };
        const ts = Object.entries(w.threads).sort((a, b) => Number(a[0].split(' ')[0]) - Number(b[0].split(' ')[0]));
        const main = ts[0]![1];
        const vcpu = ts.reduce((x, y) => (y[1].guestTicks > x[1].guestTicks ? y : x))[1];
        // Every port-I/O exit in the window (the loop's and the serial output of its "done" line) is a round trip.
        const n = w.kvm?.io_exits || w.roundTrips;
        const us = (t: number) => (t * 1e4) / n; // ticks of 10 ms → µs per round trip
        return {
          mainSw: main.switches / n,
          vcpuSw: vcpu.switches / n,
          mainUser: us(main.userTicks ?? NaN),
          mainSys: us(main.systemTicks ?? NaN),
          vcpuUser: us(vcpu.userTicks ?? NaN),
          vcpuSys: us(vcpu.systemTicks ?? NaN),
        };
      });
    if (!per.length) return undefined;
    const m = (k: keyof (typeof per)[0]) => med(per.map((p) => p[k]));
    return {
      mainSw: m('mainSw'),
      vcpuSw: m('vcpuSw'),
      mainUser: m('mainUser'),
      mainSys: m('mainSys'),
      vcpuUser: m('vcpuUser'),
      vcpuSys: m('vcpuSys'),
    };
  };
  const t = pio('tsvmm'),
    q = pio('qemu');
  if (t && q) {
    const f = (x: number) => x.toFixed(2),
      us = (x: number) => x.toFixed(0);
    out.pio =
      `Measured in this run, per port-I/O exit (medians; /proc counters of each thread over the loop, divided by KVM's io_exits; CPU outside the guest, user + kernel): ` +
      `tsvmm's main thread ${f(t.mainSw)} context switches, ${us(t.mainUser)} + ${us(t.mainSys)} µs; its vCPU thread ${f(t.vcpuSw)} switches, ` +
      `${us(t.vcpuUser)} + ${us(t.vcpuSys)} µs; QEMU's vCPU thread ${f(q.vcpuSw)} switches, ${us(q.vcpuUser)} + ${us(q.vcpuSys)} µs, its main thread ${f(q.mainSw)} switches.`;
  }
  // Guest-side rates: the null VMM on anonymous RAM vs on a memfd vs tsvmm (memfd), same rounds.
  const rate = (id: string, pick: (l: LaunchRecord) => boolean) =>
    med(
      r.launches
        .filter((l) => l.kind === 'main' && pick(l))
        .map((l) => l.values[id]!)
        .filter((x) => Number.isFinite(x)),
    );
  for (const id of ['msi', 'barRate']) {
    const anon = rate(id, (l) => l.vmm === 'null' && l.info.memfd !== true),
      mfd = rate(id, (l) => l.vmm === 'null' && l.info.memfd === true);
    const ts = rate(id, (l) => l.vmm === 'tsvmm'),
      qm = rate(id, (l) => l.vmm === 'qemu');
    if ([anon, mfd, ts, qm].every(Number.isFinite)) {
      const range = (vmm: VmmName) => {
        const v = r.launches
          .filter((l) => l.kind === 'main' && l.vmm === vmm && l.info.memfd !== true)
          .map((l) => l.values[id]!)
          .filter(Number.isFinite);
        return [Math.min(...v), Math.max(...v)] as const;
      };
      const [t0, t1] = range('tsvmm'),
        [q0, q1] = range('qemu');
      const overlap = t1 >= q0 && q1 >= t0;
      const memfdExplains = mfd / anon < 0.95 && ts / anon < 0.95;
      const verdict = memfdExplains
        ? "the memfd backing alone slows the null VMM too, so it accounts for (part of) tsvmm's gap."
        : `the memfd backing does not slow the null VMM in this run, so it does not explain a gap${overlap ? `; tsvmm's and QEMU's ranges overlap (${t0.toFixed(0)}–${t1.toFixed(0)} and ${q0.toFixed(0)}–${q1.toFixed(0)}): run-to-run noise of this host.` : '.'}`;
      out[id] =
        `Measured in this run (medians, 1/s): null VMM on anonymous RAM ${anon.toFixed(0)}, the same null VMM on a memfd ` +
        `${mfd.toFixed(0)} (${(mfd / anon).toFixed(2)}×), tsvmm ${ts.toFixed(0)} (${(ts / anon).toFixed(2)}×), QEMU ${qm.toFixed(0)} (${(qm / anon).toFixed(2)}×): ${verdict}`;
    }
  }
  // Launch: node's own start and tsvmm's MAP_DMA of the same RAM, both measured here.
  const launch = med(
    r.launches
      .filter((l) => l.kind === 'main' && l.vmm === 'tsvmm')
      .map((l) => l.values.launch!)
      .filter(Number.isFinite),
  );
  const dma = med(
    r.launches
      .filter((l) => l.kind === 'dma' && l.vmm === 'tsvmm' && l.memMiB === r.config.guestMemMiB)
      .map((l) => l.values[`dmaMs${l.memMiB}`]!)
      .filter(Number.isFinite),
  );
  if (r.nodeStartMs?.length && Number.isFinite(launch)) {
    out.launch =
      `Measured in this run (medians): tsvmm's launch ${launch.toFixed(0)} ms, of which \`node -e 0\` (start and exit) ` +
      `${med(r.nodeStartMs).toFixed(0)} ms${Number.isFinite(dma) ? ` and the MAP_DMA of its ${r.config.guestMemMiB} MiB ${dma.toFixed(0)} ms (DMA row)` : ''}.`;
  }
  // Resident memory by kind (/proc/<pid>/status at the end of the MSI window).
  const rss = (vmm: VmmName) => {
    const xs = r.launches
      .filter((l) => l.kind === 'main' && l.vmm === vmm && l.info.memfd !== true && l.info.rss)
      .map((l) => l.info.rss as Record<string, number>);
    if (!xs.length) return undefined;
    const m = (k: string) => med(xs.map((x) => x[k]!)) / 1024;
    return `anonymous ${m('RssAnon').toFixed(1)} MiB, file-backed ${m('RssFile').toFixed(1)} MiB, shmem ${m('RssShmem').toFixed(1)} MiB`;
  };
  const rt = rss('tsvmm'),
    rq = rss('qemu');
  if (rt && rq)
    out.private = `Resident memory by kind in this run, guest RAM's ${r.config.guestMemMiB} MiB included (/proc/<pid>/status at the end of the MSI window): tsvmm ${rt}; QEMU ${rq}.`;

  const memfd = r.launches.filter((l) => l.kind === 'dma' && l.info.memfd === true && l.vmm === 'null');
  if (memfd.length) {
    const mib = memfd[0]!.memMiB;
    const anon = r.launches
      .filter((l) => l.kind === 'dma' && l.vmm === 'null' && l.memMiB === mib && l.info.memfd !== true)
      .map((l) => l.values[`dmaMs${mib}`]!)
      .filter(Number.isFinite);
    const withMemfd = memfd.map((l) => l.info.memfdMapMs as number).filter(Number.isFinite);
    const ts = r.launches
      .filter((l) => l.kind === 'dma' && l.vmm === 'tsvmm' && l.memMiB === mib)
      .map((l) => l.values[`dmaMs${mib}`]!)
      .filter(Number.isFinite);
    if (anon.length && withMemfd.length && ts.length) {
      const a = med(anon),
        m = med(withMemfd),
        t = med(ts);
      out.dma =
        `Measured in this run, ${size(mib)}: the null VMM's single MAP_DMA takes ${a.toFixed(0)} ms on anonymous memory ` +
        `and ${m.toFixed(0)} ms (${(m / a).toFixed(1)}×) when its RAM is a memfd (null-vmm --memfd); tsvmm's takes ${t.toFixed(0)} ms (${(t / a).toFixed(1)}×).`;
    }
  }
  return out;
}

/** Evidence for a metric id (the DMA sentence serves every dmaMs row). */
export function evidenceFor(ev: Record<string, string>, id: string): string | undefined {
  return ev[id] ?? (id.startsWith('dmaMs') ? ev.dma : undefined);
}

/** Rows for the report: every launch's value for each metric, by VMM. */
export function collect(r: BenchResults): MetricResult[] {
  const ev = evidence(r);
  return METRICS(r.config.dmaSizes).map((def) => {
    const e = evidenceFor(ev, def.id);
    if (e && def.whyWorse) def = { ...def, whyWorse: `${def.whyWorse} ${e}` };
    const samples: Record<VmmName, number[]> = { tsvmm: [], qemu: [], null: [] };
    for (const l of r.launches) {
      if (l.info.memfd === true) continue; // diagnostics (null VMM on a memfd) are evidence, not a column
      const v = l.values[def.id];
      if (v !== undefined && Number.isFinite(v)) samples[l.vmm].push(v);
    }
    return { def, samples };
  });
}

/**
 * tsvmm ÷ QEMU of one metric within each round (main or DMA launches: the two ran back to back, under the
 * same load of the shared machine), summarised over the rounds: steadier than the ratio of medians
 * when the load drifts between rounds.
 */
export function withinRounds(r: BenchResults, id: string): Summary | undefined {
  const kind = id.startsWith('dmaMs') ? 'dma' : 'main';
  const at = (vmm: VmmName, round: number) =>
    r.launches.find((l) => l.kind === kind && l.vmm === vmm && l.round === round && l.values[id] !== undefined)?.values[
      id
    ];
  const out: number[] = [];
  for (let i = 0; i < (kind === 'dma' ? r.dmaRoundsDone : r.roundsDone); i++) {
    const t = at('tsvmm', i),
      q = at('qemu', i);
    if (t !== undefined && q !== undefined && q > 0) out.push(t / q);
  }
  return summarize(out);
}
