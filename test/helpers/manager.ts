// Shared by the manager suites (legacy and iommufd): configs the unprivileged VMM can read, and
// what `nobody` gets when it opens a device node itself.
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Writes a config into a fresh world-readable directory (readable by the VMM's user). */
export function writeConfig(obj: object): string {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-mgr-'));
  chmodSync(dir, 0o755);
  const p = join(dir, 'vm.json');
  writeFileSync(p, JSON.stringify(obj));
  chmodSync(p, 0o644);
  return p;
}

/** 'opened', or the error code (e.g. 'EACCES') of opening path read-write as nobody. */
export function openAsNobody(path: string): string {
  const r = spawnSync(
    'setpriv',
    [
      '--reuid=65534',
      '--regid=65534',
      '--clear-groups',
      process.execPath,
      '-e',
      `try { require('fs').openSync('${path}', 'r+'); console.log('opened') } catch (e) { console.log(e.code) }`,
    ],
    { encoding: 'utf8' },
  );
  return r.stdout.trim();
}
