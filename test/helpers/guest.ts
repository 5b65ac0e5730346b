// Runs the project's test guest (or any image) in a Machine, collecting serial output by line
// and letting a test react to lines as they arrive (e.g. inject an interrupt on "irq ready").
import { readdirSync } from 'node:fs';
import { checkConfig, type VmConfig } from '../../machine/config/config.js';
import { Machine } from '../../machine/machine.js';
import type { MachineInspection, MachineResult } from '../../machine/index.js';
import { inside } from './inside.js';
import type { ExitStats } from '../../core/kvm/vm.js';
import { guestPaths } from '../../guest/index.js';

export interface GuestRun extends MachineResult {
  output: string;
  lines: string[];
  stats: ExitStats;
  /** DMA mappings as they were while the guest ran (snapshot at its first line of output). */
  dmaMappings: { iova: number; size: number }[];
  dmaCovered(iova: number, size: number): boolean;
}

export async function runGuest(opts: {
  cmdline?: string;
  config?: Partial<VmConfig>;
  onLine?: (line: string, m: Machine) => void;
  onStart?: (m: Machine) => void;
  /** Called once while the guest runs (at its first line of output): assert on live state here. */
  inspect?: (m: Machine) => void;
  timeoutMs?: number;
}): Promise<GuestRun> {
  const raw: VmConfig = {
    memory: 64,
    kernel: { path: guestPaths().elf },
    cmdline: opts.cmdline ?? '',
    ...opts.config,
  };
  const config = checkConfig(raw, 'test', process.cwd());
  let output = '';
  let partial = '';
  const lines: string[] = [];
  let machine: Machine | undefined;
  let dmaMappings: { iova: number; size: number }[] = [];
  let inspectError: unknown;
  machine = new Machine(config, {
    serialOutput: (b) => {
      const text = Buffer.from(b).toString('latin1');
      output += text;
      partial += text;
      let i: number;
      while ((i = partial.indexOf('\n')) >= 0) {
        const line = partial.slice(0, i).replace(/\r$/, '');
        partial = partial.slice(i + 1);
        lines.push(line);
        if (lines.length === 1) {
          dmaMappings = machine!.inspect().dmaMappings.map((m) => ({ iova: m.iova, size: m.size }));
          try {
            opts.inspect?.(machine!);
          } catch (e) {
            inspectError = e;
          }
        }
        opts.onLine?.(line, machine!);
      }
    },
  });
  // inside: the per-port and per-address exit counts are kept only when asked (tests read them)
  inside(machine).vm.stats.byAddress = true;
  const timer = setTimeout(
    () => machine!.exit(124, `test timeout after ${opts.timeoutMs ?? 30000} ms`),
    opts.timeoutMs ?? 30000,
  );
  try {
    opts.onStart?.(machine);
    const r = await machine.run();
    if (inspectError) throw inspectError;
    const dmaCovered = (iova: number, size: number) =>
      dmaMappings.some((m) => iova >= m.iova && iova + size <= m.iova + m.size);
    return {
      ...r,
      output,
      lines,
      stats: inside(machine).vm.stats, // per-port and per-address exits: no interface shows them
      dmaMappings,
      dmaCovered,
    };
  } finally {
    clearTimeout(timer);
    machine.close();
  }
}

/** Open fds of this process, to check nothing leaks. */
export function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

/** Whether one DMA mapping of the inspection covers [iova, iova + size) (guest RAM is mapped whole). */
export function dmaCovers(i: MachineInspection, iova: number, size: number): boolean {
  return i.dmaMappings.some((m) => iova >= m.iova && iova + size <= m.iova + m.size);
}
