// Benchmark rows for guest RAM (inside the test host): for each RAM backing, the time to make
// guest RAM DMA-ready — MAP_DMA, plus tsvmm's parallel prefault before it — per GiB, for tsvmm,
// QEMU (the same backing as a memory-backend object) and the null VMM (one raw MAP_DMA on the same
// backing), all measured from outside with `strace -f -T -tt` (the ioctls and madvise calls).
//
//   node dist/bench/memory.js [--mib 1024] [--rounds 3] [--out FILE]     (run by bench/main.ts)
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { guestElf, ensureNullVmm, tsvmmJs, QEMU, straceMapDma, guestStatus } from './vmm.js';
import { innerQemuArgs } from '../testhost/qemu.js';
import { summarize, ratio, fmtNum, type Summary, type VmmName } from './stats.js';
import { runIfMain } from './entry.js';

export type Backing = 'anonymous' | 'memfd' | 'memfd-hugetlb-2M' | 'hugetlbfs-2M';
export const BACKINGS: Backing[] = ['anonymous', 'memfd', 'memfd-hugetlb-2M', 'hugetlbfs-2M'];
const VMMS: VmmName[] = ['tsvmm', 'qemu', 'null'];

export interface MemorySample {
  backing: Backing;
  vmm: VmmName;
  round: number;
  mapDmaMs?: number;
  prefaultMs?: number;
  calls?: number;
  error?: string;
}
export interface MemoryResults {
  date: string;
  mib: number;
  rounds: number;
  samples: MemorySample[];
  host: { thp: string; shmem: string };
}

function argv(vmm: VmmName, b: Backing, mib: number, bdf: string, hugeDir: string, scratch: string): string[] {
  switch (vmm) {
    case 'tsvmm': {
      const memory = {
        size: `${mib}M`,
        ...{
          anonymous: {},
          memfd: { backing: 'memfd' },
          'memfd-hugetlb-2M': { backing: 'memfd', hugepages: '2M' },
          'hugetlbfs-2M': { backing: 'hugetlbfs', path: hugeDir },
        }[b],
      };
      const cfg = join(scratch, `tsvmm-${b}.json`);
      writeFileSync(
        cfg,
        JSON.stringify({
          name: 'bench-mem',
          memory,
          kernel: { path: guestElf },
          serial: { output: 'stdout' },
          devices: [{ type: 'vfio-pci', host: bdf }],
        }),
      );
      return [process.execPath, tsvmmJs, 'run', cfg];
    }
    case 'qemu': {
      const obj = {
        anonymous: [],
        memfd: [`memory-backend-memfd,id=ram,size=${mib}M`],
        'memfd-hugetlb-2M': [`memory-backend-memfd,id=ram,size=${mib}M,hugetlb=on,hugetlbsize=2M`],
        'hugetlbfs-2M': [`memory-backend-file,id=ram,size=${mib}M,mem-path=${hugeDir},share=on`],
      }[b];
      return [
        QEMU,
        ...innerQemuArgs({ memMiB: mib, machine: `q35${obj.length ? ',memory-backend=ram' : ''}` }),
        ...obj.flatMap((o) => ['-object', o]),
        '-device',
        'isa-debug-exit,iobase=0xf4,iosize=4',
        '-device',
        `vfio-pci,host=${bdf}`,
        '-kernel',
        guestElf,
        '-append',
        '',
      ];
    }
    case 'null':
      return [
        ensureNullVmm(),
        '--kernel',
        guestElf,
        '--mem',
        String(mib),
        '--device',
        bdf,
        ...{
          anonymous: [],
          memfd: ['--memfd'],
          'memfd-hugetlb-2M': ['--memfd', '--hugetlb'],
          'hugetlbfs-2M': ['--hugetlbfs', hugeDir],
        }[b],
      ];
  }
}

/**
 * Wall time from the first MADV_POPULATE_WRITE's start to the last one's end, in an `strace -f -tt -T`
 * log (ms). Calls on parallel threads are split by strace into "<unfinished ...>" and "<... madvise
 * resumed>" lines; the latter's timestamp is the call's end.
 */
