// Runs INSIDE the test host (tsvmm testhost test): the host gives KVM, the VFIO container API, the devices the
// suite relies on bound to vfio-pci, a two-device IOMMU group behind a pci-bridge, and the nvme image's bytes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, readlinkSync, statSync } from 'node:fs';
import { basename } from 'node:path';

interface HostDevice {
  bdf: string;
  id: string;
  group: number | null;
  driver: string | null;
  vfioGroup: string | null;
  vfioCdev: string | null;
}

function hostDevices(): Record<string, HostDevice> {
  assert.equal(process.env.TSVMM_TESTHOST, '1', 'not inside the test host: run through `tsvmm testhost test`');
  assert.ok(process.env.TSVMM_TESTHOST_DEVICES, 'TSVMM_TESTHOST_DEVICES is not set');
  return JSON.parse(process.env.TSVMM_TESTHOST_DEVICES) as Record<string, HostDevice>;
}

function device(name: string): HostDevice {
  const d = hostDevices()[name];
  assert.ok(
    d,
    `device '${name}' is not in this host (TSVMM_TESTHOST_DEVICES has ${Object.keys(hostDevices()).join(', ')}); boot it with the default device sets`,
  );
  return d;
}

/** The device's IOMMU group number, read from sysfs (not from the map). */
function sysfsGroup(bdf: string): number {
  return Number(basename(readlinkSync(`/sys/bus/pci/devices/${bdf}/iommu_group`)));
}

test('the host has KVM and the VFIO container', () => {
  assert.ok(statSync('/dev/kvm').isCharacterDevice(), '/dev/kvm');
  assert.ok(statSync('/dev/vfio/vfio').isCharacterDevice(), '/dev/vfio/vfio');
  assert.match(process.env.TSVMM_TESTHOST_KERNEL ?? '', /^(debian|iommufd)$/);
});

test('edu is bound to vfio-pci and its group device exists', () => {
  const edu = device('edu');
  assert.equal(edu.id, '1234:11e8');
  assert.equal(basename(readlinkSync(`/sys/bus/pci/devices/${edu.bdf}/driver`)), 'vfio-pci');
  const group = sysfsGroup(edu.bdf);
  assert.equal(edu.group, group);
  assert.equal(edu.vfioGroup, `/dev/vfio/${group}`);
  assert.ok(statSync(`/dev/vfio/${group}`).isCharacterDevice(), `/dev/vfio/${group}`);
  assert.equal(readFileSync(`/sys/bus/pci/devices/${edu.bdf}/vendor`, 'utf8').trim(), '0x1234');
  assert.equal(readFileSync(`/sys/bus/pci/devices/${edu.bdf}/device`, 'utf8').trim(), '0x11e8');
});

test('the two devices behind the pci-bridge share one IOMMU group', () => {
  const a = device('bridge-edu');
  const b = device('bridge-testdev');
  const ga = sysfsGroup(a.bdf);
  const gb = sysfsGroup(b.bdf);
  assert.equal(ga, gb, `${a.bdf} is in group ${ga}, ${b.bdf} in group ${gb}`);
  assert.notEqual(ga, sysfsGroup(device('edu').bdf), "the bridge group must not be edu's");
  const members = readdirSync(`/sys/kernel/iommu_groups/${ga}/devices`);
  assert.ok(members.includes(a.bdf) && members.includes(b.bdf), `group ${ga}: ${members.join(' ')}`);
  for (const d of [a, b])
    assert.equal(basename(readlinkSync(`/sys/bus/pci/devices/${d.bdf}/driver`)), 'vfio-pci', d.bdf);
  assert.ok(statSync(`/dev/vfio/${ga}`).isCharacterDevice());
});

test('nvme and e1000e are bound to vfio-pci', () => {
  for (const [name, id] of [
    ['nvme', '1b36:0010'],
    ['e1000e', '8086:10d3'],
  ] as const) {
    const d = device(name);
    assert.equal(d.id, id);
    assert.equal(d.driver, 'vfio-pci');
    assert.ok(existsSync(`/dev/vfio/${sysfsGroup(d.bdf)}`), `${name}: /dev/vfio/${d.group}`);
  }
});

test('the nvme image made outside is visible inside, byte for byte', () => {
  device('nvme');
  const path = process.env.TSVMM_TESTHOST_NVME_IMAGE;
  const sha = process.env.TSVMM_TESTHOST_NVME_SHA256;
  assert.ok(path && sha, 'TSVMM_TESTHOST_NVME_IMAGE / _SHA256 not set');
  const data = readFileSync(path);
  assert.equal(data.length, Number(process.env.TSVMM_TESTHOST_NVME_BYTES));
  assert.equal(createHash('sha256').update(data).digest('hex'), sha);
  // The documented pattern (testhost/devices.ts): sector n starts "TSVMMNV1", then n as u64 LE.
  const n = 5;
  assert.equal(data.toString('latin1', n * 512, n * 512 + 8), 'TSVMMNV1');
  assert.equal(data.readBigUInt64LE(n * 512 + 8), BigInt(n));
  assert.equal(data[n * 512 + 100], (n * 7 + 100 * 13) & 0xff);
});
