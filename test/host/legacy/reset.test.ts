// QMP system_reset with an assigned device: the guest boots again and drives edu again — MSI and
// INTx included, so the device reset and the interrupt re-wiring are real.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hostDevice } from '../../helpers/testhost-env.js';
import { spawnVm } from '../../helpers/hotplug.js';
import { projectRoot } from '../../../core/paths.js';
import { lockedBytes } from '../../../core/vfio/limits.js';

test('system_reset with edu assigned: the guest runs the edu program twice, interrupts work after the reset', async () => {
  const edu = hostDevice('edu');
  const cfg = join(mkdtempSync(join(tmpdir(), 'tsvmm-reset-')), 'vm.json');
  // test=hotplug finds edu at once (assigned at boot), uses it, then waits for it to go away.
  writeFileSync(
    cfg,
    JSON.stringify({
      memory: 64,
      kernel: { path: join(projectRoot, 'guest/out/tsvmm-guest.elf') },
      cmdline: 'test=hotplug dev=1234:11e8 dma=1 msi=2 intx=2',
      devices: [{ type: 'vfio-pci', id: 'edu', host: edu.bdf }],
    }),
  );
  const vm = spawnVm(cfg);
  const { vmm, count, until } = vm;
  try {
    await until(() => count('hotplug used rc=0') === 1, 'first run of the edu program');
    const q = await vm.qmp();
    const pinned = lockedBytes(vmm.pid!);
    assert.deepEqual(await q.cmd('system_reset'), { return: {} });
    assert.deepEqual((await q.event('RESET')).data, { guest: false, reason: 'host-qmp-system-reset' });
    await until(() => count('hotplug used rc=0') === 2, 'second run of the edu program after system_reset');
    assert.equal(count('tsvmm-guest: start'), 2);
    for (const t of ['edu-msi', 'edu-intx', 'edu-dma']) assert.equal(count(`PASS ${t}`), 2, `${t} passed in both runs`);
    assert.equal(lockedBytes(vmm.pid!), pinned, 'the reset neither leaks nor drops DMA mappings');
    await q.cmd('quit');
    assert.equal(await vm.exited, 0, vm.log());
    q.sock.destroy();
  } finally {
    if (vmm.exitCode === null) vmm.kill('SIGKILL');
  }
});
