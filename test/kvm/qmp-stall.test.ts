// A big QMP message does not stall the guest: tsvmm run answers vCPU 0's exits on the thread that
// also reads QMP, so a parse done in one turn would stop the guest's serial output for as long as
// it takes. The guest here prints a byte, waits a little, and again, forever; while a client sends
// a 2 MB message, the output must keep coming: at a third of its rate before at least (the parse
// takes a third of the thread), and no gap near
// the length of the parse.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { projectRoot } from '../../core/paths.js';
import { QmpTestClient } from '../helpers/qmp.js';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-qmp-stall-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const cli = join(projectRoot, 'dist/bin/tsvmm.cjs');

// 32-bit flat guest: mov dx, 0x3f8; again: mov al, 'x'; out dx, al; mov ecx, 20000; wait: loop wait; jmp again
const TICKER = [0x66, 0xba, 0xf8, 0x03, 0xb0, 0x78, 0xee, 0xb9, 0x20, 0x4e, 0x00, 0x00, 0xe2, 0xfe, 0xeb, 0xf4];

test('the guest keeps printing while a 2 MB QMP message is parsed (no gap near the parse)', async () => {
  const guest = join(dir, 'ticker.bin');
  writeFileSync(guest, Uint8Array.from(TICKER));
  const sock = join(dir, 'qmp.sock');
  const vm = spawn(
    process.execPath,
    [cli, 'run', '--memory', '4', '--kernel', guest, '--kernel-format', 'flat', '--qmp', sock],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let stderr = '';
  vm.stderr.on('data', (b) => (stderr += b));
  const arrivals: number[] = []; // when serial bytes arrived
  vm.stdout.on('data', (b: Buffer) => {
    const t = performance.now();
    for (let i = 0; i < b.length; i++) arrivals.push(t);
  });
  try {
    for (let i = 0; i < 300 && (!existsSync(sock) || arrivals.length < 50); i++) await sleep(50);
    assert.ok(arrivals.length >= 50, `the guest printed ${arrivals.length} bytes; stderr: ${stderr}`);
    await sleep(2000);
    const before = arrivals.filter((t) => t >= performance.now() - 2000).length / 2;
    const c = await QmpTestClient.connect(sock);
    await c.next();
    await c.call('qmp_capabilities');
    // A member QEMU would refuse only after parsing all of it: 2 MB, a million tokens.
    const big = `{"execute":"query-name","arguments":{"w":[${'123,'.repeat(500_000)}1]}}`;
    const t0 = performance.now();
    c.s.write(big);
    assert.deepEqual(await c.reply(120_000), { error: { class: 'GenericError', desc: "Parameter 'w' is unexpected" } });
    const t1 = performance.now();
    const during = arrivals.filter((t) => t >= t0 && t <= t1);
    const marks = [t0, ...during, t1];
    const maxGap = Math.max(...marks.slice(1).map((t, i) => t - marks[i]!));
    const took = t1 - t0;
    console.log(
      `# 2 MB message: ${took.toFixed(0)} ms, ${during.length} serial bytes meanwhile (${before}/s before), longest gap ${maxGap.toFixed(0)} ms`,
    );
    const rate = during.length / (took / 1000);
    assert.ok(rate >= before / 3, `${rate.toFixed(1)} bytes/s while the message was read, ${before}/s before`);
    // Relative, not timed: a parse in one turn leaves one gap as long as the whole parse.
    assert.ok(
      maxGap < took / 2,
      `longest gap in the guest's output ${maxGap.toFixed(0)} ms of the ${took.toFixed(0)} ms the message took (${during.length} bytes)`,
    );
    c.s.destroy();
  } finally {
    vm.kill('SIGTERM');
    await new Promise((r) => vm.once('close', r));
  }
});
