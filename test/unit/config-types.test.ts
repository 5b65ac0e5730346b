// The config's TypeScript type (VmConfig) is generated from configs/vm.schema.json by
// scripts/schema-to-ts.mjs: the converter on small schemas, the generated file being current, and
// the type and the validator agreeing on the same objects (the @ts-expect-error lines are checked
// by the type check, npm run test:static).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { projectRoot } from '../../core/paths.js';
import type { VmConfig } from '../../generated/config-types.js';
import { validate } from '../../generated/config-validator.js';

type Converter = typeof import('../../scripts/schema-to-ts.mjs');
const conv = (await import(pathToFileURL(join(projectRoot, 'scripts/schema-to-ts.mjs')).href)) as Converter;
const ref = (r: string) => conv.typeName('T', r.replace('#/$defs/', ''));

test('schema-to-ts: scalars, enums, consts, arrays, unions', () => {
  assert.equal(conv.tsType({ type: 'string', pattern: '^a$' }, ref), 'string');
  assert.equal(conv.tsType({ type: 'integer', minimum: 1 }, ref), 'number');
  assert.equal(conv.tsType({ type: 'boolean' }, ref), 'boolean');
  assert.equal(conv.tsType({ enum: ['a', 'b'] }, ref), '"a" | "b"');
  assert.equal(conv.tsType({ const: 'vfio-pci' }, ref), '"vfio-pci"');
  assert.equal(conv.tsType({ type: ['string', 'null'] }, ref), 'string | null');
  assert.equal(conv.tsType({ type: 'array', items: { type: 'integer' } }, ref), 'number[]');
  assert.equal(conv.tsType({ type: 'array', items: { enum: ['x', 'y'] } }, ref), 'Array<"x" | "y">');
  assert.equal(conv.tsType({ oneOf: [{ type: 'integer' }, { type: 'string' }] }, ref), 'number | string');
  assert.equal(conv.tsType({ $ref: '#/$defs/vfio-pci' }, ref), 'TVfioPci');
  assert.equal(conv.tsType({}, ref), 'unknown');
});

test('schema-to-ts: objects (required, closed, open), and oneOf that only constrains', () => {
  const closed = conv.tsType(
    {
      type: 'object',
      additionalProperties: false,
      required: ['a'],
      properties: { a: { type: 'string', description: 'the a' }, 'b-c': { type: 'integer' } },
      oneOf: [{ required: ['a'] }, { required: ['b-c'] }],
    },
    ref,
  );
  assert.equal(closed, '{\n  /** the a */\n  a: string;\n  "b-c"?: number;\n}');
  const open = conv.tsType({ type: 'object', properties: { a: { type: 'string' } }, additionalProperties: {} }, ref);
  assert.equal(open, '{\n  a?: string;\n  [key: string]: unknown;\n}');
  assert.equal(conv.tsType({ type: 'object' }, ref), 'Record<string, unknown>');
  // A discriminated union: the key the parent requires is required in each branch.
  assert.equal(
    conv.tsType({ type: 'object', required: ['type'], oneOf: [{ $ref: '#/$defs/a' }, { $ref: '#/$defs/b' }] }, ref),
    'Required<Pick<TA, "type">> & TA | Required<Pick<TB, "type">> & TB',
  );
  assert.throws(() => conv.tsType({ type: 'decimal' }, ref), /unknown type "decimal"/);
  assert.throws(
    () =>
      conv.schemaToTs({ type: 'object', properties: { a: { $ref: '#/$defs/none' } } }, { rootName: 'R', prefix: 'T' }),
    /unsupported \$ref #\/\$defs\/none/,
  );
});

test('generated/config-types.ts is what the converter makes of configs/vm.schema.json', () => {
  const schema = JSON.parse(readFileSync(join(projectRoot, 'configs/vm.schema.json'), 'utf8')) as object;
  const text = readFileSync(join(projectRoot, 'generated/config-types.ts'), 'utf8');
  assert.ok(text.endsWith(conv.schemaToTs(schema, { rootName: 'VmConfig', prefix: 'VmConfig' })));
  for (const name of ['VmConfig', 'VmConfigDevice', 'VmConfigVfioPci', 'VmConfigMemorySize', 'VmConfigVfioBackend'])
    assert.match(text, new RegExp(`export type ${name} = `));
});

// The same objects, seen by the type check and by the validator.
const good: VmConfig[] = [
  { kernel: { path: 'guest.elf' } },
  {
    name: 'edu',
    memory: { size: '256M', backing: 'memfd', hugepages: 'thp' },
    vcpus: 2,
    kernel: { path: 'bzImage', format: 'linux', initramfs: { script: 'echo hi' } },
    serial: { output: 'file', path: 'serial.log' },
    devices: [{ type: 'vfio-pci', id: 'edu', host: '0000:00:03.0', rombar: false }],
    vfio: { backend: 'iommufd' },
    unplug: 'surprise',
  },
];
const bad: unknown[] = [
  // @ts-expect-error kernel is required
  {} satisfies VmConfig,
  // @ts-expect-error an unknown key
  { kernel: { path: 'x' }, colour: 'red' } satisfies VmConfig,
  // @ts-expect-error a device needs its type
  { kernel: { path: 'x' }, devices: [{ host: '00:03.0' }] } satisfies VmConfig,
  // @ts-expect-error not a backing
  { kernel: { path: 'x' }, memory: { size: 64, backing: 'shm' } } satisfies VmConfig,
  // @ts-expect-error memory is a size or an object
  { kernel: { path: 'x' }, memory: true } satisfies VmConfig,
];

test('the type and the validator agree on configs', () => {
  const v = validate as unknown as (d: unknown) => boolean;
  for (const g of good) assert.ok(v(structuredClone(g)), JSON.stringify(g));
  for (const b of bad) assert.ok(!v(structuredClone(b)), JSON.stringify(b));
});
