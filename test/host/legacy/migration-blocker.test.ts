// An assigned device blocks migration (in the test host, edu on legacy VFIO): QMP migrate and the
// library's save() fail at once, naming the device, its host address and the reason (QEMU's "VFIO
// device doesn't support migration", and the device's answer to VFIO_DEVICE_FEATURE_MIGRATION); nothing is written, and the guest keeps running.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createVm, CommandError, TsvmmError } from '../../../lib/index.js';
import { guestPaths } from '../../../guest/index.js';
import { hostDevice } from '../../helpers/testhost-env.js';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-blocker-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

const counts = (s: string) => [...s.matchAll(/^count (\d+)\n/gm)].map((m) => Number(m[1]));

test('edu assigned: migrate and save() are refused naming edu and why; the guest counts on', async () => {
  const edu = hostDevice('edu');
  const vm = await createVm({
    name: 'blocker',
    memory: '64M',
    kernel: { path: guestPaths().elf },
    cmdline: 'test=count',
    devices: [{ type: 'vfio-pci', id: 'edu', host: edu.bdf }],
  });
  try {
    vm.start();
    await vm.waitForSerial(/count 20\n/, { timeoutMs: 60_000 });
    const file = join(dir, 'x.snap');
    const why = new RegExp(`edu \\(${edu.bdf.replace(/\./g, '\\.')}\\): VFIO device doesn't support migration`);
    await assert.rejects(vm.command('migrate', { uri: `file:${file}` }), (e: unknown) => {
      assert.ok(e instanceof CommandError, String(e));
      assert.equal(e.errorClass, 'GenericError');
      assert.match(e.message, why);
      // The device says why (asked through VFIO_DEVICE_FEATURE_MIGRATION): plain vfio-pci has no migration driver.
      assert.match(e.message, /driver vfio-pci\): its driver \(vfio-pci\) has no migration support/);
      return true;
    });
    await assert.rejects(vm.save(file), (e: unknown) => {
      assert.ok(e instanceof TsvmmError, String(e));
      assert.equal(e.code, 'ERR_MIGRATION');
      assert.match(e.message, why);
      return true;
    });
    assert.equal(existsSync(file), false, 'a refused migration writes nothing');
    assert.deepEqual(await vm.command('query-migrate'), {}, 'a refused migration never started');
    assert.equal(vm.status(), 'running');
    const at = counts(vm.serial).length;
    await vm.waitForSerial(new RegExp(`count ${counts(vm.serial).at(-1)! + 20}\\n`), { timeoutMs: 60_000 });
    assert.ok(counts(vm.serial).length >= at + 20, 'the guest kept counting');
  } finally {
    await vm.close();
  }
});
