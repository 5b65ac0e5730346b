// The layer rule, checked on the sources: imports point one way, down.
//   mechanism (core/: memory, kvm, vfio, native, RAM, fd passing, errors)
//   → device models (hw/) → machine (machine/: board, devices, boot, run control)
//   → front ends (frontend/: QMP, manager, the command layer; lib/: the library; bin/: the CLI;
//     testhost/: the nested test host tool).
// Tests and the benchmark sit above everything and may import anything.
// Two narrower rules: a front end (frontend/, lib/, bin/) imports from machine/ only its public
// module, machine/index.ts (a machine is reached through MachineControl); and the KVM VM class
// (core/kvm/vm.ts KvmVm) is made and named as a value only inside core/kvm/ (others get one from
// Kvm.createVm() and may name its type).
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
  {
    from: /^(frontend|lib|bin)\//,
    to: /^machine\/(?!index\.ts$)/,
    why: "front ends use the machine's public module (machine/index.ts: MachineControl), nothing else of machine/",
  },
];

const KVM_VM = 'core/kvm/vm.ts';

/** What a file takes from core/kvm/vm.ts: each name, and whether only as a type. */
export function kvmVmImports(file: string, src: string): { name: string; typeOnly: boolean }[] {
  const out: { name: string; typeOnly: boolean }[] = [];
  const re =
    /import\s+(type\s+)?([\s\S]*?)\s+from\s+['"](\.{1,2}\/[^'"]+)['"]|import\s*\(\s*['"](\.{1,2}\/[^'"]+)['"]/g;
  for (const m of src.matchAll(re)) {
    const path = m[3] ?? m[4]!;
    if (relative(projectRoot, resolve(projectRoot, dirname(file), path)).replace(/\.js$/, '.ts') !== KVM_VM) continue;
    if (m[4]) {
      out.push({ name: '*', typeOnly: false }); // a dynamic import takes the module's values
      continue;
    }
    const whole = !!m[1];
    const braces = /\{([\s\S]*)\}/.exec(m[2]!);
    if (!braces) out.push({ name: '*', typeOnly: whole });
    else
      for (const spec of braces[1]!
        .split(',')
        .map((x) => x.trim())
        .filter(Boolean)) {
        const typeOnly = whole || spec.startsWith('type ');
        out.push({ name: spec.replace(/^type\s+/, '').split(/\s+as\s+/)[0]!, typeOnly });
      }
  }
  return out;
}

/** Why an import of core/kvm/vm.ts from `file` breaks the rule, if it does. */
function kvmVmProblem(file: string, imp: { name: string; typeOnly: boolean }): string | undefined {
  if (file.startsWith('core/kvm/')) return undefined;
  if (imp.name === 'Vm') return `${file} imports Vm from ${KVM_VM}: the KVM VM is KvmVm (one Vm: the library's)`;
  if ((imp.name === 'KvmVm' || imp.name === '*') && !imp.typeOnly)
    return `${file} imports the KVM VM class from ${KVM_VM}: outside core/kvm/ get one from Kvm.createVm() and name only its type`;
  return undefined;
}

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
      for (const imp of kvmVmImports(file, readFileSync(join(projectRoot, file), 'utf8'))) {
        const p = kvmVmProblem(file, imp);
        if (p) bad.push(p);
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

test('layers: the checker sees a front end reaching into machine/ and the KVM VM class outside core/kvm/', () => {
  const rule = FORBIDDEN.find((f) => f.from.test('lib/index.ts'))!;
  assert.ok(rule.to.test(importsOf('lib/x.ts', "import { Machine } from '../machine/machine.js';")[0]!));
  assert.ok(
    rule.to.test(importsOf('bin/cli/x.ts', "import { checkConfig } from '../../machine/config/config.js';")[0]!),
  );
  assert.ok(
    !rule.to.test(importsOf('frontend/x.ts', "import type { MachineControl } from '../machine/index.js';")[0]!),
  );
  const problems = (file: string, src: string) =>
    kvmVmImports(file, src)
      .map((i) => kvmVmProblem(file, i))
      .filter((p) => p !== undefined);
  assert.equal(problems('machine/x.ts', "import { KvmVm } from '../core/kvm/vm.js';").length, 1);
  assert.equal(problems('machine/x.ts', "import { ExitStats, type KvmVm } from '../core/kvm/vm.js';").length, 0);
  assert.equal(problems('core/vfio/x.ts', "import type { KvmVm } from '../kvm/vm.js';").length, 0);
  assert.equal(problems('lib/x.ts', "import type { Vm } from '../core/kvm/vm.js';").length, 1);
  assert.equal(problems('hw/x.ts', "const { KvmVm } = await import('../core/kvm/vm.js');").length, 1);
  assert.equal(problems('core/kvm/kvm.ts', "import { KvmVm } from './vm.js';").length, 0);
});
