// The QMP server without a VM: framing as qemu.qmp sends it, QEMU's request checks and argument
// errors (the real schemas of frontend/qmp/schema.json), commands answered in order. Handlers here are
// stand-ins that echo; the machine's commands run in test/kvm/qmp*.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createConnection } from 'node:net';
import { CLOSE_DRAIN_MS, MAX_WAITING, QmpServer, checkArguments, qmpTimestamp } from '../../frontend/qmp/server.js';
import { MAX_NESTING } from '../../frontend/qmp/json.js';
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
    { qemu: { major: 7, minor: 2, micro: 0 }, package: 'unit' },
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

/** The fds this process has open. */
const openFds = () => readdirSync('/proc/self/fd').length;
/** Resolves when the socket closes (the server ended the session). */
const closed = (c: QmpTestClient) => new Promise<void>((r) => (c.s.destroyed ? r() : c.s.once('close', () => r())));

test('waiting clients are served in turn: greeted when the active one leaves, what they sent meanwhile read then', async () => {
  const { srv, c } = await server();
  try {
    assert.deepEqual(await c.call('qmp_capabilities'), { return: {} });
    const b = await QmpTestClient.connect(srv.path);
    b.write({ execute: 'qmp_capabilities' });
    b.write({ execute: 'query-name', id: 'b' });
    const d = await QmpTestClient.connect(srv.path);
    for (let i = 0; i < 100 && srv.waitingCount < 2; i++) await sleep(10);
    assert.equal(srv.waitingCount, 2);
    assert.deepEqual(await c.call('query-name'), { return: { name: 'unit' } }, 'the active client is still served');
    assert.deepEqual(b.lines, [], 'no greeting while waiting');
    srv.emit('STOP');
    c.s.destroy();
    assert.deepEqual(Object.keys(await b.next()), ['QMP']);
    assert.deepEqual(await b.reply(), { return: {} });
    assert.deepEqual(await b.reply(), { return: { name: 'unit' }, id: 'b' });
    assert.deepEqual(d.lines, [], 'the third waits for the second');
    b.s.destroy();
    assert.deepEqual(Object.keys(await d.next()), ['QMP']);
    assert.deepEqual(await d.call('qmp_capabilities'), { return: {} });
    d.s.destroy();
  } finally {
    c.s.destroy();
    await srv.close();
  }
});

test('a client that vanishes at any stage ends only its own session (no fd kept, the next one served)', async () => {
  const { srv, c } = await server();
  c.s.destroy();
  const fds0 = openFds();
  const stages: Record<string, (x: QmpTestClient) => Promise<void>> = {
    'before reading the greeting': async () => {},
    'after the greeting': async (x) => void (await x.next()),
    'mid-command': async (x) => {
      await x.next();
      x.s.write('{"execute":"qmp_capabilities"}{"execute":"query-na');
      await sleep(20);
    },
    'with unread replies': async (x) => {
      await x.next();
      x.s.pause();
      x.s.write('{"execute":"qmp_capabilities"}' + '{"execute":"query-name"}'.repeat(5000));
      await sleep(50);
    },
    'during events': async (x) => {
      await x.next();
      assert.deepEqual(await x.call('qmp_capabilities'), { return: {} });
      x.s.pause();
      const big = 'e'.repeat(64 * 1024);
      for (let i = 0; i < 50; i++) srv.emit('BIG', { big });
    },
    'mid-greeting (the socket gone before the server wrote)': async () => {},
  };
  try {
    for (const [stage, run] of Object.entries(stages)) {
      const x = await QmpTestClient.connect(srv.path);
      await run(x);
      x.s.destroy();
      if (stage.startsWith('mid-greeting'))
        for (let i = 0; i < 10; i++)
          createConnection(srv.path)
            .on('error', () => {})
            .destroy();
      const y = await QmpTestClient.connect(srv.path);
      assert.deepEqual(Object.keys(await y.next()), ['QMP'], `served after a client vanished ${stage}`);
      assert.deepEqual(await y.call('qmp_capabilities'), { return: {} });
      assert.deepEqual(await y.call('query-name'), { return: { name: 'unit' } });
      y.s.destroy();
      await closed(y);
    }
    for (let i = 0; i < 100 && openFds() > fds0; i++) await sleep(10);
    assert.equal(openFds(), fds0, 'every socket released');
  } finally {
    await srv.close();
  }
});

test("a session over one of QEMU's limits gets QEMU's error, then is closed; the next client is served", async () => {
  const { srv, c } = await server();
  try {
    assert.deepEqual(await c.call('qmp_capabilities'), { return: {} });
    const next = await QmpTestClient.connect(srv.path);
    c.s.write('{"execute":"query-name","id":1}' + '['.repeat(MAX_NESTING + 1) + '{"execute":"query-name","id":2}');
    assert.deepEqual(await c.reply(), { return: { name: 'unit' }, id: 1 }, 'what came before is answered');
    assert.deepEqual(await c.reply(), err('JSON nesting depth limit exceeded'));
    await closed(c);
    assert.deepEqual(c.lines, [], 'nothing after the limit is read');
    assert.deepEqual(Object.keys(await next.next()), ['QMP']);
    next.s.destroy();
  } finally {
    c.s.destroy();
    await srv.close();
  }
});

test('a waiting client that hangs up is let go while it waits (its fd released)', async () => {
  const { srv, c } = await server();
  try {
    const fds0 = openFds();
    for (let i = 0; i < MAX_WAITING + 8; i++) {
      const w = await QmpTestClient.connect(srv.path);
      w.s.destroy();
    }
    for (let i = 0; i < 300 && (openFds() > fds0 || srv.waitingCount > 0); i++) await sleep(10);
    assert.equal(srv.waitingCount, 0);
    assert.equal(openFds(), fds0);
    assert.deepEqual(await c.call('qmp_capabilities'), { return: {} });
  } finally {
    c.s.destroy();
    await srv.close();
  }
});
