// The installed command (dist/bin/tsvmm.cjs) runs the one-file bundle with its V8 code cache
// (bin/tsvmm.cts, scripts/bundle.mjs): it must use both, be built from the current modules, and
// behave as the modules do.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../../core/paths.js';

const cli = join(projectRoot, 'dist/bin/tsvmm.cjs');
const bundle = join(projectRoot, 'dist/bin/tsvmm.bundle.cjs');
const tsvmm = (args: string[], env: Record<string, string> = {}) =>
  spawnSync(process.execPath, [cli, ...args], {
    encoding: 'utf8',
    env: { ...process.env, TSVMM_LOADER_DEBUG: '1', ...env },
  });

test('tsvmm runs from the bundle with its code cache accepted by this node', () => {
  const r = tsvmm(['--version']);
  assert.equal(r.status, 0, r.stderr);
  const version = (JSON.parse(readFileSync(join(projectRoot, 'package.json'), 'utf8')) as { version: string }).version;
  assert.equal(r.stdout.trim(), version);
  assert.match(r.stderr, /^tsvmm: loader: bundle [0-9a-f]+, code cache accepted$/m);
  // The cache made for this bundle, not an older one.
  const id = /^\/\/ tsvmm-bundle (\S+)$/m.exec(readFileSync(bundle, 'utf8'))?.[1];
  assert.ok(id);
  assert.equal(
    readFileSync(`${bundle}.cache`).subarray(0, 40).toString('latin1').split('\n')[0],
    `// tsvmm-bundle ${id}`,
  );
});

test('the bundle is newer than every compiled module it can contain (else: npm run build)', () => {
  const built = statSync(bundle).mtimeMs;
  const stale: string[] = [];
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.js') && statSync(p).mtimeMs > built) stale.push(p);
    }
  };
  for (const d of ['bin', 'core', 'hw', 'machine', 'frontend', 'lib', 'generated', 'testhost', 'guest'])
    walk(join(projectRoot, 'dist', d));
  assert.deepEqual(stale, [], `compiled after ${bundle} was bundled: run 'npm run build'`);
});

test('the bundle and the modules give the same command line (TSVMM_NO_BUNDLE=1 runs the modules)', () => {
  for (const args of [
    ['--help'],
    ['run', '--help'],
    ['validate', join(projectRoot, 'configs/edu-vfio.json')],
    ['nope'],
  ]) {
    const b = tsvmm(args);
    const m = tsvmm(args, { TSVMM_NO_BUNDLE: '1' });
    assert.match(m.stderr, /^tsvmm: loader: modules$/m);
    const strip = (s: string) => s.replace(/^tsvmm: loader: .*\n/m, '');
    assert.deepEqual([b.status, b.stdout, strip(b.stderr)], [m.status, m.stdout, strip(m.stderr)], args.join(' '));
  }
});

test('an error thrown inside the bundle keeps its exit status and message (a bad config: exit 2)', () => {
  const r = tsvmm(['run', '--memory', '1']);
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /^tsvmm: .*invalid/m);
  assert.match(r.stderr, /--memory 1: 1 MiB is too small/);
});
