// Snapshot and restore on /dev/kvm: the test guest counting on COM1 is saved to a file by QMP
// migrate and started again from it in a new process (tsvmm run --incoming): the count goes on
// with the next value, none lost or repeated. The library's save()/restore, QMP's incoming defer,
// exec: URIs, and the destination's refusals (another config, a cut or changed file) too.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { projectRoot } from '../../core/paths.js';
import { guestPaths } from '../../guest/index.js';
import { createVm, TsvmmError, type VmConfig } from '../../lib/index.js';
import { QmpTestClient } from '../helpers/qmp.js';

const cli = join(projectRoot, 'dist/bin/tsvmm.cjs');
const dir = mkdtempSync(join(tmpdir(), 'tsvmm-snap-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

const COUNT_ARGS = ['--memory', '64M', '--kernel', guestPaths().elf, '--cmdline', 'test=count', '--serial', 'stdio'];

/** A tsvmm run child with its stdout collected. */
function runChild(args: string[]): { child: ChildProcess; out: () => string; err: () => string } {
  const child = spawn(process.execPath, [cli, 'run', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '',
    err = '';
  child.stdout!.setEncoding('latin1').on('data', (c: string) => (out += c));
  child.stderr!.setEncoding('utf8').on('data', (c: string) => (err += c));
  return { child, out: () => out, err: () => err };
}

async function until(what: string, f: () => boolean, ms = 30_000): Promise<void> {
  for (const end = Date.now() + ms; !f(); ) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The counter values of whole lines (the last line may still be arriving). */
const counts = (s: string) => [...s.matchAll(/^count (\d+)\n/gm)].map((m) => Number(m[1]));

/** Every value once, each one more than the one before. */
function assertConsecutive(values: number[], what: string): void {
  for (let i = 1; i < values.length; i++)
    assert.equal(values[i], values[i - 1]! + 1, `${what}: ${values[i - 1]} then ${values[i]}`);
}

async function migrationEvent(q: QmpTestClient, status: string): Promise<void> {
  for (;;) {
    const m = q.events.shift() ?? (await q.next(30_000));
    if (m.event !== 'MIGRATION') continue;
    const got = (m.data as { status: string }).status;
    if (got === status) return;
    if (['completed', 'failed', 'cancelled'].includes(got)) assert.fail(`migration ${got}, not ${status}`);
  }
}

test('QMP migrate to a file, tsvmm run --incoming in a new process: the count goes on, nothing lost or repeated', async () => {
  const sock = join(dir, 'src.qmp'),
    file = join(dir, 'count.snap');
  const src = runChild([...COUNT_ARGS, '--qmp', sock]);
  try {
    await until('the source to count past 100', () => counts(src.out()).length > 100);
    const q = await QmpTestClient.connect(sock);
    await q.next(); // greeting
    await q.call('qmp_capabilities');
    assert.deepEqual(await q.call('query-migrate'), { return: {} }, 'no migration yet: an empty MigrationInfo');
    assert.deepEqual(await q.call('migrate', { uri: `file:${file}` }), { return: {} });
    await migrationEvent(q, 'completed');
    const info = (await q.call('query-migrate')).return as Record<string, unknown>;
    assert.equal(info.status, 'completed');
    const ram = info.ram as Record<string, number>;
    assert.equal(ram.total, 64 * 2 ** 20);
    assert.equal(ram.remaining, 0);
    assert.equal(ram.transferred, statSync(file).size, 'transferred is the stream the file holds');
    assert.ok(ram.duplicate > 0 && ram.normal > 0, 'zero pages went as flags, the guest image as data');
    assert.ok(ram.transferred < ram.total / 2, 'a mostly empty guest makes a small file');
    for (const k of ['total-time', 'downtime', 'setup-time']) assert.equal(typeof info[k], 'number', k);
    // Pre-copy: RAM went while the guest ran, then what it rewrote once it stopped.
    assert.ok(ram['dirty-sync-count']! >= 2, `${ram['dirty-sync-count']} RAM passes`);
    assert.ok(
      (info['total-time'] as number) >= (info.downtime as number),
      `downtime ${String(info.downtime)} ms of ${String(info['total-time'])} ms`,
    );
    assert.doesNotMatch(src.err(), /no dirty log/);
    assert.deepEqual((await q.call('query-status')).return, {
      running: false,
      singlestep: false,
      status: 'postmigrate',
    });
    const before = counts(src.out()).length;
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(counts(src.out()).length, before, 'the source stays stopped after migrate');
    await q.call('quit');
    await once(src.child, 'exit');
  } finally {
    src.child.kill('SIGKILL');
  }
  const saved = counts(src.out());
  assertConsecutive(saved, 'source');
  assert.ok(saved.length > 100);

  const dst = runChild([...COUNT_ARGS, '--incoming', `file:${file}`]);
  try {
    await until('the restored guest to count 50 more', () => counts(dst.out()).length >= 50);
    assert.doesNotMatch(dst.out(), /tsvmm-guest: start/, 'the guest did not boot again');
    // The stop may fall inside a line: the source's output and the destination's together are
    // the whole count, each value once.
    const all = counts(src.out() + dst.out());
    assert.equal(all[0], 1);
    assert.ok(all.length >= saved.length + 49, `${all.length} values`);
    assertConsecutive(
      all,
      `source then destination (…${JSON.stringify(src.out().slice(-30))} | ${JSON.stringify(dst.out().slice(0, 30))}…)`,
    );
  } finally {
    dst.child.kill('SIGTERM');
    await once(dst.child, 'exit');
  }
  assert.equal(dst.child.exitCode, 143, dst.err());
});

const CONFIG: VmConfig = {
  name: 'count',
  memory: '32M',
  vcpus: 2, // an application processor waiting for INIT/SIPI is state too
  kernel: { path: guestPaths().elf },
  cmdline: 'test=count',
};

test('library: save() then createVm({restore}); a config that differs or a cut or changed file is refused by name', async () => {
  const file = join(dir, 'lib.snap');
  const vm = await createVm(CONFIG);
  let before: string;
  try {
    vm.start();
    await vm.waitForSerial(/count 30\n/);
    await vm.save(file);
    assert.equal(vm.status(), 'postmigrate');
    before = vm.serial;
  } finally {
    await vm.close();
  }
  const again = await createVm(CONFIG, { restore: file });
  try {
    assert.equal(again.status(), 'paused', 'restored, not started');
    again.start();
    await again.waitForSerial(/count \d+\n(.*\n){10}/);
    const c = counts(before + again.serial);
    assert.equal(c[0], 1);
    assert.ok(c.length > 40);
    assertConsecutive(c, 'saved then restored');
  } finally {
    await again.close();
  }

  const refused = async (cfg: VmConfig, path: string, re: RegExp) => {
    await assert.rejects(createVm(cfg, { restore: path }), (e: unknown) => {
      assert.ok(e instanceof TsvmmError, String(e));
      assert.equal(e.code, 'ERR_MIGRATION');
      assert.match(e.message, re);
      return true;
    });
  };
  await refused(
    { ...CONFIG, memory: '64M' },
    file,
    /section 'header': config mismatch: memory is 33554432 in the stream, 67108864 here/,
  );
  await refused({ ...CONFIG, vcpus: 1 }, file, /config mismatch: .*vcpus is 2 in the stream, 1 here/);
  const bytes = readFileSync(file);
  writeFileSync(join(dir, 'cut.snap'), bytes.subarray(0, bytes.length - 3000));
  await refused(CONFIG, join(dir, 'cut.snap'), /truncated/);
  const changed = Buffer.from(bytes);
  changed[Math.floor(changed.length / 2)]! ^= 0x10;
  writeFileSync(join(dir, 'changed.snap'), changed);
  await refused(CONFIG, join(dir, 'changed.snap'), /section '[^']+': checksum mismatch/);
});

test('QMP: exec: out, --incoming defer and migrate-incoming with exec: in; the events and run states on the way', async () => {
  const srcSock = join(dir, 'a.qmp'),
    dstSock = join(dir, 'b.qmp'),
    file = join(dir, 'exec.snap');
  const src = runChild([...COUNT_ARGS, '--qmp', srcSock, '--sandbox', 'off']);
  const dst = runChild([...COUNT_ARGS, '--qmp', dstSock, '--incoming', 'defer']);
  try {
    await until('the source to count', () => counts(src.out()).length > 20);
    const a = await QmpTestClient.connect(srcSock);
    await a.next();
    await a.call('qmp_capabilities');
    assert.deepEqual(await a.call('migrate', { uri: `exec:cat > '${file}'` }), { return: {} });
    const seen: string[] = [];
    for (;;) {
      const m = a.events.shift() ?? (await a.next(30_000));
      if (m.event === 'MIGRATION') seen.push((m.data as { status: string }).status);
      if (m.event === 'STOP') seen.push('STOP');
      if (seen.at(-1) === 'completed' || seen.at(-1) === 'failed') break;
    }
    assert.deepEqual(seen, ['setup', 'active', 'STOP', 'completed']);
    await a.call('quit');

    const b = await QmpTestClient.connect(dstSock);
    await b.next();
    await b.call('qmp_capabilities');
    assert.equal(((await b.call('query-status')).return as { status: string }).status, 'inmigrate');
    assert.equal(counts(dst.out()).length, 0, 'nothing runs before the state is in');
    const wrong = await b.call('migrate', { uri: `file:${join(dir, 'x')}` });
    assert.match(JSON.stringify(wrong), /waiting for an incoming migration/);
    assert.deepEqual(await b.call('migrate-incoming', { uri: `exec:cat '${file}'` }), { return: {} });
    await migrationEvent(b, 'completed');
    await until('the destination to count', () => counts(dst.out()).length > 10).catch((e: Error) => {
      throw new Error(`${e.message}; destination stderr: ${dst.err()}; stdout: ${dst.out().slice(0, 200)}`);
    });
    const all = counts(src.out() + dst.out());
    assert.equal(all[0], 1);
    assertConsecutive(all, 'source then destination');
    assert.equal(((await b.call('query-status')).return as { status: string }).status, 'running');
    const again = await b.call('migrate-incoming', { uri: `file:${file}` });
    assert.match(JSON.stringify(again), /GenericError.*The incoming migration has already been started/);
  } finally {
    src.child.kill('SIGKILL');
    dst.child.kill('SIGKILL');
  }
});

test('an incoming stream the destination refuses: it exits 1 saying which section and why', async () => {
  const file = join(dir, 'garbage.snap');
  writeFileSync(file, 'TSVMM\0MG' + '\xff'.repeat(40));
  const dst = runChild([...COUNT_ARGS, '--incoming', `file:${file}`]);
  await once(dst.child, 'exit');
  assert.equal(dst.child.exitCode, 1);
  assert.match(dst.err(), /load of migration failed: migration stream, section 'header': /);
  assert.equal(counts(dst.out()).length, 0);
});

test('unix: from one tsvmm to another; a destination that dies mid-stream, and a cancel, leave the source running', async () => {
  const srcSock = join(dir, 'u-src.qmp'),
    mig = join(dir, 'mig.sock');
  const src = runChild([...COUNT_ARGS, '--qmp', srcSock, '--sandbox', 'off']);
  let dst: ReturnType<typeof runChild> | undefined;
  try {
    await until('the source to count', () => counts(src.out()).length > 20);
    const q = await QmpTestClient.connect(srcSock);
    await q.next();
    await q.call('qmp_capabilities');
    const status = async () => ((await q.call('query-status')).return as { status: string }).status;
    const countsGrow = async (what: string) => {
      const n = counts(src.out()).length;
      await until(what, () => counts(src.out()).length > n + 20);
    };

    // A destination that reads a little and goes away (the stream is more than the 64 KiB a pipe
    // holds): failed, the source resumes (RESUME).
    assert.deepEqual(await q.call('migrate', { uri: 'exec:head -c 1000 >/dev/null' }), { return: {} });
    await migrationEvent(q, 'failed');
    const failed = (await q.call('query-migrate')).return as Record<string, unknown>;
    assert.equal(failed.status, 'failed');
    assert.match(String(failed['error-desc']), /EPIPE|status/i);
    assert.equal(await status(), 'running');
    await countsGrow('the source to count on after the failed migration');

    // A destination that reads nothing (a command that does not read its stdin: the pipe fills at
    // 64 KiB, less than this guest's stream): the save waits on it until migrate_cancel.
    assert.deepEqual(await q.call('migrate', { uri: 'exec:sleep 60' }), { return: {} });
    await migrationEvent(q, 'active');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(((await q.call('query-migrate')).return as { status: string }).status, 'active');
    assert.equal(await status(), 'finish-migrate');
    assert.deepEqual(await q.call('migrate_cancel'), { return: {} });
    await migrationEvent(q, 'cancelled');
    assert.equal(await status(), 'running');
    await countsGrow('the source to count on after the cancel');

    // And a real destination: the whole state over the socket, the count goes on there (QEMU's
    // parameters first: the defaults, a value QEMU refuses, one it takes).
    assert.deepEqual(await q.call('query-migrate-parameters'), {
      return: { 'downtime-limit': 300, 'max-bandwidth': 128 * 2 ** 20 },
    });
    assert.match(
      JSON.stringify(await q.call('migrate-set-parameters', { 'downtime-limit': -1 })),
      /downtime_limit' expects an integer in the range of 0 to 2000 seconds/,
    );
    assert.deepEqual(await q.call('migrate-set-parameters', { 'downtime-limit': 0 }), { return: {} });
    dst = runChild([...COUNT_ARGS, '--incoming', `unix:${mig}`]);
    await until('the destination to listen', () => existsSync(mig));
    assert.deepEqual(await q.call('migrate', { uri: `unix:${mig}` }), { return: {} });
    await migrationEvent(q, 'completed');
    assert.deepEqual(await q.call('query-migrate-parameters'), {
      return: { 'downtime-limit': 0, 'max-bandwidth': 128 * 2 ** 20 },
    });
    await until('the destination to count', () => counts(dst!.out()).length > 20);
    const all = counts(src.out() + dst.out());
    assert.equal(all[0], 1);
    assertConsecutive(all, 'source then destination');
  } finally {
    src.child.kill('SIGKILL');
    dst?.child.kill('SIGKILL');
  }
});

test('a destination waiting for migrate-incoming ends on SIGTERM (143), its QMP socket removed', async () => {
  const sock = join(dir, 'wait.qmp');
  const dst = runChild([...COUNT_ARGS, '--qmp', sock, '--incoming', 'defer']);
  const q = await QmpTestClient.connect(sock);
  await q.next();
  await q.call('qmp_capabilities');
  assert.equal(((await q.call('query-status')).return as { status: string }).status, 'inmigrate');
  dst.child.kill('SIGTERM');
  await once(dst.child, 'exit');
  assert.equal(dst.child.exitCode, 143, dst.err());
  assert.match(dst.err(), /interrupted \(SIGTERM\) while waiting for the incoming migration/);
  assert.equal(existsSync(sock), false);
});

test('live: a guest rewriting and checking 16 MiB per count moves over unix: with no stale page', async () => {
  const args = [...COUNT_ARGS.slice(0, -4), '--cmdline', 'test=count dirty=16', '--serial', 'stdio'];
  const srcSock = join(dir, 'live.qmp'),
    mig = join(dir, 'live.sock');
  const src = runChild([...args, '--qmp', srcSock, '--sandbox', 'off']);
  const dst = runChild([...args, '--incoming', `unix:${mig}`]);
  try {
    await until('the source to count', () => counts(src.out()).length > 30);
    await until('the destination to listen', () => existsSync(mig));
    const q = await QmpTestClient.connect(srcSock);
    await q.next();
    await q.call('qmp_capabilities');
    assert.deepEqual(await q.call('migrate', { uri: `unix:${mig}` }), { return: {} });
    await migrationEvent(q, 'completed');
    const info = (await q.call('query-migrate')).return as { ram: Record<string, number>; downtime: number };
    assert.ok(info.ram['dirty-sync-count']! >= 2, `${info.ram['dirty-sync-count']} passes`);
    assert.ok(info.ram.normal! * 4096 >= 16 * 2 ** 20, 'the rewritten buffer went as data');
    await until('the destination to count 50', () => counts(dst.out()).length > 50);
    assert.doesNotMatch(dst.out() + src.out(), /mismatch/);
    const all = counts(src.out() + dst.out());
    assert.equal(all[0], 1);
    assertConsecutive(all, 'source then destination');
  } finally {
    src.child.kill('SIGKILL');
    dst.child.kill('SIGKILL');
  }
});

test('tcp: on loopback, from one tsvmm to another', async () => {
  const srcSock = join(dir, 'tcp.qmp');
  const port = 20000 + Math.floor(Math.random() * 20000);
  const src = runChild([...COUNT_ARGS, '--qmp', srcSock, '--sandbox', 'off']);
  const dst = runChild([...COUNT_ARGS, '--incoming', `tcp:127.0.0.1:${port}`]);
  try {
    await until('the source to count', () => counts(src.out()).length > 20);
    const q = await QmpTestClient.connect(srcSock);
    await q.next();
    await q.call('qmp_capabilities');
    // The destination listens once it is set up: until then the connection is refused, at once.
    for (let i = 0; ; i++) {
      const r = await q.call('migrate', { uri: `tcp:127.0.0.1:${port}` });
      if (!('error' in r)) break;
      assert.match(JSON.stringify(r), /ECONNREFUSED/);
      q.events.length = 0; // that attempt's setup and failed came before its reply
      assert.ok(i < 100, `the destination never listened: ${dst.err()}`);
      await new Promise((res) => setTimeout(res, 100));
    }
    await migrationEvent(q, 'completed');
    await until('the destination to count', () => counts(dst.out()).length > 20);
    const all = counts(src.out() + dst.out());
    assert.equal(all[0], 1);
    assertConsecutive(all, 'source then destination');
  } finally {
    src.child.kill('SIGKILL');
    dst.child.kill('SIGKILL');
  }
});

test('fd: an fd passed with getfd takes the stream under the sandbox; exec: is refused there, naming why', async () => {
  const { native } = await import('../../core/native.js');
  const { openSync, closeSync } = await import('node:fs');
  const sock = join(dir, 'fd.qmp'),
    file = join(dir, 'fd.snap');
  const src = runChild([...COUNT_ARGS, '--qmp', sock]); // the sandbox is on
  try {
    await until('the source to count', () => counts(src.out()).length > 20);
    const q = await QmpTestClient.connect(sock);
    await q.next();
    await q.call('qmp_capabilities');
    const refused = await q.call('migrate', { uri: `exec:cat > '${file}'` });
    assert.match(JSON.stringify(refused), /the sandbox allows no new processes or sockets/);
    assert.equal(((await q.call('query-status')).return as { status: string }).status, 'running');
    q.events.length = 0;
    const f = openSync(file, 'w');
    native().sendFds(
      (q.s as unknown as { _handle: { fd: number } })._handle.fd,
      Buffer.from(JSON.stringify({ execute: 'getfd', arguments: { fdname: 'mig' } }) + '\n'),
      [f],
    );
    closeSync(f);
    assert.deepEqual(await q.reply(), { return: {} });
    assert.deepEqual(await q.call('migrate', { uri: 'fd:mig' }), { return: {} });
    await migrationEvent(q, 'completed');
    await q.call('quit');
    await once(src.child, 'exit');
  } finally {
    src.child.kill('SIGKILL');
  }
  assert.doesNotMatch(src.err(), /sandbox stopped/);
  const dst = runChild([...COUNT_ARGS, '--incoming', `file:${file}`]);
  try {
    await until('the restored guest to count', () => counts(dst.out()).length > 20);
    const all = counts(src.out() + dst.out());
    assert.equal(all[0], 1);
    assertConsecutive(all, 'source then destination');
  } finally {
    dst.child.kill('SIGKILL');
  }
});
