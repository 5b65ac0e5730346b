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
import type { VmmName } from './stats.js';
import { ensureDebugfs, QEMU, trySnapshot, tsvmmJs, type Snapshot } from './vmm.js';

import { CMDLINE, MEM_MIB, perChar, renderLinux } from './linux-report.js';
import { runIfMain } from './entry.js';
export { CMDLINE, MEM_MIB, perChar };
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
  return withMarkerInit(buildInitramfs({ script: benchScript(chars), modulesDir }));
}

/**
 * An initramfs with the marker /init appended as a second newc archive (the kernel unpacks both,
 * later names replace earlier ones): it prints the marker line, then runs tsvmm's own /init.
 */
export function withMarkerInit(base: Uint8Array): Uint8Array {
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

// The rows and the page they make: bench/linux-report.ts.
export { LINUX_METRICS, WHY_WORSE, linuxMetrics, pairedRatios, threadSplit, renderLinux } from './linux-report.js';

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
        if (payloadSeen === 1) snapA = trySnapshot(child.pid!);
        else {
          payloadBytes += raw.length;
          if (payloadSeen === payloadLines) snapB = trySnapshot(child.pid!);
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
  const devices = JSON.parse(process.env.TSVMM_TESTHOST_DEVICES ?? '{}') as Record<string, { bdf: string }>;
  if (!devices.nvme) throw new Error('no nvme in the test host (--devices nvme)');
  await ensureDebugfs();
  const { k, scratch, kernel, initrd } = linuxBenchSetup('linux', '--linux-only');
  writeFileSync(initrd, buildBenchInitrd(o.chars, k.guestModules));
  const nvmeSha = createHash('sha256').update(nvmePattern().subarray(0, NVME_CHECK_BYTES)).digest('hex');
  const qemu = await qemuVersion();
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

runIfMain(import.meta.url, 'linux', main);

/**
 * What every Linux-guest bench group needs inside the test host: the cached Debian kernel with its
 * guest modules, a scratch directory on the host's tmpfs with the kernel copied in (both VMMs read
 * the same files, not over 9p) and where the initrd goes. `entry`: the bench/main.ts flag that runs it.
 */
export function linuxBenchSetup(
  name: string,
  entry: string,
): { k: { image: string; guestModules: string; version: string }; scratch: string; kernel: string; initrd: string } {
  const run = process.env.TSVMM_TESTHOST_RUN_DIR;
  if (process.env.TSVMM_TESTHOST !== '1' || !run) throw new Error(`run inside the test host (bench/main.ts ${entry})`);
  process.env.TSVMM_CACHE_DIR ??= dirname(dirname(run));
  const k = cachedDebianKernel();
  if (!k?.guestModules) throw new Error('no cached Debian kernel with guest-modules/ (tsvmm testhost build-kernel)');
  const scratch = mkdtempSync(join(tmpdir(), `tsvmm-bench-${name}-`));
  const kernel = join(scratch, 'vmlinuz');
  copyFileSync(k.image, kernel);
  return {
    k: { image: k.image, guestModules: k.guestModules, version: k.version },
    scratch,
    kernel,
    initrd: join(scratch, 'initrd.cpio'),
  };
}

/** The test host's QEMU version ("version 7.2.x"), or undefined when it does not start. */
export function qemuVersion(): Promise<string | undefined> {
  return new Promise((res) => {
    let out = '';
    const c = spawn(QEMU, ['--version']);
    c.stdout.on('data', (b: Buffer) => (out += b.toString()));
    c.on('close', () => res(/version [^\s]+/.exec(out)?.[0]));
    c.on('error', () => res(undefined));
  });
}
