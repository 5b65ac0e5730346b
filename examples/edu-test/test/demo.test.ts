// The demo guest (the multiboot test guest shipped in tsvmm) on this machine's /dev/kvm: it boots,
// lists the PCI bus over the serial port and ends the VM through the debug-exit port with status 0.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createVm } from 'tsvmm';
import { testGuest, waitForLine } from 'tsvmm/testing';

test('the demo guest boots, prints its banner and PCI bus, and exits 0', async () => {
  await using vm = await createVm({ name: 'demo', memory: '64M', kernel: { path: testGuest.elf } });

  // Created, not started yet: guest RAM is already in KVM's memory slots.
  const info = vm.inspect();
  assert.equal(info.memory.size, 64 * 2 ** 20);
  assert.ok(info.memslots.length > 0, 'no memslots');
  assert.ok(
    info.memslots.some((s) => !s.readonly && s.guestAddr <= 0x100000 && s.guestAddr + s.size > 0x100000),
    'no RAM memslot where the guest is loaded (1 MiB)',
  );
  assert.equal(info.vcpus, 1);

  vm.start();
  await waitForLine(vm, 'tsvmm-guest: hello from a tiny multiboot guest', { timeoutMs: 30_000 });
  const [, count] = await waitForLine(vm, /tsvmm-guest: (\d+) pci functions/);
  assert.ok(Number(count) >= 1, 'the host bridge at least');

  const exit = await vm.waitForExit({ timeoutMs: 30_000 });
  assert.equal(exit.status, 0, `${exit.reason}\n${vm.serial}`);
  assert.match(vm.serial, /tsvmm-guest: exit 0/);
});
