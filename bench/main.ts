// `npm run bench`: builds the null VMM, boots the test host (edu assigned to vfio-pci), runs
// dist/bench/run.js inside it, and turns the raw samples that come back through the run dir into
// bench/results/latest.{json,md}; prints the table.
//
//   node dist/bench/main.js [--rounds N] [--dma-rounds N] [--phase-ms MS] [--dma-sizes 256,1024,2048] [--budget-s S]
//   node dist/bench/main.js --render      (latest.json → latest.md again, e.g. after editing the notes)
//   node dist/bench/main.js --runloop-only [--rounds N] [--phase-ms MS]   (only the run-loop rows, bench/runloop.ts)
// The run-loop rows (no VFIO) run on this machine's /dev/kvm when it has one, else in a second
// test-host boot; they go to bench/results/runloop.{json,md}.
//   node dist/bench/main.js --memory-only [--mib N --rounds N]   (only the guest-RAM rows, bench/memory.ts)
//   node dist/bench/main.js --no-memory   (without them)
//   node dist/bench/main.js --linux-only [--rounds N --chars N]   (only the Linux rows, bench/linux.ts: a
//       Linux guest with nvme assigned, launch → userspace and serial cost per character; own test host)
//   node dist/bench/main.js --linux-only --render   (linux.json → linux.md again)
//   node dist/bench/main.js --no-linux    (without them; likewise --no-migration, --no-viommu)
//   node dist/bench/main.js --migration-only [--rounds N --mem-mib N] [--mtty]   (only the migration rows,
//       bench/migration.ts, own test host; --mtty: the mtty rows on the iommufd kernel, merged into migration.json)
//   node dist/bench/main.js --viommu-only [--rounds N --seconds S --profile]   (only the vIOMMU rows, bench/viommu.ts: nvme
//       read rates in four vIOMMU modes and boot with the virtio-iommu; own test host; --render re-renders)
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, totalmem, release } from 'node:os';
import { join } from 'node:path';
import { runInTestHost, type TestHostOptions } from '../testhost/index.js';
import { collect, evidence, evidenceFor, withinRounds, type BenchResults } from './metrics.js';
import { renderMarkdown, toRow } from './stats.js';
import { root, ensureNullVmm } from './vmm.js';
import { renderRunloop, type RunloopResults } from './runloop.js';
import { renderMemory, type MemoryResults } from './memory.js';
import { renderLinux, type LinuxResults } from './linux.js';
import { renderMigration, type MigrationResults, type MttyResults } from './migration.js';
import { renderViommu, type ViommuResults } from './viommu.js';

const TIMEOUT_S = 15 * 60 - 30;

// Built here, outside, before a test host starts: inside, the project tree is read-only.
const buildNullVmm = (): void => void ensureNullVmm();

export function hostDescription(r: BenchResults): string {
  const c = cpus();
  const outer = `${c[0]?.model ?? '?'}, ${c.length} CPUs, ${Math.round(totalmem() / 2 ** 30)} GiB, Linux ${release()}`;
  return (
    `Outer machine: ${outer} (no usable nested KVM for this: the test host runs under QEMU TCG). ` +
    `Test host: QEMU TCG q35 + intel-iommu, ${r.host.cpus} vCPU (${r.host.cpu}), ${r.host.memMiB} MiB, Linux ${r.host.kernel} with nested kvm_amd ` +
    `and edu bound to vfio-pci${r.host.thp ? ` (transparent huge pages ${r.host.thp})` : ''}; ${r.host.qemu}; node ${r.host.node}. ` +
    'Guest: the multiboot test guest (guest/src/bench.c), 1 vCPU.'
  );
}

