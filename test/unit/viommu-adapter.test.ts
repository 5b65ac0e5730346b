// QMP's side of the vIOMMU (device_add's iommu, query-pci's x-iommu) and the machine's adapter from the virtio-iommu's IommuHost to the host side (VfioViommu): the
// device model over the real VfioViommu and memory API (no endpoint is assigned here, so no
// kernel call is made: the kernel side is in test/host/linux/viommu-assigned.test.ts). Refusals
// keep their virtio-iommu status; a bypass domain is the host's bypass, not an address space.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AddressSpace, MemoryRegion } from '../../core/memory/index.js';
import { VfioViommu } from '../../core/vfio/viommu.js';
import { createViommu, vfioIommuHost, endpointId } from '../../machine/viommu.js';
import { PciBus, PciDevice } from '../../hw/pci.js';
import type { Vfio } from '../../core/vfio/vfio.js';
import { FakeInterrupts } from '../helpers/virtio-driver.js';
import { deviceAddSpec } from '../../frontend/commands.js';
import { pciDeviceInfo } from '../../frontend/pci-info.js';
import { VIRTIO_IOMMU_S_INVAL, VIRTIO_IOMMU_S_NOENT } from '../../hw/virtio/iommu-host.js';

const MiB = 2 ** 20;
const RW = { read: true, write: true };

function host() {
  const root = MemoryRegion.container('system', 2 ** 40);
  root.addSubregion(0, MemoryRegion.ram('ram', 8 * MiB, { hostAddr: 0x7f0000000000n }));
  root.addSubregion(16 * MiB, MemoryRegion.io('bar', MiB, { read: () => 0, write: () => {} }));
  const logged: string[] = [];
  const v = new VfioViommu(new AddressSpace('memory', root), { log: (l) => logged.push(l) });
  return { v, h: vfioIommuHost(() => v), logged };
}

test('domains and mappings reach VfioViommu; its counts follow the guest', () => {
  const { v, h } = host();
  assert.equal(h.createDomain(1, { bypass: false }), undefined);
  assert.equal(h.map(1, 0x10000, 0x200000, 0x2000, RW), undefined);
  assert.equal(h.map(1, 0x20000, 0x300000, 0x1000, { read: true, write: false }), undefined);
  let s = v.inspect();
  assert.deepEqual(
    s.domains.map((d) => ({ id: d.id, mappings: d.mappings })),
    [{ id: 1, mappings: 2 }],
  );
  assert.equal(s.stats.maps, 2);
  h.unmap(1, 0x10000, 0x2000);
  s = v.inspect();
  assert.equal(s.domains[0]!.mappings, 1);
  assert.equal(s.stats.unmaps, 1);
  h.destroyDomain(1);
  assert.deepEqual(v.inspect().domains, []);
});

test("the host's refusals keep their status: a map over MMIO or beyond RAM is S_INVAL, an overlap too, an unknown endpoint S_NOENT", () => {
  const { v, h } = host();
  h.createDomain(2, { bypass: false });
  assert.equal(h.map(2, 0, 16 * MiB, 0x1000, RW)?.status, VIRTIO_IOMMU_S_INVAL, 'MMIO');
  assert.equal(h.map(2, 0, 64 * MiB, 0x1000, RW)?.status, VIRTIO_IOMMU_S_INVAL, 'a hole');
  assert.equal(h.map(2, 0, 0, 0x1000, RW), undefined);
  assert.equal(h.map(2, 0, 0x1000, 0x1000, RW)?.status, VIRTIO_IOMMU_S_INVAL, 'overlap');
  const r = h.attach(0x18, { domain: 2 });
  assert.equal(r?.status, VIRTIO_IOMMU_S_NOENT);
  assert.match(r!.reason, /endpoint 24 is not an assigned device/);
  assert.equal(h.createDomain(2, { bypass: false })?.status, VIRTIO_IOMMU_S_INVAL, 'a domain made twice');
  assert.equal(v.inspect().domains[0]!.mappings, 1, 'refusals changed nothing');
});

