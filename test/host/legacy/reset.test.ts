// QMP system_reset with an assigned device: the guest boots again and drives edu again — MSI and
// INTx included, so the device reset and the interrupt re-wiring are real.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hostDevice } from '../../helpers/testhost-env.js';
import { RawQmp } from '../../helpers/hotplug.js';
import { projectRoot } from '../../../core/paths.js';
import { lockedBytes } from '../../../core/vfio/limits.js';

test('system_reset with edu assigned: the guest runs the edu program twice, interrupts work after the reset', async () => {
  const edu = hostDevice('edu');
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-reset-'));
  const cfg = join(dir, 'vm.json'), sock = join(dir, 'qmp.sock');
  // test=hotplug finds edu at once (assigned at boot), uses it, then waits for it to go away.
  writeFileSync(cfg, JSON.stringify({ memory: 64, kernel: { path: join(projectRoot, 'guest/out/tsvmm-guest.elf') },
    cmdline: 'test=hotplug dev=1234:11e8 dma=1 msi=2 intx=2', devices: [{ type: 'vfio-pci', id: 'edu', host: edu.bdf }] }));
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
    const pinned = lockedBytes(vmm.pid!);
    assert.deepEqual(await q.cmd('system_reset'), { return: {} });
    assert.deepEqual((await q.event('RESET')).data, { guest: false, reason: 'host-qmp-system-reset' });
    await until(() => count('hotplug used rc=0') === 2, 'second run of the edu program after system_reset');
    assert.equal(count('tsvmm-guest: start'), 2);
    for (const t of ['edu-msi', 'edu-intx', 'edu-dma']) assert.equal(count(`PASS ${t}`), 2, `${t} passed in both runs`);
    assert.equal(lockedBytes(vmm.pid!), pinned, 'the reset neither leaks nor drops DMA mappings');
    await q.cmd('quit');
    assert.equal(await exited, 0, err);
    q.sock.destroy();
  } finally {
    if (vmm.exitCode === null) vmm.kill('SIGKILL');
  }
});
