// tsvmm run: a VM from a config file, from QEMU/cloud-hypervisor-style flags, or both (flags
// override the file's values; --device adds devices). --print-config shows the JSON underneath.
import { closeSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { ConfigError, checkConfig, readConfigFile, type RawConfig, type VfioPciConfig } from '../../machine/index.js';
import { projectRoot } from '../../core/paths.js';
import { dropCleanFilePages } from '../../core/resident.js';
import { parseCommand, str, UsageError } from './common.js';
import { catchSignals, onSignal, releaseSignals, TERMINATING, type TerminatingSignal } from './signals.js';

export const USAGE = `Usage: tsvmm run [config.json] [options]

Runs a VM. With no config and no --kernel, runs the built-in demo guest (prints over serial,
lists the PCI bus, exits 0). Flags override the config file's values; --device adds a device.

Options:
  --memory SIZE        guest RAM: MiB when bare (as QEMU's -m), or with a unit: 512M, 1G
  --cpus N             number of vCPUs
  --kernel FILE        guest image (multiboot ELF32, Linux bzImage, or raw with --kernel-format flat)
  --kernel-format F    auto (default), multiboot, linux or flat
  --initrd FILE        Linux: an initrd/initramfs to load with the kernel
  --cmdline STRING     kernel command line
  --name NAME          VM name (QMP query-name, logs)
  --device SPEC        vfio-pci,host=0000:01:00.0[,id=ID][,addr=SLOT][,backend=auto|legacy|iommufd]
                       (also sysfsdev=PATH, cdev=PATH, fd=NAME, group=N, slot=N); repeatable
  --serial MODE        stdio (COM1 on stdout, stdin as input), none, or file:PATH
  --qmp PATH           a QMP control socket (mode 0600); see README "Control socket (QMP)"
  --fd-socket N        take /dev/kvm and VFIO fds from a manager over fd N (tsvmm manager)
  --print-config       print the resulting JSON config and exit (0 when valid, 2 when not)
  -h, --help           this text

Paths given as flags are relative to the current directory; those in a config file to the file.
Exit status: the value the guest wrote to the debug-exit port (0xf4); 0 when the guest halts,
resets or powers off (ACPI); 1 on a guest crash or VMM error; 2 on a bad config or command line;
128+N on signal N (SIGHUP 129, SIGINT 130, SIGTERM 143), after cleaning up.`;

/** When `run` unmaps its start-up pages (after the guest has run this long). */
const TRIM_AFTER_MS = 1000;

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
  qmp: { type: 'string' },
  'fd-socket': { type: 'string' },
  'print-config': { type: 'boolean' },
} as const;

const DEMO: RawConfig = { name: 'demo', memory: '64M', kernel: { path: `${projectRoot}/guest/out/tsvmm-guest.elf` } };

const DEVICE_KEYS = ['host', 'sysfsdev', 'cdev', 'fd', 'id', 'backend', 'addr', 'slot', 'group'];

/** -device-style "vfio-pci,host=…,id=…" → a device of the config. */
export function parseDevice(spec: string): VfioPciConfig {
  const [driver, ...props] = spec.split(',');
  if (driver !== 'vfio-pci')
    throw new UsageError(`--device: '${driver}' is not a device tsvmm has (it has vfio-pci)`, USAGE);
  const d: Record<string, unknown> = { type: 'vfio-pci' };
  for (const p of props) {
    const i = p.indexOf('=');
    const [k, v] = i < 0 ? [p, ''] : [p.slice(0, i), p.slice(i + 1)];
    if (!DEVICE_KEYS.includes(k))
      throw new UsageError(`--device: vfio-pci has no property '${k}' (it takes ${DEVICE_KEYS.join(', ')})`, USAGE);
    if (k in d || (k === 'addr' && 'slot' in d) || (k === 'slot' && 'slot' in d))
      throw new UsageError(`--device: '${k}' given twice`, USAGE);
    if (k === 'addr') {
      // QEMU's addr: the slot in hex, optionally ".0" (function 0 only).
      const m = /^(?:0x)?([0-9a-f]{1,2})(?:\.0)?$/i.exec(v);
      if (!m) throw new UsageError(`--device: addr=${v} is not a slot (e.g. addr=05 or addr=0x5.0)`, USAGE);
      d.slot = parseInt(m[1]!, 16);
    } else if (k === 'slot' || k === 'group') {
      if (!/^\d+$/.test(v)) throw new UsageError(`--device: ${k}=${v} is not a number`, USAGE);
      d[k] = Number(v);
    } else d[k] = v;
  }
  return d as unknown as VfioPciConfig;
}

