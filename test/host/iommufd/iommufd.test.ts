// Runs INSIDE the test host with the iommufd kernel: /dev/iommu, VFIO device cdevs, and mdev (the mtty sample).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { existsSync, readdirSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { basename } from 'node:path';

interface HostDevice {
  bdf: string;
  id: string;
  group: number | null;
  driver: string | null;
  vfioGroup: string | null;
  vfioCdev: string | null;
}

function devices(): Record<string, HostDevice> {
  assert.equal(process.env.TSVMM_TESTHOST, '1', 'not inside the test host: run through `tsvmm testhost test`');
  assert.equal(process.env.TSVMM_TESTHOST_KERNEL, 'iommufd', 'these tests need the iommufd kernel (--kernel iommufd)');
  return JSON.parse(process.env.TSVMM_TESTHOST_DEVICES ?? '{}') as Record<string, HostDevice>;
}

test('/dev/iommu exists', () => {
  devices();
  assert.ok(statSync('/dev/iommu').isCharacterDevice(), '/dev/iommu');
});

test('edu has a VFIO device cdev', () => {
  const edu = devices().edu;
  assert.ok(edu, 'edu is not in TSVMM_TESTHOST_DEVICES');
  const names = readdirSync(`/sys/bus/pci/devices/${edu.bdf}/vfio-dev`);
  assert.equal(names.length, 1, `vfio-dev: ${names.join(' ')}`);
  assert.match(names[0]!, /^vfio\d+$/);
  assert.equal(edu.vfioCdev, `/dev/vfio/devices/${names[0]}`);
  assert.ok(statSync(edu.vfioCdev).isCharacterDevice(), edu.vfioCdev);
});

test('an mtty mdev created through sysfs gets its own IOMMU group and cdev', () => {
  const edu = devices().edu;
  const type = '/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-1';
  assert.ok(existsSync(type), `${type} missing (is CONFIG_SAMPLE_VFIO_MDEV_MTTY=y?)`);
  const uuid = randomUUID();
  const dev = `/sys/bus/mdev/devices/${uuid}`;
  writeFileSync(`${type}/create`, uuid);
  try {
    assert.ok(existsSync(dev), dev);
    const group = Number(basename(readlinkSync(`${dev}/iommu_group`)));
    assert.ok(Number.isInteger(group));
    if (edu?.group != null) assert.notEqual(group, edu.group);
    assert.ok(statSync(`/dev/vfio/${group}`).isCharacterDevice(), `/dev/vfio/${group}`);
    const cdevs = readdirSync(`${dev}/vfio-dev`);
    assert.equal(cdevs.length, 1);
    assert.ok(statSync(`/dev/vfio/devices/${cdevs[0]}`).isCharacterDevice());
  } finally {
    if (existsSync(dev)) writeFileSync(`${dev}/remove`, '1');
  }
  assert.ok(!existsSync(dev), `${dev} still there after remove`);
});
