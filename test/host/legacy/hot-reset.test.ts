// system_reset of the pci-bridge pair (bridge-edu and bridge-testdev: two functions behind one
// conventional bridge, one IOMMU group, neither with a reset of its own): tsvmm resets them with
// one VFIO_DEVICE_PCI_HOT_RESET proving ownership with the group fd, and edu works again after.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hostDevice } from '../../helpers/testhost-env.js';
import { spawnVm } from '../../helpers/hotplug.js';
import { projectRoot } from '../../../core/paths.js';

test('system_reset hot-resets the bridge pair once (both functions, one group fd); edu works after', async () => {
  const bedu = hostDevice('bridge-edu'),
    btest = hostDevice('bridge-testdev');
  assert.equal(bedu.group, btest.group, 'the pair shares one IOMMU group');
  const cfg = join(mkdtempSync(join(tmpdir(), 'tsvmm-hotreset-')), 'vm.json');
  writeFileSync(
    cfg,
    JSON.stringify({
      memory: 64,
      kernel: { path: join(projectRoot, 'guest/out/tsvmm-guest.elf') },
      cmdline: 'test=hotplug dev=1234:11e8 dma=1 msi=2 intx=2',
      devices: [
        { type: 'vfio-pci', id: 'bedu', host: bedu.bdf },
        { type: 'vfio-pci', id: 'btest', host: btest.bdf },
      ],
    }),
  );
  const vm = spawnVm(cfg);
  const { vmm, count, until } = vm;
  try {
    await until(() => count('hotplug used rc=0') === 1, 'first run of the edu program');
    const q = await vm.qmp();
    assert.deepEqual(await q.cmd('system_reset'), { return: {} });
    await until(() => count('hotplug used rc=0') === 2, 'second run of the edu program after system_reset');
    const resets = vm.io.err.split('\n').filter((l) => l.includes('hot reset (VFIO_DEVICE_PCI_HOT_RESET)'));
    assert.deepEqual(
      resets,
      [`tsvmm: hot reset (VFIO_DEVICE_PCI_HOT_RESET) of ${[bedu.bdf, btest.bdf].sort().join(', ')}`],
      vm.io.err,
    );
    for (const t of ['edu-msi', 'edu-intx', 'edu-dma']) assert.equal(count(`PASS ${t}`), 2, `${t} passed in both runs`);
    await q.cmd('quit');
    assert.equal(await vm.exited, 0, vm.log());
    q.sock.destroy();
  } finally {
    if (vmm.exitCode === null) vmm.kill('SIGKILL');
  }
});
