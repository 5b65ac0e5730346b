// The QMP control socket, driven with raw JSON lines as the QMP spec defines them (no QMP
// client library is packaged for Debian 12's node or small enough on npm to be worth it).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createConnection } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { projectRoot } from '../../core/paths.js';
import { native } from '../../core/native.js';
import { QmpTestClient } from '../helpers/qmp.js';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-qmp-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const cli = join(projectRoot, 'dist/bin/tsvmm.cjs');

const Client = QmpTestClient;

test('QMP: greeting, negotiation, errors, status, stop/cont with events, one client, quit', async () => {
  const guest = join(dir, 'spin.bin');
  writeFileSync(guest, Uint8Array.from([0xeb, 0xfe])); // jmp $
  const cfg = join(dir, 'spin.json');
  writeFileSync(cfg, JSON.stringify({ memory: 4, kernel: { path: guest, format: 'flat' } }));
  const sock = join(dir, 'qmp.sock');
  const vm = spawn(process.execPath, [cli, 'run', cfg, '--qmp', sock], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  vm.stderr.on('data', (b) => {
    stderr += b;
  });
  const exited = new Promise<number | null>((r) => vm.on('exit', (code) => r(code)));
  try {
    for (let i = 0; i < 1200 && !existsSync(sock); i++) await sleep(50);
    assert.equal(statSync(sock).mode & 0o777, 0o600, 'the control socket is owner-only');
    const c = await Client.connect(sock);
    const greeting = await c.next();
    assert.deepEqual(Object.keys(greeting), ['QMP']);
    assert.deepEqual((greeting.QMP as { capabilities: unknown[] }).capabilities, []);
    assert.deepEqual(await c.cmd('query-status', { id: 1 }), {
      error: { class: 'CommandNotFound', desc: "Expecting capabilities negotiation with 'qmp_capabilities'" },
      id: 1,
    });
    assert.deepEqual(await c.cmd('qmp_capabilities'), { return: {} });
    c.send('{"execute": "query-status"]');
    assert.deepEqual(await c.next(), {
      error: { class: 'GenericError', desc: 'JSON parse error, expected separator in dict' },
    });
    c.send('[1,2]');
    assert.deepEqual(await c.next(), { error: { class: 'GenericError', desc: 'QMP input must be a JSON object' } });
    assert.deepEqual(await c.cmd('no-such-command', { id: 'x' }), {
      error: { class: 'CommandNotFound', desc: 'The command no-such-command has not been found' },
      id: 'x',
    });
    assert.deepEqual(await c.cmd('query-status'), { return: { running: true, singlestep: false, status: 'running' } });
    const pci = (await c.cmd('query-pci')).return as {
      devices: { slot: number; id: { vendor: number; device: number } }[];
    }[];
    assert.deepEqual(pci[0]!.devices[0]!.id, { device: 0x0d57, vendor: 0x8086, subsystem: 0, 'subsystem-vendor': 0 });

    assert.deepEqual(await c.cmdEvents('stop'), { reply: { return: {} }, events: ['STOP'] });
    assert.deepEqual(await c.cmd('query-status'), { return: { running: false, singlestep: false, status: 'paused' } });
    // A second client waits its turn (what it sends meanwhile is read then); one that connects and
    // goes at once harms nobody; the VM and the first client carry on.
    const second = await Client.connect(sock);
    second.write({ execute: 'qmp_capabilities' });
    for (let i = 0; i < 10; i++)
      createConnection(sock)
        .on('error', () => {})
        .destroy();
    assert.deepEqual(await c.cmdEvents('cont'), { reply: { return: {} }, events: ['RESUME'] });
    assert.equal(((await c.cmd('query-status')).return as { status: string }).status, 'running');
    assert.deepEqual(second.lines, [], 'not greeted while the first client is attached');

    c.s.destroy();
    assert.deepEqual(Object.keys(await second.next()), ['QMP'], 'greeted once the first one left');
    assert.deepEqual(await second.reply(), { return: {} });
    second.s.destroy();
    // The small client: one command per call.
    const q = spawnSync(process.execPath, [cli, 'qmp', sock, 'query-status'], { encoding: 'utf8' });
    assert.equal(q.status, 0, q.stderr);
    assert.equal(JSON.parse(q.stdout).status, 'running');
    const bad = spawnSync(process.execPath, [cli, 'qmp', sock, 'nope'], { encoding: 'utf8' });
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /CommandNotFound: The command nope has not been found/);

    const c2 = await Client.connect(sock);
    await c2.next();
    await c2.cmd('qmp_capabilities');
    c2.send(JSON.stringify({ execute: 'quit' }));
    const got = [await c2.next(), await c2.next()];
    assert.ok(
      got.some((m) => JSON.stringify(m) === JSON.stringify({ return: {} })),
      JSON.stringify(got),
    );
    const ev = got.find((m) => m.event === 'SHUTDOWN');
    assert.deepEqual(ev?.data, { guest: false, reason: 'host-qmp-quit' });
    assert.equal(await exited, 0, stderr);
    assert.ok(!existsSync(sock), 'the socket is removed on exit');
  } finally {
    vm.kill('SIGKILL');
  }
});

