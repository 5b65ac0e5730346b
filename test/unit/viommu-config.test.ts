import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { guestPaths } from '../../guest/index.js';
import { checkConfig, ConfigError } from '../../machine/config/config.js';
import { parseDevice, parseIommuDevice } from '../../bin/cli/run.js';
import { projectRoot } from '../../core/paths.js';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-viommu-'));
copyFileSync(guestPaths().elf, join(dir, 'guest.elf'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const kernel = { path: 'guest.elf' };

function problems(raw: unknown): string[] {
  try {
    checkConfig(raw, 'test.json', dir);
  } catch (e) {
    assert.ok(e instanceof ConfigError, String(e));
    return e.problems;
  }
  assert.fail('config was accepted');
}

test('config: a machine-level virtio vIOMMU and devices behind it', () => {
  const c = checkConfig(
    { kernel, iommu: { type: 'virtio', slot: 6 }, devices: [{ type: 'vfio-pci', host: '01:00.0', iommu: true }] },
    'test.json',
    dir,
  );
  assert.deepEqual(c.iommu, { type: 'virtio', slot: 6 });
  assert.equal(c.devices[0]!.iommu, true);
  assert.equal(checkConfig({ kernel }, 'test.json', dir).iommu, undefined, 'none unless asked');
});

test('config: what is wrong with a vIOMMU set-up is said, with the fix', () => {
  assert.deepEqual(problems({ kernel, devices: [{ type: 'vfio-pci', host: '01:00.0', iommu: true }] }), [
    '/devices/0/iommu: the device is to be behind the vIOMMU, but the VM has none: add "iommu": {"type": "virtio"} at the top level, or drop "iommu" from the device (it then keeps the 1:1 mapping of guest RAM)',
  ]);
  assert.match(
    problems({
      kernel,
      iommu: { type: 'virtio', slot: 3 },
      devices: [{ type: 'vfio-pci', host: '01:00.0', slot: 3 }],
    }).join('\n'),
    /\/iommu\/slot: slot 3 is used by a device/,
  );
  assert.ok(problems({ kernel, iommu: { type: 'intel' } }).some((p) => p.startsWith('/iommu/type')));
  assert.ok(problems({ kernel, iommu: {} }).some((p) => p.startsWith('/iommu')));
  assert.ok(problems({ kernel, iommu: { type: 'virtio', slot: 0 } }).some((p) => p.startsWith('/iommu/slot')));
  assert.ok(
    problems({ kernel, devices: [{ type: 'vfio-pci', host: '01:00.0', iommu: 'on' }] }).some((p) =>
      p.startsWith('/devices/0/iommu'),
    ),
  );
});

test('--device: virtio-iommu-pci as QEMU spells it, iommu=on on a device as cloud-hypervisor does', () => {
  assert.deepEqual(parseIommuDevice('virtio-iommu-pci'), { type: 'virtio' });
  assert.deepEqual(parseIommuDevice('virtio-iommu-pci,addr=0x6.0'), { type: 'virtio', slot: 6 });
  assert.throws(() => parseIommuDevice('virtio-iommu-pci,bus=pcie.0'), /virtio-iommu-pci has no property 'bus'/);
  assert.deepEqual(parseDevice('vfio-pci,host=01:00.0,iommu=on'), { type: 'vfio-pci', host: '01:00.0', iommu: true });
  assert.deepEqual(parseDevice('vfio-pci,host=01:00.0,iommu=off'), { type: 'vfio-pci', host: '01:00.0', iommu: false });
  assert.throws(() => parseDevice('vfio-pci,host=01:00.0,iommu=yes'), /iommu=yes: give iommu=on or iommu=off/);
  // Through the command line, and its config check.
  const cli = join(projectRoot, 'dist/bin/tsvmm.cjs');
  const run = (...args: string[]) =>
    spawnSync(process.execPath, [cli, 'run', '--print-config', '--kernel', 'guest.elf', ...args], {
      encoding: 'utf8',
      cwd: dir,
    });
  const ok = run('--device', 'virtio-iommu-pci,addr=7', '--device', 'vfio-pci,host=01:00.0,iommu=on');
  assert.equal(ok.status, 0, ok.stderr);
  const cfg = JSON.parse(ok.stdout);
  assert.deepEqual(cfg.iommu, { type: 'virtio', slot: 7 });
  assert.equal(cfg.devices[0].iommu, true);
  const twice = run('--device', 'virtio-iommu-pci', '--device', 'virtio-iommu-pci');
  assert.equal(twice.status, 2);
  assert.match(twice.stderr, /one virtio-iommu-pci at most/);
  const none = run('--device', 'vfio-pci,host=01:00.0,iommu=on');
  assert.equal(none.status, 2);
  assert.match(none.stderr, /the device is to be behind the vIOMMU, but the VM has none/);
});