/** The config file (or the demo) with the flags applied: the JSON `run` validates and runs. */
export function buildRawConfig(
  positional: string | undefined,
  v: Record<string, unknown>,
): { raw: RawConfig; source: string; baseDir: string } {
  let raw: RawConfig, source: string, baseDir: string;
  const flagged = ['memory', 'cpus', 'kernel', 'kernel-format', 'initrd', 'cmdline', 'name', 'device', 'serial'].some(
    (k) => v[k] !== undefined,
  );
  if (positional !== undefined) {
    const file = readConfigFile(positional);
    const abs = file.abs;
    raw = file.raw as RawConfig;
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
    const m = v.memory as string;
    raw.memory = /^\d+$/.test(m) ? Number(m) : m;
  }
  if (v.cpus !== undefined) {
    if (!/^\d+$/.test(v.cpus as string)) throw new UsageError(`--cpus ${String(v.cpus)}: not a number`, USAGE);
    raw.vcpus = Number(v.cpus);
  }
  if (v.kernel !== undefined || v['kernel-format'] !== undefined || v.initrd !== undefined) {
    raw.kernel = { ...(raw.kernel ?? {}) } as RawConfig['kernel'];
    if (v.kernel !== undefined) raw.kernel.path = cwd(v.kernel as string);
    if (v['kernel-format'] !== undefined) raw.kernel.format = v['kernel-format'] as RawConfig['kernel']['format'];
    if (v.initrd !== undefined) raw.kernel.initrd = cwd(v.initrd as string);
  }
  if (v.cmdline !== undefined) raw.cmdline = v.cmdline as string;
  if (v.name !== undefined) raw.name = v.name as string;
  for (const spec of (v.device as string[] | undefined) ?? []) {
    const d = parseDevice(spec);
    if (d.sysfsdev !== undefined) d.sysfsdev = cwd(d.sysfsdev);
    raw.devices = [...(raw.devices ?? []), d];
  }
  if (v.serial !== undefined) {
    const s = v.serial as string;
    if (s === 'stdio') raw.serial = { output: 'stdout', input: 'stdin' };
    else if (s === 'none' || s === 'null') raw.serial = { output: 'none' };
    else if (s.startsWith('file:') && s.length > 5) raw.serial = { output: 'file', path: cwd(s.slice(5)) };
    else throw new UsageError(`--serial ${s}: expected stdio, none or file:PATH`, USAGE);
  }
  return { raw, source, baseDir };
}

export async function main(args: string[]): Promise<number> {
  const p = parseCommand(args, OPTIONS, USAGE, { min: 0, max: 1, what: 'config file' });
  if (!p) return 0;
  const v = p.values;
  const { raw, source, baseDir } = buildRawConfig(p.positionals[0], v);
  if (v['print-config']) {
    process.stdout.write(JSON.stringify(raw, null, 2) + '\n');
    checkConfig(structuredClone(raw), source, baseDir); // exit 2 (with the problems) when invalid
    return 0;
  }
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
    const config = checkConfig(raw, source, baseDir);
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
    const qmpPath = str(v, 'qmp');
    if (qmpPath !== undefined && !early) {
      const { machineQmp } = await import('../../frontend/qmp/commands.js');
      qmp = machineQmp(machine, qmpPath);
      await qmp.listen();
    }
    if (early) {
      process.stderr.write(`tsvmm: interrupted (${early}) while starting\n`);
      return TERMINATING[early];
    }
    // What start-up alone ran (module loading, config checks, VFIO set-up) stays mapped in this
    // process unless told: once the guest has run a second, unmap the clean file pages
    // (core/resident.ts); the ones the VM still uses come back from the page cache.
    const trim = setTimeout(() => dropCleanFilePages(), TRIM_AFTER_MS).unref();
    const r = await machine.run().finally(() => clearTimeout(trim));
    if (qmp) {
      const shutdown = (await import('../../frontend/commands.js')).shutdownEvent(r);
      if (shutdown) qmp.emit('SHUTDOWN', shutdown);
    }
    if (!/debug-exit/.test(r.reason)) process.stderr.write(`tsvmm: ${r.reason}\n`);
    return r.status;
  } finally {
    releaseSignals();
    await qmp?.close();
    machine?.close();
  }
}
