// tsvmm initramfs: the busybox initramfs a Linux config's kernel.initramfs builds, as a file.
import { readFileSync, writeFileSync } from 'node:fs';
import { parseCommand, str, UsageError } from './common.js';

export const USAGE = `Usage: tsvmm initramfs <out.cpio> --script FILE [--modules DIR] [--busybox PATH] [--program NAME]...

Writes the tiny busybox initramfs a Linux config's kernel.initramfs builds (e.g. to boot the same
guest under QEMU with -initrd): static busybox, the modules DIR/modules.order lists, and an /init
that runs the script, then powers off. --program puts one of tsvmm's guest programs in /bin
(dirty-checksum, vfio-edu, nvme-read, mtty-loop; as kernel.initramfs.programs).`;

export async function main(args: string[]): Promise<number> {
  const p = parseCommand(
    args,
    {
      script: { type: 'string' },
      modules: { type: 'string' },
      busybox: { type: 'string' },
      program: { type: 'string', multiple: true },
    },
    USAGE,
    { min: 1, max: 1, what: 'output file' },
  );
  if (!p) return 0;
  const script = str(p.values, 'script'),
    modules = str(p.values, 'modules'),
    busybox = str(p.values, 'busybox'),
    programs = (p.values.program as string[] | undefined) ?? [];
  if (script === undefined) throw new UsageError('--script FILE is required', USAGE);
  const { buildInitramfs } = await import('../../machine/index.js');
  const cpio = buildInitramfs({
    script: readFileSync(script, 'utf8'),
    ...(modules ? { modulesDir: modules } : {}),
    ...(busybox ? { busybox } : {}),
    ...(programs.length ? { programs } : {}),
  });
  writeFileSync(p.positionals[0]!, cpio);
  process.stdout.write(`${p.positionals[0]}: ${cpio.length} bytes (newc, uncompressed)\n`);
  return 0;
}
