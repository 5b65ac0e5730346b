// `tsvmm run` from flags alone (no JSON file), and every terminating signal cleaning up.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { projectRoot } from '../../core/paths.js';
import { guestPaths } from '../../guest/index.js';

const cli = join(projectRoot, 'dist/bin/tsvmm.cjs');
const dir = mkdtempSync(join(tmpdir(), 'tsvmm-clirun-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

test('one-liner flags boot the demo guest (no config file): memory, cpus, kernel, cmdline, serial', () => {
  const r = spawnSync(
    process.execPath,
    [
      cli,
      'run',
      '--memory',
      '32M',
      '--cpus',
      '1',
      '--kernel',
      guestPaths().elf,
      '--cmdline',
      'count=3',
      '--serial',
      'stdio',
      '--name',
      'flags',
    ],
    { encoding: 'utf8', timeout: 60000, input: '' },
  );
  assert.equal(r.status, 0, `${r.stderr}\n${r.stdout}`);
  assert.match(r.stdout, /^tsvmm-guest: start$/m);
  assert.match(r.stdout, /^tsvmm-guest: cmdline "count=3"$/m);
  // The same VM with its serial output in a file, and a config file whose values the flags override.
  const cfg = join(dir, 'vm.json');
  writeFileSync(cfg, JSON.stringify({ memory: 8, cmdline: 'count=1', kernel: { path: guestPaths().elf } }));
  const f = spawnSync(
    process.execPath,
    [cli, 'run', cfg, '--memory', '32', '--cmdline', 'count=2', '--serial', `file:${join(dir, 'serial.log')}`],
    { encoding: 'utf8', timeout: 60000 },
  );
  assert.equal(f.status, 0, f.stderr);
  assert.equal(f.stdout, '');
  assert.match(readFileSync(join(dir, 'serial.log'), 'utf8'), /^tsvmm-guest: cmdline "count=2"$/m);
});

test('SIGHUP, SIGTERM and SIGINT each end the VM cleanly: QMP socket file removed, exit 128+N', async () => {
  const guest = join(dir, 'spin.bin');
  writeFileSync(guest, Uint8Array.from([0xeb, 0xfe])); // jmp $
  for (const [sig, status] of [
    ['SIGHUP', 129],
    ['SIGTERM', 143],
    ['SIGINT', 130],
  ] as const) {
    const sock = join(dir, `${sig}.sock`);
    const vm = spawn(
      process.execPath,
      [cli, 'run', '--memory', '4', '--kernel', guest, '--kernel-format', 'flat', '--qmp', sock],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stderr = '';
    vm.stderr.on('data', (b) => {
      stderr += b;
    });
    const exited = new Promise<number | null>((r) => vm.on('exit', (code) => r(code)));
    try {
      for (let i = 0; i < 1200 && !existsSync(sock); i++) await sleep(50);
      assert.ok(existsSync(sock), `${sig}: the VM started (${stderr})`);
      await sleep(200);
      vm.kill(sig);
      assert.equal(await exited, status, `${sig}: ${stderr}`);
      assert.match(stderr, new RegExp(`interrupted \\(${sig}\\)`));
      assert.ok(!existsSync(sock), `${sig}: the QMP socket file is removed`);
    } finally {
      vm.kill('SIGKILL');
    }
  }
});
