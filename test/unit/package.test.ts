// The published package: what `npm pack` puts in the tarball (package.json `files`) is what an installed tsvmm
// needs to run — the compiled layers, their declarations, the built test guest, the native sources that the
// install script compiles — and nothing of the development tree (tests, benchmarks, CI, TypeScript sources).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join, posix } from 'node:path';
import { projectRoot } from '../../core/paths.js';

interface Pkg {
  main: string;
  types: string;
  bin: Record<string, string>;
  exports: Record<string, string | { types: string; default: string }>;
  scripts: Record<string, string>;
}
const pkg = JSON.parse(readFileSync(join(projectRoot, 'package.json'), 'utf8')) as Pkg;

/** The tarball's file list, as `npm pack --dry-run` computes it from the built tree (no scripts: no rebuild). */
function packedFiles(): Set<string> {
  const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], {
    cwd: projectRoot,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const [entry] = JSON.parse(out) as { files: { path: string }[] }[];
  assert.ok(entry, 'npm pack --json printed no entry');
  return new Set(entry.files.map((f) => f.path));
}

const files = packedFiles();
const norm = (p: string) => posix.normalize(p).replace(/^\.\//, '');

test('package: the tarball holds no development files', () => {
  const bad = [...files].filter(
    (f) =>
      /^(test|bench|\.ci|scripts|examples|build|node_modules)\//.test(f) ||
      /^dist\/(test|bench|guest)\//.test(f) ||
      (f.endsWith('.ts') && !f.endsWith('.d.ts')) ||
      f.endsWith('.map') ||
      /^guest\/(src|out\/obj)\//.test(f),
  );
  assert.deepEqual(bad, []);
});

test('package: the entry points, their declarations and the CLI are packed', () => {
  const want = [pkg.main, pkg.types, ...Object.values(pkg.bin)];
  for (const [key, target] of Object.entries(pkg.exports)) {
    if (key === './package.json') continue;
    assert.equal(typeof target, 'object', `exports['${key}'] names no types`);
    const t = target as { types: string; default: string };
    want.push(t.types, t.default);
  }
  for (const w of ['dist/lib/index.js', 'dist/lib/index.d.ts', 'dist/lib/testing.js', 'dist/lib/testing.d.ts'])
    assert.ok(want.map(norm).includes(w), `package.json does not export ${w}`);
  const missing = want.map(norm).filter((w) => !files.has(w));
  assert.deepEqual(missing, [], 'named in package.json but not in the tarball');
});

test('package: every relative import of a packed module is packed too', () => {
  const missing: string[] = [];
  let checked = 0;
  for (const f of files) {
    if (!/\.(js|d\.ts)$/.test(f)) continue;
    const src = readFileSync(join(projectRoot, f), 'utf8');
    for (const m of src.matchAll(/(?:from|import)\s*\(?\s*['"](\.{1,2}\/[^'"]+)['"]/g)) {
      let target = posix.join(posix.dirname(f), m[1]!);
      if (f.endsWith('.d.ts')) target = target.replace(/\.js$/, '.d.ts');
      checked++;
      if (!files.has(target)) missing.push(`${f} → ${target}`);
    }
    // Worker threads are loaded by URL, not import.
    for (const m of src.matchAll(/new URL\(\s*['"](\.{1,2}\/[^'"]+\.js)['"]/g)) {
      const target = posix.join(posix.dirname(f), m[1]!);
      checked++;
      if (!files.has(target)) missing.push(`${f} → ${target}`);
    }
  }
  assert.ok(checked > 200, `only ${checked} imports seen: is the scan broken?`);
  assert.deepEqual(missing, []);
});

test('package: what the installed package reads at run time and builds on install is packed', () => {
  const want = [
    // the built test guest (tsvmm run's demo, tsvmm/testing's testGuest)
    'guest/out/tsvmm-guest.elf',
    'guest/out/tsvmm-guest.bin',
    'guest/out/tsvmm-guest.json',
    // the schema config validation names, the samples, the test host's kernel config fragment
    'configs/vm.schema.json',
    'configs/edu-vfio.json',
    'testhost/kernel-testhost.config',
    // the addon, compiled by the install script
    'CMakeLists.txt',
    'native/addon.cc',
    'native/util.h',
  ];
  assert.deepEqual(
    want.filter((w) => !files.has(w)),
    [],
  );
  // Every native source the CMake glob would compile, and the vendored uapi headers.
  const native = execFileSync('git', ['ls-files', 'native'], { cwd: projectRoot, encoding: 'utf8' })
    .split('\n')
    .filter(Boolean);
  assert.ok(native.length > 10);
  assert.deepEqual(
    native.filter((f) => !files.has(f)),
    [],
  );
  assert.match(pkg.scripts.install ?? '', /cmake-js compile/, 'the addon is built on install');
  // prepare does not run for a tarball install: dist/ must come in the tarball (checked above), not be built there.
  assert.ok(files.has(join(dirname(pkg.bin.tsvmm!), 'tsvmm.js')));
});

test("package: docs/library.md shows examples/edu-test's tests as they are", () => {
  const readme = readFileSync(join(projectRoot, 'docs/library.md'), 'utf8');
  for (const f of ['test/demo.test.ts', 'test/edu.test.ts']) {
    const src = readFileSync(join(projectRoot, 'examples/edu-test', f), 'utf8');
    assert.ok(
      readme.includes('```ts\n' + src + '```'),
      `docs/library.md does not show examples/edu-test/${f} verbatim`,
    );
  }
});
