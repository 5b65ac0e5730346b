// What the QMP fuzzer (fuzz-qmp.ts) runs against: a VM (`tsvmm run` with a guest that spins, the
// real command layer behind its socket) or a QMP server alone in a process (qmp-child.ts).
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { projectRoot } from '../../core/paths.js';
import { ask, procRss, type QmpFuzzTarget } from './fuzz-qmp.js';

export interface RunningTarget extends QmpFuzzTarget {
  stop(): Promise<void>;
}

function cleanup(p: ChildProcess, dir: string): () => Promise<void> {
  return async () => {
    if (p.exitCode === null) {
      p.kill('SIGTERM');
      await Promise.race([once(p, 'exit'), sleep(5000)]);
    }
    rmSync(dir, { recursive: true, force: true });
  };
}

/** `tsvmm run` of a guest that spins (jmp $), with a QMP socket. Its RSS is read after a pause,
 *  again every 10 s for up to 2 min while over the bound (nothing can tell it to collect garbage:
 *  V8's memory reducer does, about a minute after the load stops). */
export async function vmTarget(): Promise<RunningTarget> {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-qmpfuzz-'));
  const guest = join(dir, 'spin.bin');
  writeFileSync(guest, Uint8Array.from([0xeb, 0xfe]));
  const path = join(dir, 'qmp.sock');
  const p = spawn(
    process.execPath,
    [
      join(projectRoot, 'dist/bin/tsvmm.cjs'),
      'run',
      '--kernel',
      guest,
      '--kernel-format',
      'flat',
      '--memory',
      '4',
      '--qmp',
      path,
    ],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  for (let i = 0; i < 1200 && !existsSync(path) && p.exitCode === null; i++) await sleep(50);
  if (!existsSync(path)) throw new Error('tsvmm run did not open its QMP socket');
  return {
    path,
    pid: p.pid!,
    vm: true,
    commands: [
      'query-status',
      'query-name',
      'query-version',
      'query-pci',
      'query-commands',
      'query-fdsets',
      'stop',
      'cont',
      'system_reset',
      'system_powerdown',
      'closefd',
      'device_del',
      'nope',
    ],
    rss: async () => {
      await sleep(10000);
      return procRss(p.pid!);
    },
    settleReads: 12,
    stop: cleanup(p, dir),
  };
}

/**
 * A QmpServer alone in a process (stand-in commands); its RSS measured after gc(). Its young
 * generation is held at 1 MiB semi-spaces: V8 grows them under a burst of allocation (a huge input)
 * and gives them back only when it is idle for a while, which is not memory the server kept.
 */
export async function serverTarget(): Promise<RunningTarget> {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-qmpfuzz-'));
  const path = join(dir, 'qmp.sock');
  const child = join(projectRoot, 'dist/test/helpers/qmp-child.js');
  const p = spawn(process.execPath, ['--expose-gc', '--max-semi-space-size=1', child, path], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  await once(p.stdout!, 'data');
  return {
    path,
    pid: p.pid!,
    vm: false,
    commands: ['query-name', 'x-loop', 'nope'],
    rss: async () => ((await ask(path, 'x-rss')).return as { rss: number }).rss,
    stop: cleanup(p, dir),
  };
}
