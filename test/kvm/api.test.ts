// The library (lib/index.ts, `import … from 'tsvmm'`) on /dev/kvm: the test guest booted through
// createVm and watched on its console; inspect(); the QMP operations through the command layer
// (stop/cont/reset/status/command/quit) with their events; time-outs, aborts and an exited or
// closed VM as errors with codes; close() leaving no fd behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createVm, CommandError, TsvmmError, type Vm, type VmConfig } from '../../lib/index.js';
import { guestPaths } from '../../guest/index.js';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-api-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const openFds = () => readdirSync('/proc/self/fd').length;
const le32 = (v: number) => [v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >>> 24) & 0xff];

/**
 * A flat guest that prints "ready\n" on COM1, then an "x" after every 2^20 turns of a delay loop,
 * for ever: its only exits are COM1 writes, and it makes visible progress only while it runs.
 */
function tickingGuest(): string {
  const out = (c: string) => [0xb0, c.charCodeAt(0), 0xee]; // mov al, c; out dx, al
  const loop = [0xb9, ...le32(2 ** 20), 0x49, 0x75, 0xfd, ...out('x')]; // mov ecx, n; d: dec ecx; jnz d; out
  const code = [0x66, 0xba, 0xf8, 0x03, ...[...'ready\n'].flatMap(out), ...loop, 0xeb, -(loop.length + 2) & 0xff];
  const p = join(dir, 'ticking.bin');
  writeFileSync(p, Uint8Array.from(code));
  return p;
}
const ticking: VmConfig = { name: 'ticking', memory: 16, kernel: { path: 'ticking.bin', format: 'flat' } };
tickingGuest();

/** Asserts `p` rejects with a TsvmmError of `code` whose message matches `re`. */
async function rejectsWith(p: Promise<unknown>, code: string, re?: RegExp): Promise<TsvmmError> {
  let err: unknown;
  await assert.rejects(p, (e: unknown) => {
    err = e;
    return true;
  });
  assert.ok(err instanceof TsvmmError, String(err));
  assert.equal(err.code, code, err.message);
  if (re) assert.match(err.message, re);
  return err;
}

test('the demo guest through createVm: serial by pattern, inspection, exit by the debug port', async () => {
  await using vm = await createVm({ memory: 64, kernel: { path: guestPaths().elf } });
  assert.equal(vm.name, 'tsvmm');
  assert.equal(vm.status(), 'paused', 'not running before start()');
  vm.start();
  vm.start(); // idempotent
  const m = await vm.waitForSerial(/tsvmm-guest: (\d+) pci functions/);
  assert.equal(m[1], '1');
  assert.equal(vm.serial.slice(m.index, m.index! + m[0].length), m[0], 'the index is an offset into serial');
  const exit = await vm.waitForExit();
  assert.equal(exit.status, 0);
  assert.match(exit.reason, /debug-exit/);
  assert.deepEqual(vm.exited, exit);
  assert.equal(vm.status(), 'shutdown');
  assert.match(vm.serial, /^pci 00:00\.0 8086:0d57 class 060000$/m);
  assert.match(vm.serial, /tsvmm-guest: memory lower 639K upper 64512K/);

  const i = vm.inspect();
  assert.deepEqual(i.memory.size, 64 * 2 ** 20);
  assert.equal(i.vcpus, 1);
  assert.ok(
    i.memslots.some((s) => s.guestAddr === 0 && s.size === 64 * 2 ** 20 && !s.readonly),
    JSON.stringify(i.memslots),
  );
  assert.deepEqual(i.dmaMappings, [], 'nothing assigned, nothing mapped for DMA');
  assert.equal(i.pinnedBytes, 0);
  assert.deepEqual(i.interrupts, []);
  assert.equal(i.pciDevices.length, 1);
  assert.deepEqual(
    { ...i.pciDevices[0]!, bars: undefined },
    { slot: 0, id: i.pciDevices[0]!.id, vendor: 0x8086, device: 0x0d57, class: 0x060000, bars: undefined },
  );
  // The guest's PCI scan reads config space through port 0xcf8/0xcfc, and its prints are COM1 writes.
  assert.ok(i.exits.io >= vm.serial.length, `${i.exits.io} port exits for ${vm.serial.length} bytes printed`);
  assert.equal(i.exits.total, i.exits.io + i.exits.mmio);

  // Waiting on an ended VM fails at once, saying so and showing the last lines.
  await rejectsWith(vm.waitForSerial('never printed'), 'ERR_VM_EXITED', /exited first .*\n.*tsvmm-guest/s);
  await rejectsWith(vm.stop(), 'ERR_VM_EXITED');
});

