#!/usr/bin/env node
// tsvmm command line: run a VM from a JSON config, validate configs, drive the test host.
import { closeSync, readFileSync } from 'node:fs';
import { checkConfig, ConfigError, loadConfig, type VmConfig } from '../core/config/config.js';
import { Machine } from '../core/machine.js';
import { projectRoot } from '../core/paths.js';

const HELP = `tsvmm — a small QEMU-style VMM for PCI device assignment with VFIO

Usage:
  tsvmm run [config.json] [--fd-socket N]
                                 Run a VM. With no config, runs the built-in demo guest
                                 (prints over serial, lists the PCI bus, exits 0). --fd-socket: take
                                 /dev/kvm and VFIO group (or /dev/iommu + cdev) fds from a manager.
                                 --qmp PATH: a QMP control socket (mode 0600): query-status,
                                 query-pci, query-version, query-commands, stop, cont,
                                 system_reset, quit,
                                 getfd, closefd, add-fd, remove-fd, query-fdsets, device_add
                                 (vfio-pci hot-plug), device_del.
  tsvmm validate <config.json>   Check a config against configs/vm.schema.json without running it.
  tsvmm groups                   List the host's IOMMU groups: devices, drivers, viability.
  tsvmm initramfs <out.cpio> --script FILE [--modules DIR] [--busybox PATH]
                                 Write the tiny busybox initramfs a Linux config's kernel.initramfs
                                 builds (e.g. to boot the same guest under QEMU with -initrd).
  tsvmm mdev list                List mediated device types (with free instances) and mdevs.
  tsvmm mdev create <type> [uuid]
                                 Create an mdev ('mtty-1', or parent/type); prints its sysfs path,
                                 for a device's "sysfsdev".
  tsvmm mdev remove <uuid>       Remove an mdev.
  tsvmm manager <config.json> (--user NAME | --uid N [--gid N]) [--memlock BYTES]
                                 As root: open /dev/kvm and the devices' VFIO groups (iommufd backend:
                                 /dev/iommu and the device cdevs), start the VMM
                                 as that user with no capabilities, and pass the fds (SCM_RIGHTS).
  tsvmm qmp <socket> <command> [json-arguments]
                                 Send one QMP command to a VM started with 'run --qmp <socket>'.
  tsvmm testhost <command> ...   The nested KVM+VFIO test host ('tsvmm testhost --help').
  tsvmm --help | --version

Exit status of 'run': the value the guest wrote to the debug-exit port (0xf4), 0 when the
guest halts, resets or powers off (ACPI), 1 on a guest crash or VMM error, 2 on a bad config,
130 on SIGINT.
Config reference: configs/vm.schema.json; samples in configs/.`;

function version(): string {
  return (JSON.parse(readFileSync(`${projectRoot}/package.json`, 'utf8')) as { version: string }).version;
}

export function demoConfig(): VmConfig {
  return checkConfig({ name: 'demo', memory: '64M', kernel: { path: 'guest/out/tsvmm-guest.elf' } }, 'built-in demo', projectRoot);
}

/** Splits `--name value` options from positional arguments. */
function options(args: string[], known: string[]): { positional: string[]; opts: Record<string, string> } {
  const positional: string[] = [], opts: Record<string, string> = {};
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (!a.startsWith('--')) { positional.push(a); continue; }
    const name = a.slice(2);
    if (!known.includes(name)) throw new UsageError(`unknown option ${a}`);
    const v = args[++i];
    if (v === undefined) throw new UsageError(`${a} needs a value`);
    opts[name] = v;
  }
  return { positional, opts };
}

async function run(args: string[]): Promise<number> {
  const { positional, opts } = options(args, ['fd-socket', 'qmp']);
  if (positional.length > 1) throw new UsageError('run takes at most one config file');
  const config = positional[0] ? loadConfig(positional[0]) : demoConfig();
  let passedFds;
  if (opts['fd-socket'] !== undefined) {
    const sock = Number(opts['fd-socket']);
    if (!Number.isInteger(sock) || sock < 0) throw new UsageError('--fd-socket takes an fd number');
    const { receivePassedFds } = await import('../core/fdpass.js');
    try { passedFds = receivePassedFds(sock); } finally { closeSync(sock); }
  }
  const machine = new Machine(config, passedFds ? { passedFds } : {});
  const onSignal = (sig: NodeJS.Signals) => machine.requestExit(sig === 'SIGINT' ? 130 : 143, `interrupted (${sig})`);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  let qmp;
  try {
    if (opts.qmp !== undefined) {
      const { machineQmp } = await import('../core/qmp-commands.js');
      qmp = machineQmp(machine, opts.qmp);
      await qmp.listen();
    }
    const r = await machine.run();
    if (r.reason !== 'QMP quit') qmp?.emit('SHUTDOWN', { guest: true, reason: 'guest-shutdown' });
    if (!/debug-exit/.test(r.reason)) process.stderr.write(`tsvmm: ${r.reason}\n`);
    return r.status;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await qmp?.close();
    machine.close();
  }
}

