// The library's pure parts (no KVM here): config errors before anything opens, abort before
// start, the typed operations as QMP arguments, serial patterns. The VM itself: test/kvm/api.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createVm, TsvmmError, ConfigError, type VmConfig } from '../../lib/index.js';
import { deviceAddArgs, lastLines, serialPattern } from '../../lib/args.js';
import { checkArguments } from '../../frontend/qmp/server.js';
import { deviceAddSpec } from '../../frontend/commands.js';

test('createVm: a bad config is a ConfigError (ERR_CONFIG) with every problem, before anything opens', async () => {
  const bad = { memory: '65537K', kernel: { path: 'missing.elf' }, colour: 'red' } as unknown as VmConfig;
  await assert.rejects(createVm(bad, { baseDir: '/nonexistent-dir' }), (e: unknown) => {
    assert.ok(e instanceof ConfigError && e instanceof TsvmmError);
    assert.equal(e.code, 'ERR_CONFIG');
    assert.ok(
      e.problems.some((p) => /unknown key "colour"/.test(p)),
      e.message,
    );
    return true;
  });
  await assert.rejects(createVm({ kernel: { path: 'guest.elf' } }, { baseDir: '/nonexistent-dir' }), (e: unknown) => {
    assert.ok(e instanceof ConfigError);
    assert.match(e.problems.join('\n'), /\/kernel\/path: \/nonexistent-dir\/guest\.elf does not exist/);
    return true;
  });
});

test('createVm: an aborted signal is ERR_ABORTED, with the reason as cause', async () => {
  const ac = new AbortController();
  ac.abort(new Error('test over'));
  await assert.rejects(createVm({ kernel: { path: 'x' } }, { signal: ac.signal }), (e: unknown) => {
    assert.ok(e instanceof TsvmmError);
    assert.equal(e.code, 'ERR_ABORTED');
    assert.equal((e.cause as Error).message, 'test over');
    return true;
  });
});

test('deviceAdd: the typed device as device_add arguments the QMP schema accepts', () => {
  const a = deviceAddArgs(
    { driver: 'vfio-pci', id: 'edu', host: '0000:00:03.0', addr: 5, rombar: false, romfile: 'rom.bin' },
    '/base',
  );
  assert.deepEqual(a, {
    driver: 'vfio-pci',
    id: 'edu',
    host: '0000:00:03.0',
    addr: 5,
    rombar: false,
    romfile: '/base/rom.bin',
  });
  checkArguments('device_add', a);
  assert.deepEqual(deviceAddArgs({ driver: 'vfio-pci', id: 'x', sysfsdev: '/sys/x', romfile: '/abs' }, '/base'), {
    driver: 'vfio-pci',
    id: 'x',
    sysfsdev: '/sys/x',
    romfile: '/abs',
  });
  const behind = deviceAddArgs({ driver: 'vfio-pci', id: 'n', host: '0000:00:04.0', iommu: true }, '/base');
  assert.deepEqual(behind, { driver: 'vfio-pci', id: 'n', host: '0000:00:04.0', iommu: true });
  checkArguments('device_add', behind);
  assert.equal(deviceAddSpec(behind).iommu, true, "the command layer reads the library's iommu");
});

test('serial patterns: strings match literally; g/y flags carry no state between polls', () => {
  const s = serialPattern('a.b (1)');
  assert.ok(s.test('x a.b (1) y'));
  assert.ok(!s.test('aXb (1)'));
  const r = serialPattern(/ok (\d+)/gy);
  assert.equal(r.flags, '');
  assert.equal(r.exec('.. ok 1')?.[1], '1');
  assert.equal(r.exec('.. ok 2')?.[1], '2');
  assert.equal(serialPattern(/A/i).flags, 'i');
  assert.equal(lastLines('1\n2\r\n3\n', 2), '2\n3');
  assert.equal(lastLines(''), '');
});
