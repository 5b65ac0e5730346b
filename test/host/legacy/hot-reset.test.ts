// system_reset of the pci-bridge pair (bridge-edu and bridge-testdev: two functions behind one
// conventional bridge, one IOMMU group, neither with a reset of its own): tsvmm resets them with
// one VFIO_DEVICE_PCI_HOT_RESET proving ownership with the group fd, and edu works again after.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hostDevice } from '../../helpers/testhost-env.js';
import { RawQmp } from '../../helpers/hotplug.js';
import { projectRoot } from '../../../core/paths.js';

test('system_reset hot-resets the bridge pair once (both functions, one group fd); edu works after', async () => {
  const bedu = hostDevice('bridge-edu'), btest = hostDevice('bridge-testdev');
  assert.equal(bedu.group, btest.group, 'the pair shares one IOMMU group');
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-hotreset-'));
  const cfg = join(dir, 'vm.json'), sock = join(dir, 'qmp.sock');
  writeFileSync(cfg, JSON.stringify({ memory: 64, kernel: { path: join(projectRoot, 'guest/out/tsvmm-guest.elf') },
    cmdline: 'test=hotplug dev=1234:11e8 dma=1 msi=2 intx=2',
    devices: [{ type: 'vfio-pci', id: 'bedu', host: bedu.bdf }, { type: 'vfio-pci', id: 'btest', host: btest.bdf }] }));
  const vmm = spawn(process.execPath, [join(projectRoot, 'dist/bin/tsvmm.js'), 'run', cfg, '--qmp', sock], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '', err = '';
  vmm.stdout.on('data', (d) => { out += d; });
  vmm.stderr.on('data', (d) => { err += d; });
  const exited = new Promise<number | null>((r) => vmm.on('exit', (c) => r(c)));
  const count = (line: string) => out.split('\n').filter((l) => l === line).length;
  const until = async (f: () => boolean, what: string) => {
    for (let i = 0; i < 1200 && !f(); i++) await new Promise((r) => setTimeout(r, 50));
    assert.ok(f(), `${what}:\n${out}\n${err}`);
  };
  try {
    await until(() => count('hotplug used rc=0') === 1, 'first run of the edu program');
    const q = await RawQmp.open(sock);
    assert.ok((await q.next()).QMP);
    await q.cmd('qmp_capabilities');
    assert.deepEqual(await q.cmd('system_reset'), { return: {} });
    await until(() => count('hotplug used rc=0') === 2, 'second run of the edu program after system_reset');
    const resets = err.split('\n').filter((l) => l.includes('hot reset (VFIO_DEVICE_PCI_HOT_RESET)'));
    assert.deepEqual(resets, [`tsvmm: hot reset (VFIO_DEVICE_PCI_HOT_RESET) of ${[bedu.bdf, btest.bdf].sort().join(', ')}`], err);
    for (const t of ['edu-msi', 'edu-intx', 'edu-dma']) assert.equal(count(`PASS ${t}`), 2, `${t} passed in both runs`);
    await q.cmd('quit');
    assert.equal(await exited, 0, err);
    q.sock.destroy();
  } finally {
    if (vmm.exitCode === null) vmm.kill('SIGKILL');
  }
});
