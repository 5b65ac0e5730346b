// The QMP server without a VM: framing as qemu.qmp sends it, QEMU's request checks and argument
// errors (the real schemas of frontend/qmp/schema.json), commands answered in order. Handlers here are
// stand-ins that echo; the machine's commands run in test/kvm/qmp*.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createConnection } from 'node:net';
import { CLOSE_DRAIN_MS, QmpServer, checkArguments, qmpTimestamp } from '../../frontend/qmp/server.js';
import { QmpTestClient } from '../helpers/qmp.js';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-qmps-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const err = (desc: string, cls = 'GenericError') => ({ error: { class: cls, desc } });

async function server(): Promise<{ srv: QmpServer; c: QmpTestClient }> {
  const order: string[] = [];
  const srv = new QmpServer(
    join(dir, `s${Math.random()}.sock`),
    {
      'query-name': () => ({ name: 'unit' }),
      stop: async () => {
        await sleep(100);
        order.push('stop');
        return {};
      }, // slow: the next command waits for it
      cont: () => {
        order.push('cont');
        return { order };
      },
      getfd: (a) => ({ got: a.fdname }),
    },
    { major: 0, minor: 1, micro: 0 },
  );
  await srv.listen();
  const c = await QmpTestClient.connect(srv.path);
  await c.next();
  return { srv, c };
}

test('framing: compact JSON with no newline, two commands in one write, one command over several writes', async () => {
  const { srv, c } = await server();
  try {
    c.s.write('{"execute":"qmp_capabilities"}');
    assert.deepEqual(await c.reply(), { return: {} });
    c.s.write('{"execute":"query-name","id":1}{"execute":"getfd","arguments":{"fdname":"x"},"id":2}');
    assert.deepEqual(await c.reply(), { return: { name: 'unit' }, id: 1 });
    assert.deepEqual(await c.reply(), { return: { got: 'x' }, id: 2 });
    for (const part of ['{"exe', 'cute":"query-', 'name"', '}']) {
      c.s.write(part);
      await sleep(30);
    }
    assert.deepEqual(await c.reply(), { return: { name: 'unit' } });
    c.s.write('{"execute":"stop"}{"execute":"cont"}');
    assert.deepEqual(await c.reply(), { return: {} });
    assert.deepEqual(await c.reply(), { return: { order: ['stop', 'cont'] } }, 'commands run one at a time, in order');
  } finally {
    c.s.destroy();
    await srv.close();
  }
});

test("request checks, negotiation and arguments answer QEMU's texts", async () => {
  const { srv, c } = await server();
  try {
    assert.deepEqual(await c.call('query-name', undefined, { id: 'a' }), {
      ...err("Expecting capabilities negotiation with 'qmp_capabilities'", 'CommandNotFound'),
      id: 'a',
    });
    assert.deepEqual(await c.call('qmp_capabilities', { enable: ['oob'] }), err("Capability 'oob' not available"));
    assert.deepEqual(await c.call('qmp_capabilities'), { return: {} });
    assert.deepEqual(
      await c.call('qmp_capabilities'),
      err('Capabilities negotiation is already complete, command ignored', 'CommandNotFound'),
    );
    assert.deepEqual(await c.call('query-name', null), err("QMP input member 'arguments' must be an object"));
    assert.deepEqual(await c.call('query-name', { bogus: 1 }), err("Parameter 'bogus' is unexpected"));
    assert.deepEqual(await c.call('getfd', {}), err("Parameter 'fdname' is missing"));
    assert.deepEqual(
      await c.call('getfd', { fdname: [] }),
      err("Invalid parameter type for 'fdname', expected: string"),
    );
    assert.deepEqual(await c.call('nope'), err('The command nope has not been found', 'CommandNotFound'));
    c.s.write('[]');
    assert.deepEqual(await c.reply(), err('QMP input must be a JSON object'));
    c.s.write('{"execute":"query-name","x":1,"id":3}');
    assert.deepEqual(await c.reply(), { ...err("QMP input member 'x' is unexpected"), id: 3 });
    c.s.write('{]');
    assert.deepEqual(await c.reply(), err('JSON parse error, expecting value'));
  } finally {
    c.s.destroy();
    await srv.close();
  }
});

test('checkArguments: nested names, enums, declared members before unexpected ones', () => {
  const msg = (cmd: string, a: Record<string, unknown>) => {
    try {
      checkArguments(cmd, a);
      return 'ok';
    } catch (e) {
      return (e as Error).message;
    }
  };
  assert.equal(msg('qmp_capabilities', { enable: ['oob', 'x'] }), "Parameter 'enable[1]' does not accept value 'x'");
  assert.equal(msg('qmp_capabilities', { enable: [1] }), "Invalid parameter type for 'enable[0]', expected: string");
  assert.equal(msg('remove-fd', { zzz: 1, fd: 'x' }), "Parameter 'fdset-id' is missing");
  assert.equal(
    msg('remove-fd', { zzz: 1, 'fdset-id': 1, fd: 'x' }),
    "Invalid parameter type for 'fd', expected: integer",
  );
  assert.equal(msg('remove-fd', { zzz: 1, 'fdset-id': 1 }), "Parameter 'zzz' is unexpected");
  assert.equal(msg('add-fd', {}), 'ok');
  assert.equal(msg('device_add', { driver: 'vfio-pci', addr: 5 }), 'ok', 'addr takes a number or a string');
});

test('event timestamps: the wall clock with microseconds', () => {
  const t = qmpTimestamp();
  assert.ok(Math.abs(t.seconds + t.microseconds / 1e6 - Date.now() / 1000) < 1);
  assert.ok(Number.isInteger(t.microseconds) && t.microseconds >= 0 && t.microseconds < 1e6);
  const many = Array.from({ length: 50 }, () => qmpTimestamp().microseconds);
  assert.ok(
    many.some((us) => us % 1000 !== 0),
    'sub-millisecond resolution',
  );
});

test('close() does not wait for a client that stopped reading (its output is dropped after CLOSE_DRAIN_MS)', async () => {
  const { srv, c } = await server();
  try {
    c.s.write('{"execute":"qmp_capabilities"}');
    assert.deepEqual(await c.reply(), { return: {} });
    c.s.pause(); // reads nothing more: the socket buffers fill and the server's writes queue up
    const big = 'x'.repeat(64 * 1024);
    for (let i = 0; i < 200; i++) srv.emit('BIG', { big }); // 12.8 MiB: more than any socket buffer holds
    const t0 = Date.now();
    await srv.close();
    const took = Date.now() - t0;
    assert.ok(took >= CLOSE_DRAIN_MS - 50 && took < CLOSE_DRAIN_MS + 2000, `close took ${took} ms`);
  } finally {
    c.s.destroy();
  }
});

test('a second client that connects and closes at once while one is attached harms nobody', async () => {
  const { srv, c } = await server();
  try {
    c.s.write('{"execute":"qmp_capabilities"}');
    assert.deepEqual(await c.reply(), { return: {} });
    // Each one is gone before the server has written to it: the write fails (EPIPE), which must
    // not become an unhandled 'error' event (it ended `tsvmm run`).
    for (let i = 0; i < 20; i++) {
      const s = createConnection(srv.path);
      s.on('error', () => {});
      s.destroy();
      const t = createConnection(srv.path, () => t.destroy());
      t.on('error', () => {});
    }
    await sleep(200);
    assert.deepEqual(await c.call('query-name'), { return: { name: 'unit' } }, 'the attached client still served');
  } finally {
    c.s.destroy();
    await srv.close();
  }
});
