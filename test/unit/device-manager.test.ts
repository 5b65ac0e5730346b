// The device manager's hot-plug bookkeeping (pure logic, with a stand-in for the VFIO state: what
// is checked here is who closes which passed fd, not VFIO): a device_add that fails closes the fds
// it was given and no one took, leaves the ones a taker took to the taker, and leaves no device.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, fstatSync, openSync } from 'node:fs';
import { PassedFds, type PassedFd } from '../../core/fdpass.js';
import { VfioSetupError } from '../../core/vfio/sysfs.js';
import { TsvmmError } from '../../core/errors.js';
import type { Vfio } from '../../core/vfio/vfio.js';
import { MemoryRegion } from '../../core/memory/index.js';
import { PciBus, PciDevice } from '../../hw/pci.js';
import type { AcpiPciHotplug } from '../../hw/pci-hotplug.js';
import { DeviceManager } from '../../machine/devices.js';
import { KvmInterrupts } from '../../machine/interrupts.js';
import { FakeKvm } from '../helpers/fake-vfio-pci.js';

const isOpen = (fd: number) => {
  try {
    fstatSync(fd);
    return true;
  } catch {
    return false;
  }
};

function manager(vfio: Partial<Vfio>) {
  const passedFds = new PassedFds();
  const bus = new PciBus(MemoryRegion.container('pci-mem', 2 ** 40), MemoryRegion.container('io', 0x10000), 2 ** 40);
  const deleted: string[] = [];
  const dm = new DeviceManager({
    vfio: { refusePassed: () => undefined, groups: new Map(), ...vfio } as Vfio,
    interrupts: new KvmInterrupts(new FakeKvm(2 ** 46).vm()),
    pciBus: bus,
    passedFds,
    pciHotplug: {} as AcpiPciHotplug,
    windows: { mmio32: { base: 0xc0000000, end: 0xfec00000 }, io: { base: 0xc000, end: 0x10000 } },
    intxGsi: (slot) => 16 + (slot % 8),
    acpi: () => false,
    unplug: () => undefined,
    event: (e) => {
      if (e.type === 'device-deleted') deleted.push(e.device);
    },
    deviceError: () => {},
  });
  return { dm, passedFds, bus };
}

const fds = (): PassedFd[] => [
  { name: 'g', kind: 'vfio-group', group: 9, fd: openSync('/dev/null', 'r') },
  { name: 'i', kind: 'iommufd', fd: openSync('/dev/null', 'r') },
];

test('device_add that fails to open the device: the passed fds no one took are closed', () => {
  let taken: number | undefined;
  const { dm, passedFds } = manager({
    open: () => {
      taken = passedFds.take({ kind: 'vfio-group', group: 9 }); // the backend took the group fd…
      throw new VfioSetupError('VFIO_GROUP_GET_DEVICE_FD failed'); // …then failed
    },
  });
  const given = fds();
  assert.throws(() => dm.hotplug({ id: 'd', host: '0000:00:03.0' }, given), /GET_DEVICE_FD failed/);
  assert.equal(taken, given[0]!.fd);
  assert.ok(isOpen(taken!), 'the taken fd is the taker’s to close');
  assert.ok(!isOpen(given[1]!.fd), 'the untaken iommufd is closed');
  assert.equal(passedFds.list.length, 0);
  assert.equal(dm.devices.length, 0);
  closeSync(taken!);
});

test('device_add refused before anything opens (fds that clash, an unknown driver): all its fds are closed', () => {
  const { dm } = manager({ refusePassed: () => 'VFIO group 9 is already open in this VM: pass no second fd for it' });
  const given = fds();
  assert.throws(
    () => dm.hotplug({ id: 'd', host: 'x' }, given),
    (e: unknown) => e instanceof VfioSetupError && /already open/.test(e.message),
  );
  assert.ok(given.every((p) => !isOpen(p.fd)));

  const other = manager({ open: () => assert.fail('no model, nothing opened') });
  const again = fds();
  assert.throws(
    () => other.dm.hotplug({ id: 'd', host: 'x', type: 'virtio-net' }, again),
    (e: unknown) =>
      e instanceof TsvmmError && e.code === 'ERR_DEVICE' && /no device model 'virtio-net'/.test(e.message),
  );
  assert.ok(again.every((p) => !isOpen(p.fd)));
  assert.equal(other.passedFds.list.length, 0);
});

test('device_add into a taken slot is refused before the host device is opened (or reset): its fds are closed', () => {
  const { dm, bus, passedFds } = manager({ open: () => assert.fail('the host device must not be opened') });
  bus.attach(new PciDevice('testdev', { vendor: 0x1b36, device: 0x0005, classCode: 0x00ff00 }), 3);
  const given = fds();
  assert.throws(
    () => dm.hotplug({ id: 'd', host: '0000:00:03.0', slot: 3 }, given),
    (e: unknown) =>
      e instanceof TsvmmError && e.code === 'ERR_DEVICE' && /PCI slot 3 is taken by testdev/.test(e.message),
  );
  assert.ok(given.every((p) => !isOpen(p.fd)));
  assert.equal(passedFds.list.length, 0);
  assert.equal(dm.devices.length, 0);
});
