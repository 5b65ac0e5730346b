#!/usr/bin/env node
// npm run test:example: tsvmm as a user gets it. `npm pack` → a fresh copy of examples/edu-test that installs
// the tarball (which compiles the native addon) → tsc type-checks and compiles the example's typed tests →
// test/demo.test.ts on this machine's /dev/kvm and test/edu.test.ts in the test host with the edu device
// assigned. A machine without a usable /dev/kvm runs both inside the test host (one boot), as test:kvm does.
// Everything lives in a fresh directory under the system's temp dir, as a user's project may: the test host hides
// the outer /tmp behind its own, so every run checks that `tsvmm testhost run` shares its working directory.
// Options: --keep (leave that directory for a look), --timeout SECONDS (test host, default 900).
import { spawnSync } from 'node:child_process';
import { accessSync, constants, cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const keep = args.includes('--keep');
const timeoutArg = args.indexOf('--timeout');
const hostTimeout = timeoutArg >= 0 ? Number(args[timeoutArg + 1]) : 900;
const work = mkdtempSync(join(tmpdir(), 'tsvmm-example-'));
const example = join(work, 'edu-test');
const t0 = performance.now();

const say = (m) => console.error(`test:example: ${m} (${((performance.now() - t0) / 1000).toFixed(0)} s)`);
function run(cmd, argv, cwd, what) {
  say(`${what}: ${cmd} ${argv.join(' ')}`);
  const r = spawnSync(cmd, argv, { cwd, stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0) {
    say(`${what} failed (${r.error?.message ?? (r.signal ? `signal ${r.signal}` : `exit ${r.status}`)}); left ${work}`);
    process.exit(r.status || 1);
  }
}
function runJson(cmd, argv, cwd, what) {
  say(`${what}: ${cmd} ${argv.join(' ')}`);
  const r = spawnSync(cmd, argv, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  if (r.status !== 0) {
    process.stdout.write(r.stdout ?? '');
    say(`${what} failed (exit ${r.status})`);
    process.exit(r.status || 1);
  }
  return JSON.parse(r.stdout);
}

say(`working in ${work}`);

// 1. The tarball, of a fresh build (what `prepare` does before a pack; run apart so that pack's stdout is its JSON).
run('npm', ['run', 'build'], root, 'build');
const [packed] = runJson('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', work], root, 'pack');
const tarball = join(work, packed.filename);
say(`${tarball}: ${packed.entryCount} files, ${(packed.size / 1024).toFixed(0)} KiB`);

// 2. A fresh copy of the example that depends on that tarball.
cpSync(join(root, 'examples/edu-test'), example, {
  recursive: true,
  filter: (src) => !/\/(node_modules|dist)(\/|$)/.test(relative(root, src)),
});
const pkgPath = join(example, 'package.json');
const pkg = JSON.parse(readFileSync(pkgPath, 'utf8'));
pkg.dependencies.tsvmm = `file:${tarball}`;
writeFileSync(pkgPath, JSON.stringify(pkg, null, 2) + '\n');

// 3. Install (the tarball's install script builds the addon with cmake-js), type-check, compile.
run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund'], example, 'install');
run('npx', ['--no-install', 'tsc', '--noEmit'], example, 'type check');
run('npx', ['--no-install', 'tsc'], example, 'compile');

// 4. The tests: the demo on /dev/kvm here when there is one; edu (and the demo otherwise) in the test host,
// started through the installed package's own CLI.
let kvm = true;
try {
  accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
} catch {
  kvm = false;
}
if (kvm) run(process.execPath, ['--test', 'dist/test/demo.test.js'], example, 'demo guest on /dev/kvm');
else say('this machine has no usable /dev/kvm: the demo guest runs in the test host too');
const files = kvm ? 'dist/test/edu.test.js' : 'dist/test/demo.test.js dist/test/edu.test.js';
const cli = join(example, 'node_modules/tsvmm/dist/bin/tsvmm.cjs');
run(
  process.execPath,
  [
    cli,
    'testhost',
    'run',
    '--devices',
    'edu',
    '--timeout',
    String(hostTimeout),
    '--',
    'node',
    '--test',
    '--test-concurrency=1',
    ...files.split(' '),
  ],
  example,
  'test host (edu)',
);

if (!keep) rmSync(work, { recursive: true, force: true });
say('passed');