test('a bypass domain is no host address space: its endpoints are told bypass, and it leaves nothing behind', () => {
  const { v, h } = host();
  assert.equal(h.createDomain(7, { bypass: true }), undefined);
  assert.deepEqual(v.inspect().domains, [], 'no host domain for an identity domain');
  // No endpoint is assigned here: the host refuses by the endpoint, not by domain 7 (it asked for 'bypass').
  assert.match(h.attach(0x20, { domain: 7 })!.reason, /endpoint 32 is not/);
  h.destroyDomain(7);
  assert.equal(h.createDomain(7, { bypass: false }), undefined, 'the id is free again, now for a real domain');
  assert.deepEqual(
    v.inspect().domains.map((d) => d.id),
    [7],
  );
});

test('endpoint ids are the requester ids the guest uses (bus 0: the devfn)', () => {
  assert.equal(endpointId({ devfn: 3 << 3 }), 0x18);
  assert.equal(endpointId({ devfn: (5 << 3) | 1 }), 0x29);
});

test("device_add's iommu: on/true put the device behind the vIOMMU, off/false do not, anything else is refused", () => {
  const base = { driver: 'vfio-pci', id: 'n', host: '0000:01:00.0' };
  for (const v of ['on', 'true', true]) assert.equal(deviceAddSpec({ ...base, iommu: v }).iommu, true, String(v));
  for (const v of ['off', 'false', false])
    assert.equal(deviceAddSpec({ ...base, iommu: v }).iommu, undefined, String(v));
  assert.equal(deviceAddSpec(base).iommu, undefined);
  assert.throws(() => deviceAddSpec({ ...base, iommu: 'yes' }), /Property 'vfio-pci.iommu' doesn't take value 'yes'/);
});

test('query-pci marks a device behind the vIOMMU with x-iommu, and only that one', () => {
  const dev = {
    slot: 3,
    function: 0,
    id: 'nvme',
    vendor: 0x1b36,
    device: 0x10,
    class: 0x010802,
    headerType: 0,
    subsystemVendor: 0,
    subsystem: 0,
    interruptLine: 0,
    interruptPin: 1,
    bars: [],
  };
  assert.equal((pciDeviceInfo({ ...dev, iommu: true }) as Record<string, unknown>)['x-iommu'], true);
  assert.equal('x-iommu' in (pciDeviceInfo(dev) as Record<string, unknown>), false);
});

test('the VIOT names the virtio-iommu, the endpoints behind it and the slots free at boot, never a 1:1 device', () => {
  const bus = new PciBus(
    MemoryRegion.container('pci-mem', 2 ** 40),
    MemoryRegion.container('pci-io', 0x10000),
    2 ** 40,
  );
  bus.attach(new PciDevice('host-bridge', { vendor: 0x8086, device: 0x29c0, classCode: 0x060000 }), 0);
  // Slots 1-3 taken by devices with the 1:1 mapping; the vIOMMU takes slot 4.
  for (const s of [1, 2, 3])
    bus.attach(new PciDevice(`plain${s}`, { vendor: 0x1234, device: 0x11e8, classCode: 0xff0000 }), s);
  const v = createViommu({
    bus,
    slot: undefined,
    memory: new AddressSpace('memory', MemoryRegion.container('system', 2 ** 40)),
    interrupts: new FakeInterrupts(),
    intxGsi: (s) => 16 + (s % 4),
    ioeventfd: undefined,
    vfio: {} as Vfio, // no endpoint is added: the host side is not reached
  });
  assert.equal(v.dev.devfn, 4 << 3);
  const viot = v.viot();
  assert.deepEqual(viot.iommu, { segment: 0, bdf: 4 << 3 });
  const named = viot.ranges.flatMap((r) => Array.from({ length: r.bdfEnd - r.bdfStart + 1 }, (_, i) => r.bdfStart + i));
  assert.deepEqual(
    named.map((b) => b >> 3),
    Array.from({ length: 27 }, (_, i) => i + 5),
    'slots 5-31 (free), not 1-3 (1:1) nor 4 (the vIOMMU itself)',
  );
  for (const r of viot.ranges) assert.equal(r.endpointStart, r.bdfStart, 'endpoint ids are requester ids');
  v.dev.destroy();
});
