// QEMU's edu device assigned with VFIO, in tsvmm's test host (run this file there:
// `tsvmm testhost run --devices edu -- node --test dist/test/edu.test.js`). The test guest drives
// edu's DMA engine and its MSI; the test reads what the guest printed and what tsvmm reports.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createVm, type VmInspection } from 'tsvmm';
import { guestResults, testGuest, testHostDevice, waitForLine } from 'tsvmm/testing';

const edu = testHostDevice('edu'); // {bdf: '0000:00:03.0', vfioGroup, …}; throws outside the test host
const MiB = 2 ** 20;

const eduVm = (cmdline: string) =>
  createVm({
    name: 'edu',
    memory: '64M',
    kernel: { path: testGuest.elf },
    cmdline,
    devices: [{ type: 'vfio-pci', id: 'edu', host: edu.bdf }],
  });

const mapped = (info: VmInspection, addr: number, size: number) =>
  info.dmaMappings.some((m) => addr >= m.iova && addr + size <= m.iova + m.size);

test('edu: the guest DMAs through the IOMMU into its RAM and gets MSIs', async () => {
  await using vm = await eduVm('test=edu dma=1 msi=3');

  // Guest RAM is mapped for the device's DMA (IOVA = guest-physical address) before the guest runs.
  const info = vm.inspect();
  assert.ok(info.dmaMappings.length > 0, 'no DMA mappings');
  assert.ok(mapped(info, 0x100000, MiB), 'the RAM the guest is loaded in is not DMA-mapped');
  const dev = info.pciDevices.find((d) => d.id === 'edu');
  assert.ok(dev, 'edu is not on the PCI bus');
  assert.equal(dev.vendor, 0x1234);
  assert.equal(dev.device, 0x11e8);
  assert.equal(dev.host, edu.bdf);

  vm.start();
  // The guest's DMA buffers, as it prints them, lie in what tsvmm mapped.
  const [, src, dst] = await waitForLine(vm, /edu dma iova=(0x[0-9a-f]+) (0x[0-9a-f]+)/, { timeoutMs: 60_000 });
  assert.ok(mapped(info, Number(src), 4096) && mapped(info, Number(dst), 4096), `${src}, ${dst} not DMA-mapped`);
  await waitForLine(vm, /^PASS edu-dma$/);
  await waitForLine(vm, /^edu msi count=3 ok$/);
  await waitForLine(vm, /^PASS edu-msi$/);

  const exit = await vm.waitForExit({ timeoutMs: 60_000 });
  assert.equal(exit.status, 0, `${exit.reason}\n${vm.serial}`);
  const results = guestResults(vm.serial);
  assert.deepEqual(
    results.filter((r) => !r.pass),
    [],
  );
  assert.deepEqual(
    results.map((r) => r.name),
    ['edu-id', 'edu-liveness', 'edu-factorial', 'edu-dma', 'edu-msi'],
  );
});

test('edu: an enabled MSI vector shows in inspect(), while the guest waits on it', async () => {
  // bench-msi: the guest enables edu's MSI, says "armed", stays quiet for 0.5 s, then raises and
  // takes interrupts for 2 s (count=2000), waits 1.5 s more and only then disables MSI.
  await using vm = await eduVm('test=bench-msi count=2000');
  vm.start();
  await waitForLine(vm, /^bench msi armed$/, { timeoutMs: 60_000 });

  await vm.stop(); // the same stop/cont as QMP's
  assert.equal(vm.status(), 'paused');
  const info = vm.inspect();
  await vm.cont();
  assert.equal(vm.status(), 'running');

  const irq = info.interrupts.find((i) => i.device === 'edu');
  assert.ok(irq, `no interrupt state for edu: ${JSON.stringify(info.interrupts)}`);
  assert.equal(irq.msi, 1, 'edu has one MSI vector enabled');
  assert.equal(irq.msix, 0);

  const [, n] = await waitForLine(vm, /^bench msi done n=(\d+) /, { timeoutMs: 60_000 });
  assert.ok(Number(n) > 0, 'no MSI arrived');
  const exit = await vm.waitForExit({ timeoutMs: 30_000 });
  assert.equal(exit.status, 0, `${exit.reason}\n${vm.serial}`);
});