class UsageError extends Error {}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case undefined: case '-h': case '--help': case 'help':
      process.stdout.write(HELP + '\n');
      return cmd === undefined ? 2 : 0;
    case '--version': case '-v':
      process.stdout.write(version() + '\n');
      return 0;
    case 'run':
      return run(rest);
    case 'validate': {
      if (rest.length !== 1) throw new UsageError('validate takes one config file');
      const c = loadConfig(rest[0]!);
      process.stdout.write(`${rest[0]}: valid (${c.name}: ${c.memoryBytes / 2 ** 20} MiB, ${c.vcpus} vCPU, ${c.devices.length} device(s))\n`);
      return 0;
    }
    case 'groups': {
      const { listGroups } = await import('../core/vfio/sysfs.js');
      const groups = listGroups();
      if (!groups.length) {
        process.stdout.write('no IOMMU groups: the IOMMU is off or absent (boot with intel_iommu=on / amd_iommu=on)\n');
        return 1;
      }
      for (const g of groups) {
        process.stdout.write(`group ${g.group} ${g.viable ? 'viable' : 'NOT viable'}\n`);
        for (const m of g.members) {
          const ids = m.vendor !== undefined ? ` ${m.vendor.toString(16).padStart(4, '0')}:${(m.device ?? 0).toString(16).padStart(4, '0')}` : '';
          process.stdout.write(`  ${m.name}${ids} driver=${m.driver ?? '(none)'}\n`);
        }
      }
      return 0;
    }
    case 'mdev': {
      const m = await import('../core/vfio/mdev.js');
      const [sub, ...a] = rest;
      if (sub === 'list' && a.length === 0) {
        const types = m.mdevTypes(), devs = m.mdevs();
        if (!types.length && !devs.length) process.stdout.write(`no mdev parents (${m.MDEV_BUS} empty or missing)\n`);
        for (const t of types) process.stdout.write(`type ${t.parent}/${t.type} available=${t.available}${t.deviceApi ? ` api=${t.deviceApi}` : ''}${t.name ? ` name="${t.name}"` : ''}\n`);
        for (const d of devs) process.stdout.write(`mdev ${d.uuid} type=${d.type} parent=${d.parent} group=${d.group ?? '-'} cdev=${d.cdev ?? '-'} sysfsdev=${d.path}\n`);
        return 0;
      }
      if (sub === 'create' && (a.length === 1 || a.length === 2)) {
        process.stdout.write(`${m.createMdev(a[0]!, ...(a[1] ? [a[1]] : [])).path}\n`);
        return 0;
      }
      if (sub === 'remove' && a.length === 1) {
        m.removeMdev(a[0]!);
        return 0;
      }
      throw new UsageError('mdev takes: list | create <type> [uuid] | remove <uuid>');
    }
    case 'manager': {
      const { positional, opts } = options(rest, ['user', 'uid', 'gid', 'memlock']);
      if (positional.length !== 1) throw new UsageError('manager takes one config file');
      const { runManager, parseUser } = await import('../core/manager.js');
      const id = parseUser(opts);
      return runManager(positional[0]!, { ...id, ...(opts.memlock ? { memlockBytes: Number(opts.memlock) } : {}) });
    }
    case 'qmp': {
      if (rest.length < 2 || rest.length > 3) throw new UsageError('qmp takes <socket> <command> [json-arguments]');
      const { qmpCall } = await import('../core/qmp-client.js');
      const args = rest[2] !== undefined ? JSON.parse(rest[2]) as Record<string, unknown> : undefined;
      const r = await qmpCall(rest[0]!, rest[1]!, args);
      if ('error' in r) { process.stderr.write(`tsvmm qmp: ${r.error.class}: ${r.error.desc}\n`); return 1; }
      process.stdout.write(JSON.stringify(r.return, null, 2) + '\n');
      return 0;
    }
    case 'initramfs': {
      const { positional, opts } = options(rest, ['script', 'modules', 'busybox']);
      if (positional.length !== 1 || opts.script === undefined) throw new UsageError('initramfs takes <out.cpio> --script FILE [--modules DIR] [--busybox PATH]');
      const { buildInitramfs } = await import('../core/loader/initramfs.js');
      const { writeFileSync } = await import('node:fs');
      const cpio = buildInitramfs({ script: readFileSync(opts.script, 'utf8'), ...(opts.modules ? { modulesDir: opts.modules } : {}), ...(opts.busybox ? { busybox: opts.busybox } : {}) });
      writeFileSync(positional[0]!, cpio);
      process.stdout.write(`${positional[0]}: ${cpio.length} bytes (newc, uncompressed)\n`);
      return 0;
    }
    case 'testhost': {
      const { testhostMain } = await import('../testhost/cli.js');
      return testhostMain(rest);
    }
    default:
      throw new UsageError(`unknown command '${cmd}'`);
  }
}

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (e: unknown) => {
    if (e instanceof ConfigError) { process.stderr.write(`tsvmm: ${e.message}\n`); process.exitCode = 2; return; }
    if (e instanceof UsageError) { process.stderr.write(`tsvmm: ${e.message}\n\n${HELP}\n`); process.exitCode = 2; return; }
    process.stderr.write(`tsvmm: ${(e as Error).message}\n`);
    if (process.env.TSVMM_DEBUG) process.stderr.write(`${(e as Error).stack}\n`);
    process.exitCode = 1;
  },
);