export function report(r: BenchResults): string {
  const date = r.date.slice(0, 10);
  const rounds =
    `${r.roundsDone} rounds (launch, port I/O, MSI, BAR, memory; ${r.config.phaseMs} ms loops) and ${r.dmaRoundsDone} rounds (DMA), ` +
    'VMMs interleaved (order rotated every round)';
  const failures = r.launches.filter((l) => l.error);
  const metrics = collect(r);
  // Evidence for rows where tsvmm is not behind QEMU (those that are carry it in their note).
  const ev = evidence(r);
  const rows = metrics.map(toRow);
  const diagnostics = [
    ...new Set(
      metrics
        .filter((m, i) => !rows[i]!.worseThanQemu && evidenceFor(ev, m.def.id))
        .map((m) => `${m.def.label}: ${evidenceFor(ev, m.def.id)}`),
    ),
  ];
  const lines = [
    `Run of ${date} (${r.seconds !== undefined ? `${Math.round(r.seconds)} s inside the test host` : 'incomplete'}).`,
    '',
    hostDescription(r),
    '',
    renderMarkdown(metrics, { rounds, diagnostics }).trimEnd(),
  ];
  const paired = ['launch', 'private', 'pss', ...r.config.dmaSizes.map((m) => `dmaMs${m}`)].flatMap((id) => {
    const w = withinRounds(r, id);
    const label = metrics.find((m) => m.def.id === id)?.def.label;
    return w && label
      ? [`- ${label}: ${w.median.toFixed(2)}× (${w.min.toFixed(2)}–${w.max.toFixed(2)}, ${w.n} rounds)`]
      : [];
  });
  if (paired.length)
    lines.push(
      '',
      'tsvmm ÷ QEMU within each round (median over rounds, min–max; the two ran back to back):',
      '',
      ...paired,
    );
  if (failures.length) {
    lines.push('', `Failed launches (${failures.length}; their other values are still counted):`, '');
    for (const f of failures)
      lines.push(
        `- ${f.kind} ${f.vmm}${f.round !== undefined ? ` round ${f.round + 1}` : ''} ${f.memMiB} MiB: ${f.error}`,
      );
  }
  return lines.join('\n') + '\n';
}

/** The run-loop rows: here when this machine has /dev/kvm, else inside the test host. */
async function runloopRows(args: string[], outDir: string): Promise<number> {
  if (existsSync('/dev/kvm')) {
    const json = join(root, 'dist/bench/runloop.json');
    execFileSync(process.execPath, [join(root, 'dist/bench/runloop.js'), ...args, '--out', json], {
      stdio: ['ignore', process.stderr, 'inherit'],
    });
    const res = JSON.parse(readFileSync(json, 'utf8')) as RunloopResults;
    res.command = ['node dist/bench/main.js --runloop-only', ...args].join(' ');
    // Apart from the test host's rows (runloop.*): this machine's own KVM, whatever kind it is.
    saveResults(outDir, 'runloop-own-kvm', res, renderRunloop(res));
    return 0;
  }
  const r = await inTestHost<RunloopResults>(
    'run-loop',
    { devices: ['none'], command: ['node', 'dist/bench/runloop.js', ...args] },
    'runloop.json',
  );
  if (r.results) saveResults(outDir, 'runloop', r.results, renderRunloop(r.results));
  return r.results ? 0 : 1;
}

/** Writes bench/results/<name>.{json,md} (the .md headed by the command that made it) and prints the table. */
function saveResults(outDir: string, name: string, results: unknown, md: string): void {
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, `${name}.json`), JSON.stringify(results, null, 1) + '\n');
  const command = ['node dist/bench/main.js', ...process.argv.slice(2)].join(' ');
  writeFileSync(join(outDir, `${name}.md`), `Command: \`${command}\`\n\n${md}`);
  process.stdout.write(`\n${md}\nbench: bench/results/${name}.md, ${name}.json\n`);
}

/**
 * Runs a bench script in its own test-host boot (debian kernel) and reads the JSON it left in the run
 * dir (undefined, with the reason on stderr, when there is none). `keep` copies more out of the run
 * dir before it is removed.
 */
