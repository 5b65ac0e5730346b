// The library with a device assigned (legacy VFIO, in the test host): edu through createVm with
// a config like configs/edu-vfio.json; the guest's DMA and MSI tests pass on its console; while
// the guest is in its MSI phase, inspect() shows the DMA mappings, the pinned RAM and the MSI
// vector enabled; close() leaves nothing pinned. And hot-plug through the library: deviceAdd while
// the guest polls the bus, the guest's use of the device, deviceDel.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createVm, TsvmmError } from '../../../lib/index.js';
import { guestPaths } from '../../../guest/index.js';
import { hostDevice } from '../../helpers/testhost-env.js';
import { lockedBytes } from '../../../core/vfio/limits.js';

const MiB = 2 ** 20;

test('edu through createVm: DMA and MSI pass, inspect() shows mappings, pinned RAM and the MSI vector; close() unpins', async () => {
  const edu = hostDevice('edu');
  // Many MSIs, so that the guest is still in its MSI phase when the test stops it to look.
  const vm = await createVm({
    name: 'edu-api',
    memory: '64M',
    kernel: { path: guestPaths().elf },
    cmdline: 'test=edu dma=1 msi=2000 intx=3',
    devices: [{ type: 'vfio-pci', id: 'edu', host: edu.bdf }],
  });
  try {
    const before = vm.inspect();
    assert.equal(before.pinnedBytes, 64 * MiB, 'all guest RAM is pinned for DMA once the device is assigned');
    assert.ok(lockedBytes() >= 64 * MiB, `the kernel accounts it (VmLck ${lockedBytes()})`);
    const mapped = before.dmaMappings.reduce((n, m) => n + m.size, 0);
    assert.equal(mapped, 64 * MiB, JSON.stringify(before.dmaMappings));
    assert.ok(before.dmaMappings.some((m) => m.iova === 0 && !m.readonly));

    vm.start();
    await vm.waitForSerial('PASS edu-dma', { timeoutMs: 60_000 });
    const dma = /edu dma iova=0x([0-9a-f]+) 0x([0-9a-f]+)/.exec(vm.serial)!;
    for (const a of [dma[1]!, dma[2]!].map((h) => parseInt(h, 16)))
      assert.ok(
        before.dmaMappings.some((m) => a >= m.iova && a + 256 <= m.iova + m.size),
        `the guest's DMA address 0x${a.toString(16)} is mapped`,
      );
    await vm.waitForSerial(/edu msi cap=0x[0-9a-f]+ \d+-bit/, { timeoutMs: 60_000 });
    await vm.stop();
    assert.ok(!/edu msi count=/.test(vm.serial), 'stopped inside the MSI phase (else raise msi=)');
    const during = vm.inspect();
    assert.deepEqual(during.interrupts, [{ device: 'edu', host: edu.bdf, msi: 1, msix: 0, intx: 0 }]);
    const pci = during.pciDevices.find((d) => d.id === 'edu');
    assert.ok(pci, JSON.stringify(during.pciDevices));
    assert.equal(pci.vendor, 0x1234);
    assert.equal(pci.device, 0x11e8);
    assert.equal(pci.host, edu.bdf);
    const bar0 = pci.bars.find((b) => b.index === 0)!;
    assert.equal(bar0.size, MiB);
    assert.ok(bar0.address !== undefined && bar0.address >= 0xc000_0000, JSON.stringify(bar0));
    assert.ok(
      during.memslots.some((s) => s.guestAddr === bar0.address && s.size === MiB),
      "BAR0's mmap is a memslot (direct access)",
    );
    await vm.cont();

    const exit = await vm.waitForExit({ timeoutMs: 120_000 });
    assert.equal(exit.status, 0, `${exit.reason}\n${vm.serial}`);
    for (const t of ['edu-id', 'edu-factorial', 'edu-dma', 'edu-msi', 'edu-intx'])
      assert.match(vm.serial, new RegExp(`^PASS ${t}$`, 'm'));
    const after = vm.inspect();
    // The guest turned MSI off and used INTx last.
    assert.deepEqual(after.interrupts, [{ device: 'edu', host: edu.bdf, msi: 0, msix: 0, intx: 1 }]);
    // BAR0 is mmap'd: none of the guest's many BAR accesses exited.
    assert.equal(after.exits.mmio, 0);
  } finally {
    await vm.close();
  }
  assert.equal(lockedBytes(), 0, 'every pinned page is released by close()');
});

test('hot-plug through the library: deviceAdd, the guest uses edu (DMA, MSI), deviceDel, nothing left pinned', async () => {
  const edu = hostDevice('edu');
  const events: string[] = [];
  {
    await using vm = await createVm({
      name: 'hotplug-api',
      memory: '64M',
      kernel: { path: guestPaths().elf },
      cmdline: 'test=hotplug dev=1234:11e8 dma=1 msi=2',
    });
    vm.on('event', (name, data) =>
      events.push(`${name}${data && 'device' in data && data.device ? ` ${data.device}` : ''}`),
    );
    vm.start();
    await vm.waitForSerial('hotplug ready');
    assert.equal(vm.inspect().pinnedBytes, 0, 'nothing pinned before a device is assigned');
    await vm.deviceAdd({ driver: 'vfio-pci', id: 'edu', host: edu.bdf, addr: 5 });
    const added = vm.inspect();
    assert.equal(added.pinnedBytes, 64 * MiB, 'guest RAM pinned as the device joins');
    assert.ok(
      added.pciDevices.some((d) => d.id === 'edu' && d.slot === 5 && d.host === edu.bdf),
      JSON.stringify(added.pciDevices),
    );
    // The library gives the device manager's error; QMP's shape of the same call flattens it, as QEMU's.
    await rejectsCode(vm.deviceAdd({ driver: 'vfio-pci', id: 'edu', host: edu.bdf }), 'ERR_DEVICE', /exists already/);
    await rejectsCode(
      vm.command('device_add', { driver: 'vfio-pci', id: 'edu', host: edu.bdf }),
      'ERR_QMP',
      /exists already/,
    );
    await vm.waitForSerial(/^hotplug used rc=0$/m, { timeoutMs: 60_000 });
    for (const t of ['edu-dma', 'edu-msi']) assert.match(vm.serial, new RegExp(`^PASS ${t}$`, 'm'));
    // A guest without ACPI: the device goes at once.
    await vm.deviceDel('edu', { timeoutMs: 10_000 });
    const removed = vm.inspect();
    assert.ok(!removed.pciDevices.some((d) => d.id === 'edu'));
    assert.deepEqual(removed.interrupts, []);
    const exit = await vm.waitForExit({ timeoutMs: 60_000 });
    assert.equal(exit.status, 0, `${exit.reason}\n${vm.serial}`);
    assert.match(vm.serial, /^hotplug gone$/m);
  }
  assert.deepEqual(events, ['DEVICE_DELETED edu', 'SHUTDOWN']);
  assert.equal(lockedBytes(), 0, 'every pinned page is released');
});

async function rejectsCode(p: Promise<unknown>, code: string, re: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => e instanceof TsvmmError && e.code === code && re.test(e.message));
}
