// tsvmm run: a VM from a config file, from QEMU/cloud-hypervisor-style flags, or both (flags
// override the file's values; --device adds devices). --print-config shows the JSON underneath.
import { closeSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import {
  ConfigError,
  checkConfig,
  readConfigFile,
  resolveConfigPaths,
  type VmConfig,
  type VfioPciConfig,
} from '../../machine/index.js';
import { projectRoot } from '../../core/paths.js';
import { parseCommand, str, UsageError } from './common.js';
import { catchSignals, onSignal, releaseSignals, TERMINATING, type TerminatingSignal } from './signals.js';

export const USAGE = `Usage: tsvmm run [config.json] [options]

Runs a VM. With no config and no --kernel, runs the built-in demo guest (prints over serial,
lists the PCI bus, exits 0). Flags override the config file's values; --device adds a device.

Options:
  --memory SIZE        guest RAM: MiB when bare (as QEMU's -m), or with a unit: 512M, 1.5G
  --cpus N             number of vCPUs
  --kernel FILE        guest image (multiboot ELF32, Linux bzImage, or raw with --kernel-format flat)
  --kernel-format F    auto (default), multiboot, linux or flat
  --initrd FILE        Linux: an initrd/initramfs to load with the kernel
  --cmdline STRING     kernel command line
  --name NAME          VM name (QMP query-name, logs)
  --device SPEC        vfio-pci,host=0000:01:00.0[,id=ID][,addr=SLOT][,backend=auto|legacy|iommufd]
                       (also sysfsdev=PATH, cdev=PATH, fd=NAME, group=N, slot=N, iommu=on|off);
                       repeatable. virtio-iommu-pci[,addr=SLOT] gives the VM a vIOMMU; devices
                       with iommu=on are behind it
  --serial MODE        stdio (COM1 on stdout, stdin as input), none, or file:PATH
  --qmp PATH           a QMP control socket (mode 0600), one client at a time (others wait their
                       turn); repeatable: each socket its own monitor; see docs/qmp.md
  --fd-socket N        take /dev/kvm and VFIO fds from a manager over fd N (tsvmm manager)
  --sandbox on|off     on (default): once set up, a seccomp filter limits the VMM to the syscalls
                       a running VM needs; one outside it stops the VMM naming it (exit 159).
                       off: no filter (to debug; see docs/sandbox.md)
  --print-config       print the resulting JSON config (paths made absolute) and exit (0 when
                       valid, 2 when not)
  -h, --help           this text

Paths given as flags are relative to the current directory; those in a config file to the file.
Exit status: the value the guest wrote to the debug-exit port (0xf4); 0 when the guest resets or
powers off (ACPI); 1 on a guest crash or VMM error; 2 on a bad config or command line; 128+N on
signal N (SIGHUP 129, SIGINT 130, SIGTERM 143), after cleaning up; 159 when the sandbox stopped
the VMM (a syscall outside its allow-list, named on stderr). A halted guest (hlt) waits for an
interrupt, as under QEMU: the VM runs until it is ended.`;

const OPTIONS = {
  memory: { type: 'string' },
  cpus: { type: 'string' },
  kernel: { type: 'string' },
  'kernel-format': { type: 'string' },
  initrd: { type: 'string' },
  cmdline: { type: 'string' },
  name: { type: 'string' },
  device: { type: 'string', multiple: true },
  serial: { type: 'string' },
  qmp: { type: 'string', multiple: true },
  'fd-socket': { type: 'string' },
  sandbox: { type: 'string' },
  'print-config': { type: 'boolean' },
} as const;

const DEMO: VmConfig = { name: 'demo', memory: '64M', kernel: { path: `${projectRoot}/guest/out/tsvmm-guest.elf` } };

const DEVICE_KEYS = ['host', 'sysfsdev', 'cdev', 'fd', 'id', 'backend', 'addr', 'slot', 'group', 'iommu'];

/** QEMU's addr: the slot in hex, optionally ".0" (function 0 only). */
function parseAddr(v: string): number {
  const m = /^(?:0x)?([0-9a-f]{1,2})(?:\.0)?$/i.exec(v);
  if (!m) throw new UsageError(`--device: addr=${v} is not a slot (e.g. addr=05 or addr=0x5.0)`, USAGE);
  return parseInt(m[1]!, 16);
}

/** "virtio-iommu-pci[,addr=SLOT]" (QEMU's spelling) → the config's top-level iommu. */
export function parseIommuDevice(spec: string): NonNullable<VmConfig['iommu']> {
  const out: NonNullable<VmConfig['iommu']> = { type: 'virtio' };
  for (const p of spec.split(',').slice(1)) {
    const i = p.indexOf('=');
    const [k, v] = i < 0 ? [p, ''] : [p.slice(0, i), p.slice(i + 1)];
    if (k !== 'addr') throw new UsageError(`--device: virtio-iommu-pci has no property '${k}' (it takes addr)`, USAGE);
    if (out.slot !== undefined) throw new UsageError(`--device: 'addr' given twice`, USAGE);
    out.slot = parseAddr(v);
  }
  return out;
}

/** -device-style "vfio-pci,host=…,id=…" → a device of the config. */
export function parseDevice(spec: string): VfioPciConfig {
  const [driver, ...props] = spec.split(',');
  if (driver !== 'vfio-pci')
    throw new UsageError(`--device: '${driver}' is not a device tsvmm has (it has vfio-pci, virtio-iommu-pci)`, USAGE);
  const d: Record<string, unknown> = { type: 'vfio-pci' };
  for (const p of props) {
    const i = p.indexOf('=');
    const [k, v] = i < 0 ? [p, ''] : [p.slice(0, i), p.slice(i + 1)];
    if (!DEVICE_KEYS.includes(k))
      throw new UsageError(`--device: vfio-pci has no property '${k}' (it takes ${DEVICE_KEYS.join(', ')})`, USAGE);
    if (k in d || (k === 'addr' && 'slot' in d) || (k === 'slot' && 'slot' in d))
      throw new UsageError(`--device: '${k}' given twice`, USAGE);
    if (k === 'addr') d.slot = parseAddr(v);
    else if (k === 'iommu') {
      // As cloud-hypervisor's iommu=on (and QEMU's on/off spellings).
      if (!['on', 'off', 'true', 'false'].includes(v))
        throw new UsageError(`--device: iommu=${v}: give iommu=on or iommu=off`, USAGE);
      d.iommu = v === 'on' || v === 'true';
    } else if (k === 'slot' || k === 'group') {
      if (!/^\d+$/.test(v)) throw new UsageError(`--device: ${k}=${v} is not a number`, USAGE);
      d[k] = Number(v);
    } else d[k] = v;
  }
  return d as unknown as VfioPciConfig;
}

const UNITS: Record<string, number> = { B: 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50, E: 2 ** 60 };

/**
 * --memory as QEMU's -m (qemu_strtosz, then the machine's 8 KiB alignment): a bare number is MiB;
 * a unit (B, K, M, G, T, P, E, either case) takes a fraction ("1.5G"), truncated to a byte; the
 * size is rounded up to a multiple of 8 KiB. Returns the config's form: a bare whole number as
 * given (MiB), else the size in the largest unit that holds it whole ("1.5G" → "1536M").
 */
export function parseMemoryFlag(s: string): number | string {
  const m = /^(\d+)(?:\.(\d*))?([BKMGTPE])?$/i.exec(s.trim());
  if (!m)
    throw new UsageError(
      `--memory ${s}: not a size (e.g. --memory 512M, --memory 1.5G, or --memory 1024 for MiB)`,
      USAGE,
    );
  if (m[2] === undefined && m[3] === undefined) return Number(m[1]);
  if (m[2] === undefined && /^[1-9]\d*[KMGT]$/.test(`${m[1]}${m[3]}`)) return `${m[1]}${m[3]!.toUpperCase()}`;
  const unit = UNITS[(m[3] ?? 'M').toUpperCase()]!;
  const bytes = Math.ceil(Math.floor(Number(`${m[1]}.${m[2] ?? ''}0`) * unit) / 8192) * 8192;
  if (bytes === 0) return 0;
  const [name, size] = (['T', 'G', 'M', 'K'] as const)
    .map((u) => [u, UNITS[u]!] as const)
    .find(([, n]) => bytes % n === 0)!;
  return `${bytes / size}${name}`;
}

/**
 * The config pointers a flag set, each with the flag as a message names it: a problem with a
 * flag's value names the flag (--memory), not the JSON pointer it became.
 */
export type FlagPointers = Map<string, string>;

/** A config problem ("/memory: …") re-addressed to the flag that set the value ("--memory: …"). */
export function flagProblem(problem: string, flags: FlagPointers): string {
  let best: string | undefined;
  for (const ptr of flags.keys())
    if ((problem.startsWith(`${ptr}:`) || problem.startsWith(`${ptr}/`)) && (!best || ptr.length > best.length))
      best = ptr;
  if (best === undefined) return problem;
  const rest = problem.slice(best.length, problem.indexOf(':', best.length));
  return `${flags.get(best)!}${rest ? ` (${rest.slice(1)})` : ''}${problem.slice(best.length + rest.length)}`;
}

/** The config file (or the demo) with the flags applied: the JSON `run` validates and runs. */
export function buildRawConfig(
  positional: string | undefined,
  v: Record<string, unknown>,
): { raw: VmConfig; source: string; baseDir: string; flags: FlagPointers } {
  let raw: VmConfig, source: string, baseDir: string;
  const flags: FlagPointers = new Map();
  const flagged = ['memory', 'cpus', 'kernel', 'kernel-format', 'initrd', 'cmdline', 'name', 'device', 'serial'].some(
    (k) => v[k] !== undefined,
  );
  if (positional !== undefined) {
    const file = readConfigFile(positional);
    const abs = file.abs;
    raw = file.raw as VmConfig;
    if (!raw || typeof raw !== 'object' || Array.isArray(raw))
      throw new ConfigError(abs, ['(top level): must be object']);
    source = flagged ? `${abs} with command-line flags` : abs;
    baseDir = dirname(abs);
  } else {
    raw = v.kernel !== undefined ? { kernel: { path: '' } } : structuredClone(DEMO);
    source =
      v.kernel !== undefined
        ? 'command-line flags'
        : flagged
          ? 'the built-in demo with command-line flags'
          : 'built-in demo';
    baseDir = process.cwd();
  }
  const cwd = (p: string) => resolve(process.cwd(), p);
  if (v.memory !== undefined) {
    raw.memory = parseMemoryFlag(v.memory as string);
    flags.set('/memory', `--memory ${String(v.memory)}`);
  }
  if (v.cpus !== undefined) {
    if (!/^\d+$/.test(v.cpus as string))
      throw new UsageError(`--cpus ${String(v.cpus)}: not a number (e.g. --cpus 2)`, USAGE);
    raw.vcpus = Number(v.cpus);
    flags.set('/vcpus', `--cpus ${String(v.cpus)}`);
  }
  if (v.kernel !== undefined || v['kernel-format'] !== undefined || v.initrd !== undefined) {
    raw.kernel = { ...(raw.kernel ?? {}) } as VmConfig['kernel'];
    if (v.kernel !== undefined) raw.kernel.path = cwd(v.kernel as string);
    if (v['kernel-format'] !== undefined) raw.kernel.format = v['kernel-format'] as VmConfig['kernel']['format'];
    if (v.initrd !== undefined) raw.kernel.initrd = cwd(v.initrd as string);
    if (v.kernel !== undefined) flags.set('/kernel/path', '--kernel');
    if (v['kernel-format'] !== undefined) flags.set('/kernel/format', '--kernel-format');
    if (v.initrd !== undefined) flags.set('/kernel/initrd', '--initrd');
  }
  if (v.cmdline !== undefined) {
    raw.cmdline = v.cmdline as string;
    flags.set('/cmdline', '--cmdline');
  }
  if (v.name !== undefined) {
    raw.name = v.name as string;
    flags.set('/name', '--name');
  }
  for (const spec of (v.device as string[] | undefined) ?? []) {
    if (spec.split(',')[0] === 'virtio-iommu-pci') {
      if (flags.has('/iommu')) throw new UsageError(`--device: one virtio-iommu-pci at most`, USAGE);
      raw.iommu = parseIommuDevice(spec);
      flags.set('/iommu', `--device ${spec}`);
      continue;
    }
    const d = parseDevice(spec);
    if (d.sysfsdev !== undefined) d.sysfsdev = cwd(d.sysfsdev);
    raw.devices = [...(raw.devices ?? []), d];
    flags.set(`/devices/${raw.devices.length - 1}`, `--device ${spec}`);
  }
  if (v.serial !== undefined) {
    const s = v.serial as string;
    if (s === 'stdio') raw.serial = { output: 'stdout', input: 'stdin' };
    else if (s === 'none' || s === 'null') raw.serial = { output: 'none' };
    else if (s.startsWith('file:') && s.length > 5) raw.serial = { output: 'file', path: cwd(s.slice(5)) };
    else throw new UsageError(`--serial ${s}: expected stdio, none or file:PATH`, USAGE);
    flags.set('/serial', '--serial');
  }
  return { raw, source, baseDir, flags };
}

/** checkConfig, with problems in values that flags set named by the flag. */
function checkWithFlags(raw: VmConfig, source: string, baseDir: string, flags: FlagPointers) {
  try {
    return checkConfig(raw, source, baseDir);
  } catch (e) {
    if (!(e instanceof ConfigError) || !flags.size) throw e;
    throw new ConfigError(
      e.source,
      e.problems.map((p) => flagProblem(p, flags)),
    );
  }
}

/** --qmp's sockets, absolute; one path twice would have the second replace the first's socket. */
export function qmpSockets(given: string[] | undefined): string[] {
  const paths = (given ?? []).map((p) => resolve(p));
  for (const [i, p] of paths.entries())
    if (paths.indexOf(p) !== i) throw new UsageError(`--qmp ${given![i]}: that socket is given twice`, USAGE);
  return paths;
}

export async function main(args: string[]): Promise<number> {
  const p = parseCommand(args, OPTIONS, USAGE, { min: 0, max: 1, what: 'config file' });
  if (!p) return 0;
  const v = p.values;
  const qmpPaths = qmpSockets(v.qmp as string[] | undefined);
  const { raw, source, baseDir, flags } = buildRawConfig(p.positionals[0], v);
  if (v['print-config']) {
    process.stdout.write(JSON.stringify(resolveConfigPaths(raw, baseDir), null, 2) + '\n');
    checkWithFlags(structuredClone(raw), source, baseDir, flags); // exit 2 (with the problems) when invalid
    return 0;
  }
  const sandbox = str(v, 'sandbox') ?? 'on';
  if (sandbox !== 'on' && sandbox !== 'off') throw new UsageError(`--sandbox ${sandbox}: expected on or off`, USAGE);
  // Every terminating signal ends the VM cleanly (vCPUs stopped, devices released, the QMP socket
  // file removed), also one that arrives while the VM is still being set up.
  let machine: import('../../machine/index.js').MachineControl | undefined;
  let early: TerminatingSignal | undefined;
  catchSignals(); // the dispatcher did already (a no-op then)
  early = onSignal((sig) => {
    if (machine) machine.exit(TERMINATING[sig], `interrupted (${sig})`, 'host-signal');
    else early ??= sig;
  });
  let qmp;
  try {
    const config = checkWithFlags(raw, source, baseDir, flags);
    let passedFds;
    const fdSocket = str(v, 'fd-socket');
    if (fdSocket !== undefined) {
      const sock = Number(fdSocket);
      if (!/^\d+$/.test(fdSocket)) throw new UsageError('--fd-socket takes an fd number', USAGE);
      const { receivePassedFds } = await import('../../core/fdpass.js');
      try {
        passedFds = receivePassedFds(sock);
      } finally {
        closeSync(sock);
      }
    }
    const { createMachine } = await import('../../machine/index.js');
    machine = await createMachine(config, passedFds ? { passedFds } : {});
    if (qmpPaths.length && !early) {
      const { machineQmp } = await import('../../frontend/qmp/commands.js');
      qmp = machineQmp(machine, qmpPaths);
      await qmp.listen();
    }
    if (early) {
      process.stderr.write(`tsvmm: interrupted (${early}) while starting\n`);
      return TERMINATING[early];
    }
    const { shutdownEvent } = await import('../../frontend/commands.js');
    // Set-up is done (devices opened, sockets listening): from here the process makes only the
    // syscalls of a running VMM (core/sandbox/policy.ts).
    if (sandbox === 'on') (await import('../../core/sandbox/index.js')).enterSandbox();
    const r = await machine.run();
    const shutdown = shutdownEvent(r);
    if (shutdown) qmp?.emit('SHUTDOWN', shutdown);
    if (!/debug-exit/.test(r.reason)) process.stderr.write(`tsvmm: ${r.reason}\n`);
    return r.status;
  } finally {
    releaseSignals();
    await qmp?.close();
    machine?.close();
  }
}
