// tsvmm validate: every check `run` makes before it needs KVM or a host device (the same function).
import { loadConfig } from '../../machine/index.js';
import { parseCommand } from './common.js';

export const USAGE = `Usage: tsvmm validate <config.json>

Checks a config without running it: the schema (configs/vm.schema.json), sizes, files, the guest
image's format and size against the RAM and layout, the initrd against the format, device ids,
host devices assigned twice, PCI slots. 'tsvmm run' makes the same checks first. Needs no KVM and
no host device. Exit status 0 when valid, 2 with each problem (JSON pointer and fix) when not.`;

export async function main(args: string[]): Promise<number> {
  const p = parseCommand(args, {}, USAGE, { min: 1, max: 1, what: 'config file' });
  if (!p) return 0;
  const c = loadConfig(p.positionals[0]!);
  process.stdout.write(
    `${p.positionals[0]}: valid (${c.name}: ${c.memoryBytes / 2 ** 20} MiB, ${c.vcpus} vCPU, ${c.devices.length} device(s))\n`,
  );
  return 0;
}
