#!/usr/bin/env node
// npm run test:kvm: the guests of test/kvm on this machine's /dev/kvm. A machine without one (a
// cloud VM whose hypervisor offers no nested KVM) runs the same files inside the test host, whose
// kvm_amd is a full KVM: the tests run either way, none is skipped (8 GiB there: one guest has 6).
import { spawnSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const tests = ['node', '--test', '--test-concurrency=1', 'dist/test/kvm/'];
let local = true;
try {
  accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
} catch {
  local = false;
}
const cmd = local
  ? tests
  : [
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
      ...tests,
    ];
if (!local) console.error('test:kvm: this machine has no usable /dev/kvm; running dist/test/kvm/ inside the test host');
const r = spawnSync(cmd[0] === 'node' ? process.execPath : cmd[0], cmd.slice(1), { cwd: root, stdio: 'inherit' });
process.exit(r.status ?? 1);
