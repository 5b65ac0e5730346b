#!/usr/bin/env node
// npm run test:kvm: the guests of test/kvm on this machine's /dev/kvm, as far as that KVM can run them. Whether it
// can is found by running it (dist/test/helpers/kvm-probe.js: the test guest in the modes the files need), not from
// the device node: a paravirtual KVM (kvm_pvm) opens and runs simple guests but not every guest. Each file whose
// needs (dist/test/helpers/kvm-route.js FILE_NEEDS) this KVM lacks runs inside the test host, whose kvm_amd is a
// full KVM (8 GiB there: one guest has 6); a machine without /dev/kvm runs them all there. None is skipped.
// TSVMM_KVM_PROBE=none|full|pvm forces the probe's answer; --dry-run prints the plan as JSON and runs nothing.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dryRun = process.argv.includes('--dry-run');
const say = (m) => console.error(`test:kvm: ${m}`);
const routeModule = join(root, 'dist/test/helpers/kvm-route.js');
if (!existsSync(routeModule)) {
  say(`${routeModule} not found: build first (npm run build)`);
  process.exit(2);
}
const { forcedCapabilities, route, describePlan, FORCED } = await import(routeModule);

/** The probe in a child process with a time limit: a KVM that hangs a guest must not hang the suite. */
function probe() {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [join(root, 'dist/test/helpers/kvm-probe.js')], {
    cwd: root,
    encoding: 'utf8',
    timeout: 120_000,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const took = `${((performance.now() - t0) / 1000).toFixed(1)} s`;
  try {
    if (r.status !== 0) throw new Error(r.error?.message ?? `exit ${r.status ?? r.signal}: ${r.stderr.trim()}`);
    const res = JSON.parse(r.stdout);
    for (const [cap, detail] of Object.entries(res.details)) if (detail !== 'ok') say(`probe ${cap}: ${detail}`);
    return { caps: res.capabilities, source: `probed in ${took}` };
  } catch (e) {
    // A probe that cannot tell sends every file to the test host, which has a full KVM.
    say(`the probe failed (${e.message.split('\n')[0]}): every file runs in the test host`);
    return { caps: { ...FORCED.none }, source: `probe failed after ${took}` };
  }
}

let caps, source;
try {
  caps = forcedCapabilities(process.env.TSVMM_KVM_PROBE);
  source = `forced: TSVMM_KVM_PROBE=${process.env.TSVMM_KVM_PROBE}`;
} catch (e) {
  say(e.message);
  process.exit(2);
}
if (!caps) ({ caps, source } = probe());

const kvmDir = 'dist/test/kvm';
const files = readdirSync(join(root, kvmDir)).filter((f) => f.endsWith('.test.js'));
const plan = route(files, caps);
for (const l of describePlan(plan, caps, source)) console.error(l);
if (dryRun) {
  process.stdout.write(JSON.stringify({ capabilities: caps, ...plan }) + '\n');
  process.exit(0);
}

const nodeTest = (list) => ['node', '--test', '--test-concurrency=1', ...list.map((f) => `${kvmDir}/${f}`)];
const stages = [];
if (plan.local.length) stages.push({ name: 'on /dev/kvm', cmd: nodeTest(plan.local) });
if (plan.host.length)
  stages.push({
    name: 'in the test host',
    cmd: [
      process.execPath,
      'dist/bin/tsvmm.cjs',
      'testhost',
      'run',
      '--kernel',
      'debian',
      '--devices',
      'edu',
      '--memory',
      '8192',
      '--timeout',
      '1500',
      '--',
      ...nodeTest(plan.host.map((h) => h.file)),
    ],
  });
const results = [];
for (const s of stages) {
  say(`${s.name}: ${s.cmd.join(' ')}`);
  const t0 = performance.now();
  const r = spawnSync(s.cmd[0] === 'node' ? process.execPath : s.cmd[0], s.cmd.slice(1), {
    cwd: root,
    stdio: 'inherit',
  });
  const status = r.status ?? 1;
  results.push(
    `${s.name}: ${status === 0 ? 'passed' : `FAILED (exit ${status})`} in ${((performance.now() - t0) / 1000).toFixed(0)} s`,
  );
}
for (const l of results) say(l);
process.exit(results.every((l) => l.includes(': passed')) ? 0 : 1);
