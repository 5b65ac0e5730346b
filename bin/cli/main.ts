// The command line's dispatcher. One module per command (bin/cli/*.ts), imported only when that
// command runs, so a command loads what it needs and nothing else (start-up time is the VM's launch
// time). bin/tsvmm.cts runs it from the build's one-file bundle; bin/tsvmm.ts from the modules.
import { catchSignals, refuseInspectorSignal } from './signals.js';

const COMMANDS: Record<
  string,
  { load: () => Promise<{ main: (args: string[]) => Promise<number> }>; summary: string }
> = {
  run: {
    load: () => import('./run.js'),
    summary: 'run a VM from a config and/or QEMU-style flags (--memory, --kernel, --device ...)',
  },
  validate: {
    load: () => import('./validate.js'),
    summary: 'check a config without running it (every check that needs no KVM)',
  },
  groups: {
    load: () => import('./groups.js'),
    summary: "list the host's IOMMU groups: devices, drivers, viability [--json]",
  },
  mdev: {
    load: () => import('./mdev.js'),
    summary: 'list [--json] | create <type> [uuid] | remove <uuid>: mediated devices',
  },
  manager: {
    load: () => import('./manager.js'),
    summary: 'as root: open the devices, start the VMM unprivileged, pass the fds',
  },
  qmp: { load: () => import('./qmp.js'), summary: 'send one QMP command to a running VM' },
  initramfs: {
    load: () => import('./initramfs.js'),
    summary: "write the busybox initramfs a Linux config's kernel.initramfs builds",
  },
  testhost: {
    load: async () => ({ main: (await import('../../testhost/cli.js')).testhostMain }),
    summary: "the nested KVM+VFIO test host ('tsvmm testhost --help')",
  },
};

const HELP = `tsvmm — a small QEMU-style VMM for PCI device assignment with VFIO

Usage: tsvmm <command> [options]      ('tsvmm <command> --help' for each)

${Object.entries(COMMANDS)
  .map(([n, c]) => `  ${n.padEnd(11)}${c.summary}`)
  .join('\n')}
  help CMD   a command's help (as 'tsvmm CMD --help')
  --help     this text
  --version  tsvmm's version

Config reference: configs/vm.schema.json; samples in configs/.
Exit status 2 for a bad config or command line (from every command).`;

async function version(): Promise<string> {
  const { readFileSync } = await import('node:fs');
  const { projectRoot } = await import('../../core/paths.js');
  return (JSON.parse(readFileSync(`${projectRoot}/package.json`, 'utf8')) as { version: string }).version;
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === undefined) {
    process.stderr.write(HELP + '\n');
    return 2;
  }
  if (cmd === '-h' || cmd === '--help' || cmd === 'help') {
    // `tsvmm help run` is `tsvmm run --help`.
    const of = cmd === 'help' ? rest[0] : undefined;
    if (of === undefined) {
      process.stdout.write(HELP + '\n');
      return 0;
    }
    const c = Object.hasOwn(COMMANDS, of) ? COMMANDS[of] : undefined;
    if (!c) {
      process.stderr.write(`tsvmm: help: unknown command '${of}'\n\n${HELP}\n`);
      return 2;
    }
    return (await c.load()).main(['--help']);
  }
  if (cmd === '-v' || cmd === '--version') {
    process.stdout.write((await version()) + '\n');
    return 0;
  }
  const c = Object.hasOwn(COMMANDS, cmd) ? COMMANDS[cmd] : undefined;
  if (!c) {
    process.stderr.write(`tsvmm: unknown command '${cmd}'\n\n${HELP}\n`);
    return 2;
  }
  return (await c.load()).main(rest);
}

/** The whole command line: runs `argv` (without node and the script) and sets the exit status. */
export function runCli(argv: string[]): Promise<void> {
  // No command of tsvmm opens an inspector on SIGUSR1 (bin/cli/signals.ts).
  refuseInspectorSignal();
  // run: a terminating signal during start-up ends it cleanly, not half-way (bin/cli/signals.ts).
  if (argv[0] === 'run') catchSignals();
  return main(argv).then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      // TsvmmErrors carry their exit status (2 for configs and command lines) and, where there is
      // one, the fix (core/errors.ts; its module need not be loaded to read them).
      const err = e as Error & { exitCode?: number; usage?: string; fix?: string };
      const fix = err.fix && !err.message.includes(err.fix) ? `tsvmm: fix: ${err.fix}\n` : '';
      process.stderr.write(`tsvmm: ${err.message}\n${fix}${err.usage ? `\n${err.usage}\n` : ''}`);
      if (process.env.TSVMM_DEBUG) process.stderr.write(`${err.stack}\n`);
      process.exitCode = err.exitCode ?? 1;
    },
  );
}

/** Loads every command's modules without running one: what the build's code cache covers. */
export async function loadAllCommands(): Promise<void> {
  for (const c of Object.values(COMMANDS)) await c.load();
}