async function inTestHost<T>(
  what: string,
  opts: Omit<TestHostOptions, 'kernel' | 'stream' | 'keepRunDir'>,
  file: string,
  keep?: (runDir: string) => void,
): Promise<{ results?: T; exitCode: number | null }> {
  const r = await runInTestHost({
    kernel: 'debian',
    cwd: root,
    timeoutMs: TIMEOUT_S * 1000,
    stream: { stdout: process.stderr, stderr: process.stderr },
    keepRunDir: true,
    ...opts,
  });
  const runDir = r.runDir!;
  try {
    const json = join(runDir, file);
    if (!existsSync(json)) {
      process.stderr.write(
        `bench: no ${what} results (test host exit ${r.exitCode}${r.error ? `: ${r.error}` : ''})\n`,
      );
      return { exitCode: r.exitCode };
    }
    keep?.(runDir);
    return { results: JSON.parse(readFileSync(json, 'utf8')) as T, exitCode: r.exitCode };
  } finally {
    rmSync(runDir, { recursive: true, force: true });
  }
}

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  const outDir = join(root, 'bench/results');
  if (args[0] === '--runloop-only') {
    buildNullVmm();
    return runloopRows(args.slice(1), outDir);
  }
  if (args[0] === '--render') {
    // Re-renders latest.md from latest.json (after a change to the notes), without running anything.
    const latest = JSON.parse(readFileSync(join(outDir, 'latest.json'), 'utf8')) as BenchResults & { command?: string };
    const md = report(latest);
    writeFileSync(join(outDir, 'latest.md'), `Command: \`${latest.command ?? 'npm run bench'}\` (main rows)\n\n${md}`);
    process.stdout.write(md);
    return 0;
  }
  if (args[0] === '--linux-only') return linuxBench(args.slice(1), outDir);
  if (args[0] === '--migration-only') return migrationBench(args.slice(1), outDir);
  if (args[0] === '--viommu-only') return viommuBench(args.slice(1), outDir);
  buildNullVmm();
  if (args.includes('--memory-only'))
    return memoryBench(
      args.filter((a) => a !== '--memory-only'),
      outDir,
    );
  const withMemory = !args.includes('--no-memory');
  const withLinux = !args.includes('--no-linux');
  const withMigration = !args.includes('--no-migration');
  const withViommu = !args.includes('--no-viommu');
  const mainArgs = args.filter((a) => !['--no-memory', '--no-linux', '--no-migration', '--no-viommu'].includes(a));
  let code = await mainBench(mainArgs, outDir);
  if (withMemory) code = Math.max(code, await memoryBench([], outDir));
  if (withLinux) code = Math.max(code, await linuxBench([], outDir));
  if (withMigration) {
    code = Math.max(code, await migrationBench([], outDir));
    code = Math.max(code, await migrationBench(['--mtty'], outDir));
  }
  if (withViommu) code = Math.max(code, await viommuBench([], outDir));
  return code;
}

/** The Linux rows (bench/linux.ts) in their own test host, nvme bound to vfio-pci. */
async function linuxBench(args: string[], outDir: string): Promise<number> {
  const save = (results: LinuxResults) => saveResults(outDir, 'linux', results, renderLinux(results));
  if (args.includes('--render')) {
    save(JSON.parse(readFileSync(join(outDir, 'linux.json'), 'utf8')) as LinuxResults);
    return 0;
  }
  const alt = process.env.TSVMM_BENCH_LINUX_ALT;
  const r = await inTestHost<LinuxResults>(
    'Linux',
    {
      devices: ['nvme'],
      command: ['node', 'dist/bench/linux.js', ...args],
      ...(alt ? { env: { TSVMM_BENCH_LINUX_ALT: alt } } : {}),
    },
    'bench-linux.json',
    (runDir) => {
      const prof = join(runDir, 'linux-profile');
      if (!existsSync(prof)) return;
      const to = join(root, 'dist/bench/linux-profile');
      rmSync(to, { recursive: true, force: true });
      cpSync(prof, to, { recursive: true });
      process.stderr.write(`bench: profiles in ${to}\n`);
    },
  );
  if (!r.results) return 1;
  save(r.results);
  return r.exitCode === 0 ? 0 : 1;
}

/** The vIOMMU rows (bench/viommu.ts) in their own test host, nvme bound to vfio-pci. */
async function viommuBench(args: string[], outDir: string): Promise<number> {
  const command = ['node dist/bench/main.js --viommu-only', ...args].join(' ');
  const save = (results: ViommuResults) => saveResults(outDir, 'viommu', results, renderViommu(results));
  if (args.includes('--render')) {
    // Re-renders viommu.md from viommu.json (after editing its notes), headed by the command that measured it.
    const r = JSON.parse(readFileSync(join(outDir, 'viommu.json'), 'utf8')) as ViommuResults;
    writeFileSync(join(outDir, 'viommu.md'), `Command: \`${r.command ?? '?'}\`\n\n${renderViommu(r)}`);
    return 0;
  }
  const r = await inTestHost<ViommuResults>(
    'vIOMMU',
    // Eight launches a round, each with two passes of both phases: 2 rounds take about 16 minutes here.
    { devices: ['nvme'], command: ['node', 'dist/bench/viommu.js', ...args], timeoutMs: 40 * 60 * 1000 },
    'bench-viommu.json',
    (runDir) => {
      const prof = join(runDir, 'viommu-profile');
      if (!existsSync(prof)) return;
      const to = join(root, 'dist/bench/viommu-profile');
      rmSync(to, { recursive: true, force: true });
      cpSync(prof, to, { recursive: true });
      process.stderr.write(`bench: profile in ${to}\n`);
    },
  );
  if (!r.results) return 1;
  save({ ...r.results, command });
  return r.exitCode === 0 ? 0 : 1;
}

