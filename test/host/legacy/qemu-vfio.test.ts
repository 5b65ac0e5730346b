// Runs INSIDE the test host: QEMU itself (the reference VMM) assigns edu to an inner guest through vfio-pci on the
// host's kvm_amd, and the project's multiboot test guest sees 1234:11e8 on its PCI bus.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { innerQemuArgs } from '../../../testhost/qemu.js';

// dist/test/host/legacy/x.js → project root is ../../../..
const root = fileURLToPath(new URL('../../../../', import.meta.url));
const guest = `${root}guest/out/tsvmm-guest.elf`;

test('QEMU assigns edu to an inner guest with vfio-pci', { timeout: 240_000 }, async () => {
  assert.equal(process.env.TSVMM_TESTHOST, '1', 'not inside the test host: run through `tsvmm testhost test`');
  assert.ok(existsSync(guest), `the multiboot test guest ${guest} is missing: build it first (npm run build)`);
  const edu = (JSON.parse(process.env.TSVMM_TESTHOST_DEVICES ?? '{}') as Record<string, { bdf: string }>).edu;
  assert.ok(edu, 'edu is not in TSVMM_TESTHOST_DEVICES');
  const args = [
    ...innerQemuArgs({ memMiB: 256 }),
    '-device',
    'isa-debug-exit,iobase=0xf4,iosize=4',
    '-device',
    `vfio-pci,host=${edu.bdf}`,
    '-kernel',
    guest,
  ];
  // VFIO pins all guest RAM: lift RLIMIT_MEMLOCK for QEMU (the host's inner.sh already does; this keeps the test standalone).
  const child = spawn('/bin/sh', ['-c', 'ulimit -l unlimited && exec qemu-system-x86_64 "$@"', 'sh', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (b: Buffer) => {
    out += b.toString();
  });
  child.stderr.on('data', (b: Buffer) => {
    err += b.toString();
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), 180_000);
  const code = await new Promise<number | null>((r) => child.on('close', (c) => r(c)));
  clearTimeout(timer);
  const ctx = `exit ${code}\n--- serial ---\n${out}\n--- qemu stderr ---\n${err}`;
  assert.ok(code !== null, `QEMU was killed after 180 s\n${ctx}`);
  assert.equal(code & 1, 1, `the guest did not exit through isa-debug-exit\n${ctx}`);
  assert.equal(code, 1, `the guest reported failure (debug-exit value ${code >> 1})\n${ctx}`);
  assert.match(
    out,
    /^pci [0-9a-f]{2}:[0-9a-f]{2}\.[0-7] 1234:11e8\b/im,
    `the inner guest did not list edu (1234:11e8)\n${ctx}`,
  );
});