export function stracePrefaultSpan(log: string): number {
  let first = Infinity,
    last = -Infinity;
  const ts = (h: string, m: string, sec: string) => (Number(h) * 3600 + Number(m) * 60 + Number(sec)) * 1000;
  const pending = new Set<string>();
  for (const l of log.split('\n')) {
    const start =
      /^(\d+ +)?(\d+):(\d+):([\d.]+) madvise\([^,]*, \d+, (?:MADV_POPULATE_WRITE|0x17|23)(\) += 0 <([\d.]+)>| <unfinished)/.exec(
        l,
      );
    if (start) {
      const t = ts(start[2]!, start[3]!, start[4]!);
      first = Math.min(first, t);
      if (start[6] !== undefined) last = Math.max(last, t + Number(start[6]) * 1000);
      else pending.add((start[1] ?? '').trim());
      continue;
    }
    const resumed = /^(\d+ +)?(\d+):(\d+):([\d.]+) <\.\.\. madvise resumed>/.exec(l);
    if (resumed && pending.delete((resumed[1] ?? '').trim()))
      last = Math.max(last, ts(resumed[2]!, resumed[3]!, resumed[4]!));
  }
  return Number.isFinite(first) && Number.isFinite(last) ? last - first : 0;
}

async function once(
  vmm: VmmName,
  b: Backing,
  mib: number,
  bdf: string,
  hugeDir: string,
  scratch: string,
  round: number,
): Promise<MemorySample> {
  const out = join(scratch, `strace-${vmm}-${b}.log`);
  const cmd = [
    'strace',
    '-f',
    '-qq',
    '-T',
    '-tt',
    '-e',
    'trace=ioctl,madvise',
    '-o',
    out,
    ...argv(vmm, b, mib, bdf, hugeDir, scratch),
  ];
  const child = spawn(cmd[0]!, cmd.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), 300_000);
  const code = await new Promise<number | null>((res) => child.on('close', res));
  clearTimeout(timer);
  const s: MemorySample = { backing: b, vmm, round };
  if (guestStatus(vmm, code) !== 0) s.error = `exit ${code}: ${stderr.trim().split('\n').slice(-2).join(' | ')}`;
  if (existsSync(out)) {
    const log = readFileSync(out, 'utf8');
    const m = straceMapDma(log);
    s.mapDmaMs = m.seconds * 1000;
    s.calls = m.calls;
    s.prefaultMs = stracePrefaultSpan(log);
    rmSync(out, { force: true });
  }
  return s;
}

export async function runMemoryBench(o: {
  mib: number;
  rounds: number;
  bdf: string;
  log: (s: string) => void;
}): Promise<MemoryResults> {
  const scratch = mkdtempSync(join(tmpdir(), 'tsvmm-bench-mem-'));
  const hugeDir = join(scratch, 'hugepages');
  mkdirSync(hugeDir);
  const nr = readFileSync('/proc/sys/vm/nr_hugepages', 'utf8').trim();
  const sys = (f: string) => {
    try {
      return readFileSync(`/sys/kernel/mm/transparent_hugepage/${f}`, 'utf8').trim();
    } catch {
      return '?';
    }
  };
  const results: MemoryResults = {
    date: new Date().toISOString(),
    mib: o.mib,
    rounds: o.rounds,
    samples: [],
    host: { thp: sys('enabled'), shmem: sys('shmem_enabled') },
  };
  try {
    writeFileSync('/proc/sys/vm/nr_hugepages', String(o.mib / 2 + 8));
    const m = spawnSync('mount', ['-t', 'hugetlbfs', '-o', 'pagesize=2M', 'none', hugeDir], { encoding: 'utf8' });
    if (m.status !== 0) throw new Error(`mount hugetlbfs: ${m.stderr}`);
    // Warm-up, not counted: the test host's first touch of its RAM under TCG is ~10× slower, and
    // would land on whichever VMM runs first.
    for (const b of BACKINGS) {
      const w = await once('null', b, o.mib, o.bdf, hugeDir, scratch, -1);
      o.log(`memory warm-up ${b}: MAP_DMA ${w.mapDmaMs?.toFixed(0)} ms${w.error ? ` ERROR ${w.error}` : ''}`);
    }
    for (let r = 0; r < o.rounds; r++) {
      for (const b of BACKINGS) {
        const order = VMMS.map((_, i) => VMMS[(i + r) % VMMS.length]!);
        for (const v of order) {
          const s = await once(v, b, o.mib, o.bdf, hugeDir, scratch, r);
          results.samples.push(s);
          o.log(
            `memory round ${r + 1}/${o.rounds} ${b} ${v}: MAP_DMA ${s.mapDmaMs?.toFixed(0)} ms (${s.calls} calls), prefault ${s.prefaultMs?.toFixed(0)} ms${s.error ? ` ERROR ${s.error}` : ''}`,
          );
        }
      }
    }
  } finally {
    spawnSync('umount', [hugeDir]);
    writeFileSync('/proc/sys/vm/nr_hugepages', nr);
    rmSync(scratch, { recursive: true, force: true });
  }
  return results;
}

