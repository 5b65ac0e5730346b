// Runs INSIDE the test host: tsvmm/testing's linuxGuest() with the test host's kernel ('testhost'):
// the config it gives boots (tsvmm run), /init runs the script, and the script's status ends the VM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, tsvmmRun } from '../../helpers/linux.js';
import { keyValues, lines, linuxGuest, testHostKernel } from '../../../lib/testing.js';

test(
  "linuxGuest({kernel: 'testhost'}): the script runs in the guest and its status is the VM's",
  { timeout: 240_000 },
  async () => {
    const k = testHostKernel();
    const config = linuxGuest({
      kernel: 'testhost',
      name: 'lib-testing',
      memory: '128M',
      script: 'echo "lib-testing release=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo)"\nexit 3',
    });
    assert.equal(config.kernel.path, k.image);
    assert.equal(config.kernel.initramfs?.modules, k.modules);
    const path = join(process.env.TSVMM_TESTHOST_RUN_DIR!, `lib-testing-${process.pid}.json`);
    writeFileSync(path, JSON.stringify(config));
    const r = await tsvmmRun(path);
    const line = lines(r.stdout).find((l) => l.startsWith('lib-testing '));
    assert.ok(line, `the script's line is missing\n${describe(r)}`);
    assert.deepEqual(keyValues(line), { release: k.version, cpus: '1' });
    assert.match(r.stdout, /tsvmm-init: script exited with status 3/, describe(r));
    assert.equal(r.code, 3, describe(r));
  },
);