/** The guest-RAM rows (bench/memory.ts) in their own test host: 6 GiB, so 1 GiB guests on 2 MiB huge pages fit. */
async function memoryBench(args: string[], outDir: string): Promise<number> {
  const r = await inTestHost<MemoryResults>(
    'memory',
    { devices: ['edu'], memoryMiB: 6144, command: ['node', 'dist/bench/memory.js', ...args] },
    'bench-memory.json',
  );
  if (!r.results) return 1;
  saveResults(outDir, 'memory', r.results, renderMemory(r.results));
  return r.exitCode === 0 ? 0 : 1;
}

async function mainBench(args: string[], outDir: string): Promise<number> {
  const t0 = performance.now();
  const r = await runInTestHost({
    kernel: 'debian',
    cwd: root,
    devices: ['edu'],
    memoryMiB: 4096,
    timeoutMs: TIMEOUT_S * 1000,
    command: ['node', 'dist/bench/run.js', ...args],
    stream: { stdout: process.stderr, stderr: process.stderr },
    keepRunDir: true,
  });
  const wall = (performance.now() - t0) / 1000;
  const runDir = r.runDir!;
  const json = join(runDir, 'bench.json');
  try {
    if (!existsSync(json)) {
      process.stderr.write(`bench: no results (test host exit ${r.exitCode}${r.error ? `: ${r.error}` : ''})\n`);
      return 1;
    }
    const results = JSON.parse(readFileSync(json, 'utf8')) as BenchResults;
    const md = report(results);
    mkdirSync(outDir, { recursive: true });
    const rows = collect(results).map(toRow);
    const command = ['node dist/bench/main.js', ...process.argv.slice(2)].join(' ');
    writeFileSync(
      join(outDir, 'latest.json'),
      JSON.stringify({ ...results, command, wallSeconds: wall, rows }, null, 1) + '\n',
    );
    writeFileSync(join(outDir, 'latest.md'), `Command: \`${command}\` (main rows)\n\n${md}`);
    process.stdout.write(
      `\n${md}\nbench: ${Math.round(wall)} s wall (test host: ${r.timings.map((t) => `${t.name} ${t.seconds.toFixed(0)}s`).join(', ')}); ` +
        `bench/results/latest.md, latest.json\n`,
    );
    const rl = await runloopRows([], outDir);
    return r.exitCode === 0 && rl === 0 ? 0 : 1;
  } finally {
    rmSync(runDir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === `file://${process.argv[1]}`) {
  main().then(
    (c) => {
      process.exitCode = c;
    },
    (e) => {
      process.stderr.write(`bench: ${(e as Error).stack}\n`);
      process.exitCode = 1;
    },
  );
}

/** The migration rows (bench/migration.ts) in their own test host; --mtty: the mtty rows (iommufd kernel). */
async function migrationBench(args: string[], outDir: string): Promise<number> {
  // --mtty: the mtty rows (iommufd kernel), merged into the migration.json already there.
  const mtty = args.includes('--mtty');
  const r = await runInTestHost({
    kernel: mtty ? 'iommufd' : 'debian',
    cwd: root,
    timeoutMs: TIMEOUT_S * 1000,
    stream: { stdout: process.stderr, stderr: process.stderr },
    keepRunDir: true,
    devices: ['edu'],
    memoryMiB: 4096,
    command: ['node', 'dist/bench/migration.js', ...args],
  });
  const json = join(r.runDir!, 'bench-migration.json');
  const got = existsSync(json) ? (JSON.parse(readFileSync(json, 'utf8')) as unknown) : undefined;
  rmSync(r.runDir!, { recursive: true, force: true });
  if (!got) return 1;
  const res = mtty
    ? {
        ...(JSON.parse(readFileSync(join(outDir, 'migration.json'), 'utf8')) as MigrationResults),
        mtty: got as MttyResults,
      }
    : (got as MigrationResults);
  saveResults(outDir, 'migration', res, renderMigration(res));
  return r.exitCode === 0 ? 0 : 1;
}