/** The rows: per backing, ms per GiB to make RAM DMA-ready (tsvmm: prefault + MAP_DMA; MAP_DMA alone as well). */
export function renderMemory(r: MemoryResults): string {
  const perGiB = (x: number) => (x * 1024) / r.mib;
  const med = (b: Backing, v: VmmName, f: (s: MemorySample) => number | undefined): Summary | undefined =>
    summarize(
      r.samples
        .filter((s) => s.backing === b && s.vmm === v && !s.error)
        .map(f)
        .filter((x): x is number => x !== undefined)
        .map(perGiB),
    );
  const cell = (s: Summary | undefined) =>
    s ? `${fmtNum(s.median, 0)}${s.min !== s.max ? ` (${fmtNum(s.min, 0)}–${fmtNum(s.max, 0)})` : ''}` : 'n/a';
  const rat = (a: Summary | undefined, b: Summary | undefined) => {
    const x = ratio(a?.median, b?.median);
    return x === undefined ? '—' : `${x > 1.05 ? '**' : ''}${x.toFixed(2)}×${x > 1.05 ? '**' : ''}`;
  };
  const lines = [
    `Guest RAM made DMA-ready, ms per GiB (${r.mib} MiB guests, edu assigned; ${r.rounds} rounds, VMMs rotated; medians (min–max)). ` +
      `Test host THP: enabled ${r.host.thp}; shmem_enabled ${r.host.shmem}.`,
    '',
    '| backing | tsvmm prefault + MAP_DMA | tsvmm MAP_DMA | QEMU MAP_DMA | null VMM MAP_DMA (raw ioctl) | tsvmm ÷ QEMU | tsvmm ÷ null |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const b of BACKINGS) {
    const total = med(b, 'tsvmm', (s) => (s.mapDmaMs ?? 0) + (s.prefaultMs ?? 0));
    const q = med(b, 'qemu', (s) => s.mapDmaMs),
      n = med(b, 'null', (s) => s.mapDmaMs);
    lines.push(
      `| ${b} | ${cell(total)} | ${cell(med(b, 'tsvmm', (s) => s.mapDmaMs))} | ${cell(q)} | ${cell(n)} | ${rat(total, q)} | ${rat(total, n)} |`,
    );
  }
  lines.push(
    '',
    "Ratios compare tsvmm's prefault + MAP_DMA (all the time it spends before the guest's RAM is pinned) with the others' MAP_DMA, which faults and pins in one call. **bold**: tsvmm is slower by more than 5 %.",
  );
  const errs = r.samples.filter((s) => s.error);
  if (errs.length)
    lines.push(
      '',
      `Failed launches: ${errs.map((s) => `${s.backing} ${s.vmm} round ${s.round + 1}: ${s.error}`).join('; ')}`,
    );
  return lines.join('\n') + '\n';
}

async function main(): Promise<void> {
  const a = process.argv.slice(2);
  const get = (k: string, d: string) => {
    const i = a.indexOf(k);
    return i >= 0 ? a[i + 1]! : d;
  };
  const devices = JSON.parse(process.env.TSVMM_TESTHOST_DEVICES ?? '{}') as Record<string, { bdf: string }>;
  if (!devices.edu) throw new Error('run inside the test host with edu (bench/main.ts does)');
  const out = get('--out', join(process.env.TSVMM_TESTHOST_RUN_DIR ?? tmpdir(), 'bench-memory.json'));
  const r = await runMemoryBench({
    mib: Number(get('--mib', '1024')),
    rounds: Number(get('--rounds', '3')),
    bdf: devices.edu.bdf,
    log: (s) => process.stderr.write(`${s}\n`),
  });
  writeFileSync(out, JSON.stringify(r, null, 1) + '\n');
  process.stdout.write(renderMemory(r));
}

runIfMain(import.meta.url, 'memory', main);
