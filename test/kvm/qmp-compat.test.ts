// QMP as QEMU's own clients speak it. qemu.qmp (the Python library behind QEMUMonitorProtocol,
// QMPClient and qmp-shell) is not installable here (no PyPI, no Debian package), so this test
// reproduces its wire behaviour: it sends each command as compact JSON (json.dumps with
// separators=(',', ':')) with no newline, and reads replies line by line (readline). Then several
// commands in one write and one command split over writes, and every strict-argument error,
// compared with the texts QEMU answers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { projectRoot } from '../../core/paths.js';
import { QmpTestClient } from '../helpers/qmp.js';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-qmpc-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const cli = join(projectRoot, 'dist/bin/tsvmm.cjs');

async function startVm(
  name: string,
): Promise<{ sock: string; exited: Promise<number | null>; kill: () => void; stderr: () => string }> {
  const guest = join(dir, `${name}.bin`);
  writeFileSync(guest, Uint8Array.from([0xeb, 0xfe])); // jmp $
  const cfg = join(dir, `${name}.json`);
  writeFileSync(cfg, JSON.stringify({ name: `vm-${name}`, memory: 4, kernel: { path: guest, format: 'flat' } }));
  const sock = join(dir, `${name}.sock`);
  const vm = spawn(process.execPath, [cli, 'run', cfg, '--qmp', sock], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  vm.stderr.on('data', (b) => {
    stderr += b;
  });
  const exited = new Promise<number | null>((r) => vm.on('exit', (code) => r(code)));
  for (let i = 0; i < 1200 && !existsSync(sock); i++) await sleep(50);
  return { sock, exited, kill: () => vm.kill('SIGKILL'), stderr: () => stderr };
}

const err = (desc: string, cls = 'GenericError') => ({ error: { class: cls, desc } });

test('qemu.qmp-style framing: compact JSON without newlines, two commands in one write, one command over several writes', async () => {
  const vm = await startVm('framing');
  try {
    const c = await QmpTestClient.connect(vm.sock);
    const greeting = await c.next();
    assert.deepEqual(Object.keys(greeting.QMP as object).sort(), ['capabilities', 'version']);
    // QEMUMonitorProtocol.connect(negotiate=True): {"execute":"qmp_capabilities"} with no newline.
    c.s.write('{"execute":"qmp_capabilities"}');
    assert.deepEqual(await c.reply(), { return: {} });
    c.s.write('{"execute":"query-status","id":1}{"execute":"query-name","id":"two"}');
    assert.deepEqual(await c.reply(), { return: { running: true, singlestep: false, status: 'running' }, id: 1 });
    assert.deepEqual(await c.reply(), { return: { name: 'vm-framing' }, id: 'two' });
    const msg = Buffer.from('{"execute":"query-version","id":{"n":[1,2]}}');
    for (const part of [msg.subarray(0, 5), msg.subarray(5, 19), msg.subarray(19, 20), msg.subarray(20)]) {
      c.s.write(part);
      await sleep(60); // separate reads on the VMM's side
    }
    const v = await c.reply();
    assert.deepEqual(v.id, { n: [1, 2] });
    assert.deepEqual(
      (v.return as { qemu: unknown }).qemu,
      { major: 7, minor: 2, micro: 0 },
      "the QEMU whose QMP tsvmm's is",
    );
    assert.match((v.return as { package: string }).package, /^tsvmm \d+\.\d+\.\d+/);
    assert.equal(c.lines.length, 0, 'one reply per command');
    // A syntax error gets QEMU's answer and the stream carries on.
    c.s.write('{"execute":"query-name",}');
    assert.deepEqual(await c.reply(), err('JSON parse error, expecting value'));
    c.s.write('{"execute":"query-name"}');
    assert.deepEqual(await c.reply(), { return: { name: 'vm-framing' } });
    await c.call('quit');
    assert.equal(await vm.exited, 0, vm.stderr());
  } finally {
    vm.kill();
  }
});

test("strict arguments: QEMU's classes and texts for missing, unexpected and mistyped members", async () => {
  const vm = await startVm('strict');
  try {
    const c = await QmpTestClient.connect(vm.sock);
    await c.next();
    // Before negotiation: capabilities tsvmm did not offer, and argument checks on qmp_capabilities.
    assert.deepEqual(await c.call('qmp_capabilities', { enable: ['oob'] }), err("Capability 'oob' not available"));
    assert.deepEqual(
      await c.call('qmp_capabilities', { enable: ['foo'] }),
      err("Parameter 'enable[0]' does not accept value 'foo'"),
    );
    assert.deepEqual(
      await c.call('qmp_capabilities', { enable: 'oob' }),
      err("Invalid parameter type for 'enable', expected: array"),
    );
    assert.deepEqual(await c.call('qmp_capabilities', { bogus: 1 }), err("Parameter 'bogus' is unexpected"));
    assert.deepEqual(await c.call('query-status', undefined, { id: 7 }), {
      ...err("Expecting capabilities negotiation with 'qmp_capabilities'", 'CommandNotFound'),
      id: 7,
    });
    assert.deepEqual(await c.call('qmp_capabilities', { enable: [] }), { return: {} });
    assert.deepEqual(
      await c.call('qmp_capabilities'),
      err('Capabilities negotiation is already complete, command ignored', 'CommandNotFound'),
    );

    // The request object itself (qmp_dispatch_check_obj).
    assert.deepEqual(await c.call('query-status', null, { id: 'n' }), {
      ...err("QMP input member 'arguments' must be an object"),
      id: 'n',
    });
    assert.deepEqual(await c.call('query-status', [1]), err("QMP input member 'arguments' must be an object"));
    assert.deepEqual(
      await c.call('query-status', undefined, { bogus: 1 }),
      err("QMP input member 'bogus' is unexpected"),
    );
    c.write({ execute: 1 });
    assert.deepEqual(await c.reply(), err("QMP input member 'execute' must be a string"));
    c.write({ id: 5 });
    assert.deepEqual(await c.reply(), { ...err("QMP input lacks member 'execute'"), id: 5 });
    assert.deepEqual(await c.call('exec-oob'), err('The command exec-oob has not been found', 'CommandNotFound'));

    // Unexpected members, for commands without and with arguments.
    assert.deepEqual(await c.call('query-status', { bogus: 1 }), err("Parameter 'bogus' is unexpected"));
    assert.deepEqual(await c.call('stop', { x: true }), err("Parameter 'x' is unexpected"));
    assert.deepEqual(
      await c.call('query-status'),
      { return: { running: true, singlestep: false, status: 'running' } },
      'a refused stop did not stop',
    );
    assert.deepEqual(await c.call('device_del', { id: 'x', force: true }), err("Parameter 'force' is unexpected"));
    // Missing (reported before unexpected, as QEMU's visitor meets them).
    assert.deepEqual(await c.call('getfd', {}), err("Parameter 'fdname' is missing"));
    assert.deepEqual(await c.call('getfd', { bogus: 1 }), err("Parameter 'fdname' is missing"));
    assert.deepEqual(await c.call('device_del', {}), err("Parameter 'id' is missing"));
    assert.deepEqual(await c.call('remove-fd', { fd: 3 }), err("Parameter 'fdset-id' is missing"));
    assert.deepEqual(await c.call('device_add', { id: 'd' }), err("Parameter 'driver' is missing"));
    // Mistyped.
    assert.deepEqual(
      await c.call('getfd', { fdname: 1 }),
      err("Invalid parameter type for 'fdname', expected: string"),
    );
    assert.deepEqual(
      await c.call('remove-fd', { 'fdset-id': 'x' }),
      err("Invalid parameter type for 'fdset-id', expected: integer"),
    );
    assert.deepEqual(
      await c.call('remove-fd', { 'fdset-id': 1.5 }),
      err("Invalid parameter type for 'fdset-id', expected: integer"),
    );
    assert.deepEqual(
      await c.call('add-fd', { opaque: false }),
      err("Invalid parameter type for 'opaque', expected: string"),
    );
    assert.deepEqual(
      await c.call('device_del', { id: null }),
      err("Invalid parameter type for 'id', expected: string"),
    );
    // device_add's other members are the device's properties.
    assert.deepEqual(
      await c.call('device_add', { driver: 'vfio-pci', id: 'd', bogus: 1 }),
      err("Property 'vfio-pci.bogus' not found"),
    );
    assert.match(
      ((await c.call('device_add', { driver: 'e1000', id: 'd' })).error as { desc: string }).desc,
      /^'e1000' is not a valid device model name/,
    );
    assert.deepEqual(
      await c.call('device_add', { driver: 'vfio-pci', id: 'd', host: '0000:00:1f.0', addr: 'zz' }),
      err("Property 'vfio-pci.addr' doesn't take value 'zz'"),
    );
    assert.deepEqual(await c.call('device_del', { id: 'nope' }), err("Device 'nope' not found", 'DeviceNotFound'));
    await c.call('quit');
    assert.equal(await vm.exited, 0, vm.stderr());
  } finally {
    vm.kill();
  }
});

test('query-name, query-pci (schema-complete), query-qmp-schema (SchemaInfo), system_powerdown, µs timestamps', async () => {
  const vm = await startVm('schema');
  try {
    const c = await QmpTestClient.connect(vm.sock);
    await c.next();
    await c.call('qmp_capabilities');
    assert.deepEqual(await c.call('query-name'), { return: { name: 'vm-schema' } });
    const pci = (await c.call('query-pci')).return as { bus: number; devices: Record<string, unknown>[] }[];
    assert.deepEqual(pci[0]!.devices[0], {
      bus: 0,
      slot: 0,
      function: 0,
      class_info: { desc: 'Host bridge', class: 0x0600 },
      id: { device: 0x0d57, vendor: 0x8086, subsystem: 0, 'subsystem-vendor': 0 },
      irq_pin: 0,
      qdev_id: 'pci-host-bridge',
      regions: [],
    });

    // SchemaInfo: every command and event tsvmm has, every type they name defined once.
    type Info = Record<string, unknown> & { name: string; 'meta-type': string };
    const schema = (await c.call('query-qmp-schema')).return as Info[];
    const byName = new Map(schema.map((e) => [e.name, e]));
    assert.equal(byName.size, schema.length, 'names are unique');
    const commands = ((await c.call('query-commands')).return as { name: string }[]).map((x) => x.name).sort();
    assert.deepEqual(
      schema
        .filter((e) => e['meta-type'] === 'command')
        .map((e) => e.name)
        .sort(),
      commands,
    );
    for (const ev of ['STOP', 'RESUME', 'RESET', 'SHUTDOWN', 'POWERDOWN', 'DEVICE_DELETED'])
      assert.equal(byName.get(ev)?.['meta-type'], 'event', ev);
    const refs = (e: Info): string[] =>
      [
        e['arg-type'],
        e['ret-type'],
        e['element-type'],
        ...((e.members as { type?: string }[] | undefined) ?? []).map((m) => m.type),
        ...((e.variants as { type: string }[] | undefined) ?? []).map((v) => v.type),
      ].filter((x): x is string => typeof x === 'string');
    for (const e of schema)
      for (const r of refs(e)) assert.ok(byName.has(r), `${e.name} refers to undefined type ${r}`);
    const resolve = (n: string) => byName.get(n)!;
    const pciInfo = resolve(resolve(resolve('query-pci')['ret-type'] as string)['element-type'] as string);
    const devInfo = resolve(
      resolve((pciInfo.members as { name: string; type: string }[]).find((m) => m.name === 'devices')!.type)[
        'element-type'
      ] as string,
    );
    const members = devInfo.members as { name: string; type: string; default?: null }[];
    assert.deepEqual(
      members.find((m) => m.name === 'irq_pin'),
      { name: 'irq_pin', type: 'int' },
    );
    assert.deepEqual(
      members.find((m) => m.name === 'irq'),
      { name: 'irq', type: 'int', default: null },
      'optional members carry "default": null',
    );
    assert.deepEqual(resolve('getfd')['arg-type'] && resolve(resolve('getfd')['arg-type'] as string).members, [
      { name: 'fdname', type: 'str' },
    ]);
    assert.deepEqual(resolve(resolve('stop')['arg-type'] as string), { name: '0', 'meta-type': 'object', members: [] });
    assert.deepEqual(resolve('str'), { name: 'str', 'meta-type': 'builtin', 'json-type': 'string' });

    // system_powerdown: POWERDOWN; tsvmm has no ACPI power button, so the guest (as a QEMU guest
    // ignoring the button) runs on.
    assert.deepEqual(await c.call('system_powerdown'), { return: {} });
    for (let i = 0; i < 20 && !c.events.some((e) => e.event === 'POWERDOWN'); i++) c.events.push(await c.next());
    const pd = c.events.find((e) => e.event === 'POWERDOWN')!;
    assert.ok(pd && !('data' in pd), JSON.stringify(c.events));
    assert.equal(((await c.call('query-status')).return as { status: string }).status, 'running');

    // Timestamps: seconds + microseconds of the wall clock, with sub-millisecond resolution.
    const stamps: { seconds: number; microseconds: number }[] = [];
    for (let i = 0; i < 4; i++) {
      await c.call('stop');
      await c.call('cont');
    }
    for (let i = 0; i < 20 && c.events.length < 9; i++) c.events.push(await c.next());
    for (const e of c.events) stamps.push(e.timestamp as { seconds: number; microseconds: number });
    const now = Date.now() / 1000;
    for (const t of stamps) {
      assert.ok(Number.isInteger(t.seconds) && Math.abs(t.seconds - now) < 60, JSON.stringify(t));
      assert.ok(Number.isInteger(t.microseconds) && t.microseconds >= 0 && t.microseconds < 1e6, JSON.stringify(t));
    }
    assert.ok(
      stamps.some((t) => t.microseconds % 1000 !== 0),
      `microsecond resolution: ${JSON.stringify(stamps)}`,
    );
    await c.call('quit');
    assert.equal(await vm.exited, 0, vm.stderr());
  } finally {
    vm.kill();
  }
});
