// The library's public types: the QMP commands and events typed from frontend/qmp/schema.json
// (scripts/qapi-to-ts.mjs → generated/qmp-types.ts), Vm.command() and Vm.on() using them, and the one config name.
// The @ts-expect-error lines are checked by the type check (npm run test:static): each must be an error.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { projectRoot } from '../../core/paths.js';
import { qmpEventNames } from '../../generated/qmp-types.js';
import type * as lib from '../../lib/index.js';
import type { linuxGuest } from '../../lib/testing.js';

type Converter = typeof import('../../scripts/qapi-to-ts.mjs');
const conv = (await import(pathToFileURL(join(projectRoot, 'scripts/qapi-to-ts.mjs')).href)) as Converter;
const schema = JSON.parse(readFileSync(join(projectRoot, 'frontend/qmp/schema.json'), 'utf8')) as {
  types: Record<string, object>;
  commands: Record<string, object>;
  events: Record<string, object>;
};

test('qapi-to-ts: builtins, lists, structs, enums, unions, optional members', () => {
  const types = {
    E: { enum: ['a', 'b'] },
    S: { data: { n: 'int', '*s': 'str', 'x-y': ['E'] } },
    U: { base: { kind: 'E', '*f': 'bool' }, discriminator: 'kind', branches: { a: 'S', b: 'S' } },
  };
  assert.equal(conv.tsRef('str', types), 'string');
  assert.equal(conv.tsRef('any', types), 'unknown');
  assert.equal(conv.tsRef(['S'], types), 'QmpS[]');
  assert.equal(conv.tsType('E', types.E, types), 'export type QmpE = "a" | "b";');
  assert.equal(conv.tsType('S', types.S, types), 'export type QmpS = { n: number; s?: string; "x-y": QmpE[]; };');
  assert.equal(
    conv.tsType('U', types.U, types),
    'export type QmpU = Omit<{ kind: QmpE; f?: boolean; }, "kind"> & (({ kind: "a" } & QmpS) | ({ kind: "b" } & QmpS));',
  );
  assert.equal(conv.tsMembers({}, types), 'Record<string, never>');
  assert.equal(conv.tsMembers({ a: 'int' }, types, 'Qmp', { b: 'str' }), '{ a: number; b?: string; }');
  assert.throws(() => conv.tsRef('Nope', types), /unknown type 'Nope'/);
});

test('generated/qmp-types.ts is what the converter makes of frontend/qmp/schema.json', () => {
  const text = readFileSync(join(projectRoot, 'generated/qmp-types.ts'), 'utf8');
  assert.ok(text.endsWith(conv.qapiToTs(schema)));
  assert.deepEqual([...qmpEventNames], Object.keys(schema.events));
  for (const c of Object.keys(schema.commands))
    assert.ok(text.includes(`  ${/^\w+$/.test(c) ? c : JSON.stringify(c)}: {`), c);
});

// ---- what the type check holds the library to (never run: only compiled) ----
declare const vm: lib.Vm;
async function typed(): Promise<void> {
  // command(): arguments and result per command, as QAPI gives them; other names allowed, untyped.
  const status: lib.QmpStatusInfo = await vm.command('query-status');
  const running: boolean = status.running;
  const state: lib.QmpRunState = status.status;
  const fdset: number = (await vm.command('add-fd', { opaque: 'x' }))['fdset-id'];
  await vm.command('device_del', { id: 'edu' });
  await vm.command('device_add', { driver: 'vfio-pci', id: 'a', host: '00:03.0', addr: 5 });
  const other: unknown = await vm.command('x-not-implemented', { any: 1 });
  const dynamicName: string = 'query-name';
  await vm.command(dynamicName as string, {});
  // @ts-expect-error -- device_del needs an id
  await vm.command('device_del', {});
  // @ts-expect-error -- device_del's id is a string
  await vm.command('device_del', { id: 5 });
  // @ts-expect-error -- stop takes no arguments
  await vm.command('stop', { now: true });
  // @ts-expect-error -- query-status returns a StatusInfo, not a string
  const notString: string = await vm.command('query-status');

  // on(): event names are the QMP events; one event's data is typed exactly.
  vm.on('SHUTDOWN', (d) => {
    const guest: boolean = d.guest;
    const reason: lib.QmpShutdownCause = d.reason;
    void [guest, reason];
  });
  vm.on('DEVICE_DELETED', (d) => void (d.path satisfies string));
  vm.on('STOP', (d) => void (d satisfies undefined));
  vm.on('event', (name, data) => {
    const n: lib.VmEventName = name;
    void [n, data];
  });
  vm.off('SHUTDOWN', () => {});
  // @ts-expect-error -- no such event
  vm.on('SHUTDOWNN', () => {});
  // @ts-expect-error -- SHUTDOWN's data has no 'device'
  vm.on('SHUTDOWN', (d) => d.device);
  // @ts-expect-error -- a listener for 'event' gets a name from the event union, not any string
  vm.on('event', (name: 'NOPE') => name);

  // One config name: what createVm takes is what linuxGuest makes.
  const cfg: lib.VmConfig = { kernel: { path: 'guest.elf' } };
  const fromTesting: lib.VmConfig = {} as ReturnType<typeof linuxGuest> satisfies lib.VmConfig;
  await (null as unknown as typeof lib.createVm)(cfg);
  void [running, state, fdset, other, notString, fromTesting];
}
void typed;
