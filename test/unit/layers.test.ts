// The layer rule, checked on the sources: imports point one way, down.
//   mechanism (core/: memory, kvm, vfio, native, RAM, fd passing, errors)
//   → device models (hw/) → machine (machine/: board, devices, boot, run control)
//   → front ends (frontend/: QMP, manager, the command layer; lib/: the library; bin/: the CLI;
//     testhost/: the nested test host tool).
// Tests and the benchmark sit above everything and may import anything.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { projectRoot } from '../../core/paths.js';

const LAYERS: Record<string, number> = { core: 0, hw: 1, machine: 2, frontend: 3, lib: 3, bin: 3, testhost: 3 };
/** Generated validators sit with the layer that imports them (machine config, QMP front end). */
const generatedLayer = 2;
/** Narrower rules inside the layers. */
const FORBIDDEN: { from: RegExp; to: RegExp; why: string }[] = [
  {
    from: /^machine\/loader\//,
    to: /^machine\/machine\.ts$/,
    why: 'loaders write memory and registers; they do not see the machine',
  },
  {
    from: /^hw\//,
    to: /^core\/kvm\//,
    why: 'device models raise interrupts through hw/interrupts.ts; the machine wires them to KVM',
  },
];

function sources(dir: string): string[] {
  if (!existsSync(join(projectRoot, dir))) return [];
  return readdirSync(join(projectRoot, dir), { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith('.ts') && !e.name.endsWith('.d.ts'))
    .map((e) => relative(projectRoot, join(e.parentPath, e.name)));
}

/** Relative imports of a file (static, dynamic and `import('…')` types), as project paths. */
export function importsOf(file: string, src: string): string[] {
  const out: string[] = [];
  for (const m of src.matchAll(/(?:from|import)\s*\(?\s*['"](\.{1,2}\/[^'"]+)['"]/g)) {
    out.push(relative(projectRoot, resolve(projectRoot, dirname(file), m[1]!)).replace(/\.js$/, '.ts'));
  }
  return out;
}

const layerOf = (p: string): number | undefined =>
  p.startsWith('generated/') ? generatedLayer : LAYERS[p.split('/')[0]!];

test('layers: no module imports from a layer above its own', () => {
  const bad: string[] = [];
  let checked = 0;
  for (const dir of Object.keys(LAYERS)) {
    for (const file of sources(dir)) {
      const from = layerOf(file)!;
      for (const target of importsOf(file, readFileSync(join(projectRoot, file), 'utf8'))) {
        checked++;
        const to = layerOf(target);
        if (to === undefined) bad.push(`${file} imports ${target}, outside the layered tree`);
        else if (to > from) bad.push(`${file} (layer ${from}) imports ${target} (layer ${to})`);
        for (const f of FORBIDDEN)
          if (f.from.test(file) && f.to.test(target)) bad.push(`${file} imports ${target}: ${f.why}`);
      }
    }
  }
  assert.ok(checked > 100, `only ${checked} imports found: is the scan broken?`);
  assert.deepEqual(bad, []);
});

test('layers: the checker sees an upward import', () => {
  const found = importsOf(
    'hw/x.ts',
    "import { Machine } from '../machine/machine.js';\nconst q = await import('../frontend/qmp/server.js');",
  );
  assert.deepEqual(found, ['machine/machine.ts', 'frontend/qmp/server.ts']);
  assert.ok(layerOf(found[0]!)! > layerOf('hw/x.ts')!);
});