test('QMP fds: getfd/closefd and add-fd/query-fdsets/remove-fd hold and close what SCM_RIGHTS brought; a client gone mid-handshake is harmless', async () => {
  const guest = join(dir, 'spin2.bin');
  writeFileSync(guest, Uint8Array.from([0xeb, 0xfe]));
  const cfg = join(dir, 'spin2.json');
  writeFileSync(cfg, JSON.stringify({ memory: 4, kernel: { path: guest, format: 'flat' } }));
  const sock = join(dir, 'qmp2.sock');
  const vm = spawn(process.execPath, [cli, 'run', cfg, '--qmp', sock], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<number | null>((r) => vm.on('exit', (code) => r(code)));
  const held = () =>
    readdirSync(`/proc/${vm.pid}/fd`).filter((f) => {
      try {
        return readlinkSync(`/proc/${vm.pid}/fd/${f}`) === join(dir, 'marker');
      } catch {
        return false;
      }
    }).length;
  writeFileSync(join(dir, 'marker'), '');
  try {
    for (let i = 0; i < 1200 && !existsSync(sock); i++) await sleep(50);
    // Connect and vanish before negotiating.
    (await Client.connect(sock)).s.destroy();
    await sleep(300);
    const c = await Client.connect(sock);
    await c.next();
    await c.cmd('qmp_capabilities');
    const withFd = async (execute: string, args: object) => {
      const f = openSync(join(dir, 'marker'), 'r');
      native().sendFds(
        (c.s as unknown as { _handle: { fd: number } })._handle.fd,
        Buffer.from(JSON.stringify({ execute, arguments: args }) + '\n'),
        [f],
      );
      closeSync(f);
      return c.next();
    };
    assert.deepEqual(await withFd('getfd', { fdname: 'a' }), { return: {} });
    assert.deepEqual(
      await withFd('getfd', { fdname: 'a' }),
      { return: {} },
      'the same name again replaces (and closes) the old fd',
    );
    assert.equal(held(), 1);
    assert.deepEqual(await c.cmd('closefd', { arguments: { fdname: 'a' } }), { return: {} });
    assert.equal(held(), 0);
    assert.match(
      ((await c.cmd('closefd', { arguments: { fdname: 'a' } })).error as { desc: string }).desc,
      /File descriptor named 'a' has not been found/,
    );
    const added = (await withFd('add-fd', { 'fdset-id': 3, opaque: 'disk' })).return as {
      'fdset-id': number;
      fd: number;
    };
    assert.equal(added['fdset-id'], 3);
    assert.deepEqual(await c.cmd('query-fdsets'), {
      return: [{ 'fdset-id': 3, fds: [{ fd: added.fd, opaque: 'disk' }] }],
    });
    assert.equal(held(), 1);
    // An fd sent with a command that does not take one is dropped, not leaked.
    assert.equal(((await withFd('query-status', {})).return as { status: string }).status, 'running');
    assert.equal(held(), 1);
    assert.deepEqual(await c.cmd('remove-fd', { arguments: { 'fdset-id': 3 } }), { return: {} });
    assert.equal(held(), 0);
    assert.deepEqual(await c.cmd('query-fdsets'), { return: [] });
    await c.cmd('quit');
    assert.equal(await exited, 0);
  } finally {
    vm.kill('SIGKILL');
  }
});

test('QMP system_reset: the guest boots again from its entry point (same command line), RESET follows', async () => {
  const cfg = join(dir, 'reset.json');
  writeFileSync(
    cfg,
    JSON.stringify({
      memory: 16,
      kernel: { path: join(projectRoot, 'guest/out/tsvmm-guest.elf') },
      cmdline: 'test=irq vector=64 count=1',
    }),
  );
  const sock = join(dir, 'qmp3.sock');
  const vm = spawn(process.execPath, [cli, 'run', cfg, '--qmp', sock], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '',
    stderr = '';
  vm.stdout.on('data', (b) => {
    out += b;
  });
  vm.stderr.on('data', (b) => {
    stderr += b;
  });
  const exited = new Promise<number | null>((r) => vm.on('exit', (code) => r(code)));
  const boots = () => out.split('\n').filter((l) => l === 'tsvmm-guest: start').length;
  const readies = () => out.split('\n').filter((l) => l === 'irq ready').length;
  try {
    for (let i = 0; i < 1200 && !(existsSync(sock) && readies() === 1); i++) await sleep(50); // slow under the test host's TCG
    assert.equal(readies(), 1, out);
    const c = await Client.connect(sock);
    await c.next();
    await c.cmd('qmp_capabilities');
    const r = await c.cmdEvents('system_reset');
    const evs = [...r.events];
    if (!evs.length) evs.push((await c.next()).event as string);
    assert.deepEqual(r.reply, { return: {} });
    assert.deepEqual(evs, ['RESET']);
    for (let i = 0; i < 1200 && readies() < 2; i++) await sleep(50);
    assert.equal(boots(), 2, `the guest started twice:\n${out}`);
    assert.equal(readies(), 2, out);
    assert.equal(
      out.split('\n').filter((l) => l === 'tsvmm-guest: cmdline "test=irq vector=64 count=1"').length,
      2,
      'the boot information was written again',
    );
    await c.cmd('quit');
    assert.equal(await exited, 0, stderr);
  } finally {
    vm.kill('SIGKILL');
  }
});

test('several --qmp sockets: each its own monitor and session, events to every client, quit from any', async () => {
  const guest = join(dir, 'spin2.bin');
  writeFileSync(guest, Uint8Array.from([0xeb, 0xfe])); // jmp $
  const [a, b] = [join(dir, 'qmp-a.sock'), join(dir, 'qmp-b.sock')];
  const vm = spawn(
    process.execPath,
    [cli, 'run', '--kernel', guest, '--kernel-format', 'flat', '--memory', '4', '--qmp', a, '--qmp', b],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stderr = '';
  vm.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => vm.on('exit', (code) => r(code)));
  try {
    for (let i = 0; i < 1200 && !(existsSync(a) && existsSync(b)); i++) await sleep(50);
    const ca = await Client.connect(a);
    const cb = await Client.connect(b);
    const [ga, gb] = [await ca.next(), await cb.next()];
    assert.deepEqual(ga, gb, 'both greet at once');
    assert.equal((ga.QMP as { version: { package: string } }).version.package.split(' ')[0], 'tsvmm');
    assert.deepEqual(await ca.call('qmp_capabilities'), { return: {} });
    assert.deepEqual(
      await cb.cmd('query-status'),
      {
        error: { class: 'CommandNotFound', desc: "Expecting capabilities negotiation with 'qmp_capabilities'" },
      },
      'negotiation is per monitor',
    );
    assert.deepEqual(await cb.call('qmp_capabilities'), { return: {} });
    assert.deepEqual(await ca.cmdEvents('stop'), { reply: { return: {} }, events: ['STOP'] });
    assert.equal((await cb.next()).event, 'STOP', 'the other monitor gets the event too');
    assert.equal(((await cb.call('query-status')).return as { status: string }).status, 'paused');
    // Clients connecting and going on one socket leave the other monitor alone.
    for (let i = 0; i < 10; i++)
      createConnection(a)
        .on('error', () => {})
        .destroy();
    ca.s.destroy();
    assert.deepEqual(await cb.cmdEvents('cont'), { reply: { return: {} }, events: ['RESUME'] });
    const again = await Client.connect(a);
    await again.next();
    assert.deepEqual(await again.call('qmp_capabilities'), { return: {} });
    cb.send(JSON.stringify({ execute: 'quit' }));
    assert.equal(await exited, 0, stderr);
    assert.ok(!existsSync(a) && !existsSync(b), 'both sockets removed');
  } finally {
    vm.kill('SIGKILL');
  }
});
