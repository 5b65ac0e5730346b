// The QEMU-style one-liner in the test host: edu assigned with --device vfio-pci,host=…, no
// config file, driven by the test guest (MMIO, DMA, MSI).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { projectRoot } from '../../../core/paths.js';
import { guestPaths } from '../../../guest/index.js';
import { hostDevice } from '../../helpers/testhost-env.js';

test('tsvmm run --device vfio-pci,host=<edu> assigns edu from flags alone', () => {
  const edu = hostDevice('edu');
  const r = spawnSync(
    process.execPath,
    [
      join(projectRoot, 'dist/bin/tsvmm.cjs'),
      'run',
      '--memory',
      '64M',
      '--cpus',
      '1',
      '--kernel',
      guestPaths().elf,
      '--cmdline',
      'test=edu dma=1 msi=2',
      '--device',
      `vfio-pci,host=${edu.bdf},id=edu`,
      '--serial',
      'stdio',
    ],
    { encoding: 'utf8', timeout: 240000, input: '' },
  );
  assert.equal(r.status, 0, `${r.stderr}\n${r.stdout}`);
  for (const t of ['edu-id', 'edu-factorial', 'edu-dma', 'edu-msi'])
    assert.match(r.stdout, new RegExp(`^PASS ${t}$`, 'm'), `${t}:\n${r.stdout}`);
});
