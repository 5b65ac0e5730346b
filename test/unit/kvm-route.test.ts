// npm run test:kvm's routing: which test/kvm files run on this machine's /dev/kvm and which in the test host, for
// each kind of /dev/kvm (none, a full KVM, a paravirtual one that fails some guest code), checked on any machine:
// the pure plan, and the script itself with the probe's answer forced through TSVMM_KVM_PROBE (--dry-run: it prints
// its plan and runs nothing).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../../core/paths.js';
import {
  CAPABILITIES,
  FILE_NEEDS,
  FORCED,
  describePlan,
  forcedCapabilities,
  route,
  type Plan,
} from '../helpers/kvm-route.js';

const kvmFiles = readdirSync(join(projectRoot, 'dist/test/kvm')).filter((f) => f.endsWith('.test.js'));

test('every file named in FILE_NEEDS exists in test/kvm and names known capabilities', () => {
  for (const [file, needs] of Object.entries(FILE_NEEDS)) {
    assert.ok(existsSync(join(projectRoot, 'test/kvm', file.replace(/\.js$/, '.ts'))), `${file}: no such test`);
    for (const c of needs) assert.ok(c in CAPABILITIES, `${file}: unknown capability ${c}`);
  }
});

test('no /dev/kvm: every file runs in the test host', () => {
  const plan = route(kvmFiles, FORCED.none!);
  assert.deepEqual(plan.local, []);
  assert.deepEqual(
    plan.host.map((h) => h.file),
    [...kvmFiles].sort(),
  );
  for (const h of plan.host) assert.ok(h.missing.includes('kvm'), h.file);
});

test('a full KVM: every file runs here', () => {
  const plan = route(kvmFiles, FORCED.full!);
  assert.deepEqual(plan, { local: [...kvmFiles].sort(), host: [] });
});

test('a paravirtual KVM: the files needing what it lacks go to the test host, the rest run here', () => {
  const plan = route(kvmFiles, FORCED.pvm!);
  assert.deepEqual(plan.host, [
    { file: 'highmem.test.js', missing: ['pae-high'] },
    { file: 'multiboot.test.js', missing: ['soft-int'] },
  ]);
  assert.deepEqual(plan.local, kvmFiles.filter((f) => f !== 'highmem.test.js' && f !== 'multiboot.test.js').sort());
  // One missing capability sends only the files that need it.
  const noInt = route(kvmFiles, { ...FORCED.full!, 'soft-int': false });
  assert.deepEqual(noInt.host, [{ file: 'multiboot.test.js', missing: ['soft-int'] }]);
  // Nothing is dropped on the way.
  assert.equal(plan.local.length + plan.host.length, kvmFiles.length);
});

test('the decision is printed: each capability, and which files go where and why', () => {
  const caps = FORCED.pvm!;
  const text = describePlan(route(kvmFiles, caps), caps, 'forced').join('\n');
  assert.match(text, /NO {2}soft-int: /);
  assert.match(text, /yes kvm: /);
  assert.match(text, /in the test host: highmem\.test\.js \(needs pae-high\) multiboot\.test\.js \(needs soft-int\)/);
  assert.match(text, /here, on \/dev\/kvm: api\.test\.js /);
});

test('TSVMM_KVM_PROBE: unset probes, a known value forces, anything else is refused', () => {
  assert.equal(forcedCapabilities(undefined), undefined);
  assert.equal(forcedCapabilities(''), undefined);
  assert.deepEqual(forcedCapabilities('pvm'), FORCED.pvm);
  assert.throws(() => forcedCapabilities('kvm_pvm'), /TSVMM_KVM_PROBE=kvm_pvm: not one of none, full, pvm/);
});

test('scripts/test-kvm.mjs follows the forced probe: its plan for none, full and pvm', () => {
  for (const kind of ['none', 'full', 'pvm']) {
    const out = execFileSync(process.execPath, ['scripts/test-kvm.mjs', '--dry-run'], {
      cwd: projectRoot,
      encoding: 'utf8',
      env: { ...process.env, TSVMM_KVM_PROBE: kind },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const got = JSON.parse(out) as Plan & { capabilities: unknown };
    assert.deepEqual(got.capabilities, FORCED[kind], kind);
    assert.deepEqual({ local: got.local, host: got.host }, route(kvmFiles, FORCED[kind]!), kind);
  }
  const bad = spawnSync(process.execPath, ['scripts/test-kvm.mjs', '--dry-run'], {
    cwd: projectRoot,
    encoding: 'utf8',
    env: { ...process.env, TSVMM_KVM_PROBE: 'maybe' },
  });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /TSVMM_KVM_PROBE=maybe: not one of/);
});