test('stop/cont/reset/status/command/quit through the command layer, with their events', async () => {
  const events: string[] = [];
  const vm = await createVm(ticking, { baseDir: dir });
  try {
    vm.on('event', (name) => events.push(name));
    assert.throws(() => vm.on('NOPE' as 'STOP', () => {}), { code: 'ERR_USAGE', message: /unknown event 'NOPE'/ });
    vm.start();
    await vm.waitForSerial('ready\n');
    await vm.waitForSerial('x');
    assert.equal(vm.status(), 'running');
    assert.deepEqual(await vm.command('query-status'), { running: true, singlestep: false, status: 'running' });
    assert.deepEqual(await vm.command('query-name'), { name: 'ticking' });

    await vm.stop();
    assert.equal(vm.status(), 'paused');
    assert.deepEqual(await vm.command('query-status'), { running: false, singlestep: false, status: 'paused' });
    const pausedAt = vm.serial.length;
    await sleep(500);
    assert.equal(vm.serial.length, pausedAt, 'no progress while paused');
    await vm.cont();
    assert.equal(vm.status(), 'running');
    await vm.waitForSerial('x', { from: pausedAt });

    const before = vm.serial.length;
    await vm.reset();
    await vm.waitForSerial('ready\n', { from: before }); // from its entry point again
    assert.equal(vm.status(), 'running');

    // Its only exits are COM1 writes: one per byte printed.
    await vm.stop();
    const i = vm.inspect();
    assert.equal(i.exits.io, vm.serial.length);
    assert.equal(i.exits.mmio, 0);
    assert.equal(i.exits.total, vm.serial.length);
    await vm.cont();

    // Errors as QMP has them, with a code.
    const nf = await rejectsWith(
      vm.command('no-such-command'),
      'ERR_QMP',
      /The command no-such-command has not been found/,
    );
    assert.equal((nf as CommandError).errorClass, 'CommandNotFound');
    // @ts-expect-error -- the type says what the run-time check says: device_del needs an id
    await rejectsWith(vm.command('device_del', {}), 'ERR_QMP', /Parameter 'id' is missing/);
    const dnf = await rejectsWith(vm.deviceDel('nothing'), 'ERR_QMP', /Device 'nothing' not found/);
    assert.equal((dnf as CommandError).errorClass, 'DeviceNotFound');
    await rejectsWith(
      // @ts-expect-error -- vfio-pci has no property 'colour', for the type as for the run-time check
      vm.command('device_add', { driver: 'vfio-pci', id: 'a', colour: 'red' }),
      'ERR_QMP',
      /Property 'vfio-pci\.colour' not found/,
    );

    const exit = await vm.quit();
    assert.deepEqual(exit, { status: 0, reason: 'QMP quit' });
    assert.equal(vm.status(), 'shutdown');
    assert.deepEqual(await vm.quit(), exit, 'quit again: the same exit');
    assert.deepEqual(events, ['STOP', 'RESUME', 'RESET', 'STOP', 'RESUME', 'SHUTDOWN']);
  } finally {
    await vm.close();
  }
});

test('waits: time-out and abort are errors with codes and the last serial lines; close ends waits', async () => {
  const vm = await createVm(ticking, { baseDir: dir });
  try {
    vm.start();
    await vm.waitForSerial('ready');
    const t0 = Date.now();
    const e = await rejectsWith(vm.waitForSerial(/never/, { timeoutMs: 300 }), 'ERR_TIMEOUT', /within 300 ms/);
    assert.ok(Date.now() - t0 >= 290, 'not before its time');
    // The tail as it was when the time-out fired: "ready" and then whatever followed (its newline and the first
    // "x"s, or nothing yet on a slow host: a last line still without its newline is shown too).
    assert.match(e.message, /last serial output:\nready(\n|$)/);
    // A time-out that is not a number ≥ 0 is the caller's mistake, refused at once (not a wait forever).
    for (const bad of [-1, NaN, '300' as unknown as number])
      await rejectsWith(
        vm.waitForSerial('x', { timeoutMs: bad }),
        'ERR_USAGE',
        /timeoutMs must be a number ≥ 0 or Infinity/,
      );
    await rejectsWith(vm.waitForExit({ timeoutMs: -5 }), 'ERR_USAGE', /waiting for the VM to exit: timeoutMs must be/);

    const ac = new AbortController();
    const w = vm.waitForSerial(/never/, { signal: ac.signal, timeoutMs: Infinity });
    setTimeout(() => ac.abort(new Error('enough')), 100);
    const a = await rejectsWith(w, 'ERR_ABORTED');
    assert.equal((a.cause as Error).message, 'enough');
    await rejectsWith(vm.waitForExit({ signal: AbortSignal.abort() }), 'ERR_ABORTED');
    await rejectsWith(vm.waitForExit({ timeoutMs: 200 }), 'ERR_TIMEOUT');

    // close() while a wait is pending: the VM ends, the wait says why.
    const pending = vm.waitForSerial(/never/, { timeoutMs: 60_000 });
    const exitWait = vm.waitForExit();
    await vm.close();
    await rejectsWith(pending, 'ERR_VM_EXITED');
    assert.match((await exitWait).reason, /closed/);
    assert.throws(
      () => vm.inspect(),
      (x: unknown) => x instanceof TsvmmError && x.code === 'ERR_CLOSED',
    );
    await rejectsWith(vm.stop(), 'ERR_CLOSED');
    await rejectsWith(vm.waitForSerial('ready'), 'ERR_CLOSED');
  } finally {
    await vm.close();
    await vm.close(); // idempotent
  }
});

test("createVm's signal closes the VM when aborted", async () => {
  const ac = new AbortController();
  const vm = await createVm(ticking, { baseDir: dir, signal: ac.signal });
  vm.start();
  await vm.waitForSerial('ready');
  ac.abort();
  const exit = await vm.waitForExit();
  assert.match(exit.reason, /closed/);
  await vm.close();
  assert.throws(() => vm.status(), /closed/);
});

test('close() releases every fd the VM opened (running, never started, ended)', async () => {
  const runOnce = async (how: 'running' | 'idle' | 'ended') => {
    const vm: Vm = await createVm(how === 'ended' ? { memory: 16, kernel: { path: guestPaths().elf } } : ticking, {
      baseDir: dir,
    });
    if (how !== 'idle') vm.start();
    if (how === 'running') await vm.waitForSerial('x');
    if (how === 'ended') await vm.waitForExit();
    await vm.close();
  };
  await runOnce('running'); // warm-up: the addon, the pool, the loop watcher
  const before = openFds();
  for (const how of ['running', 'idle', 'ended'] as const) {
    await runOnce(how);
    assert.equal(openFds(), before, `after a VM closed ${how}`);
  }
});
