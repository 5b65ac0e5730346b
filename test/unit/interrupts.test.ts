// The KVM-backed interrupt groups (machine/interrupts.ts) against the in-memory KVM of
// fake-vfio-pci.ts, with real eventfds: masking keeps the route and unbinds the irqfd, a signal
// while masked waits in the eventfd (pending), and nothing is left after disable/close.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeSync } from 'node:fs';
import { FakeKvm } from '../helpers/fake-vfio-pci.js';
import { KvmInterrupts } from '../../machine/interrupts.js';

const ONE = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);
const msg = (data: number) => ({ addressLo: 0xfee00000, addressHi: 0, data });

test('MSI group: a vector is a route and an irqfd; masking unbinds the irqfd, keeps the route and the signal', () => {
  const kvm = new FakeKvm(2 ** 46);
  const group = new KvmInterrupts(kvm.vm()).msiGroup(4);
  assert.equal(group.notifier(0), undefined);
  group.mask(0); // never set up: nothing to mask
  group.update(0, { ...msg(0x41), masked: false });
  const fd = group.notifier(0)!;
  const [gsi] = [...kvm.msiRoutes.keys()];
  assert.deepEqual([...kvm.irqfds], [`${fd}:${gsi}`]);
  group.update(0, { ...msg(0x42), masked: false });
  assert.equal(kvm.msiRoutes.get(gsi!)!.data, 0x42, 'a new message re-routes the same GSI');
  assert.equal(group.notifier(0), fd, 'and keeps the eventfd VFIO has');

  group.mask(0);
  assert.equal(kvm.irqfds.size, 0, 'masked: no irqfd');
  assert.equal(kvm.msiRoutes.size, 1, 'masked: the route stays');
  assert.equal(group.pending(0), false);
  writeSync(fd, ONE); // the device signals while masked
  assert.equal(group.pending(0), true, 'the signal is pending');
  assert.equal(group.pending(0), false, 'and reading it consumed it');

  group.update(0, { ...msg(0x42), masked: false });
  assert.deepEqual([...kvm.irqfds], [`${fd}:${gsi}`], 'unmasked: the irqfd is back');
  assert.equal(group.pending(0), false, 'an unmasked vector is never pending');
  assert.throws(() => group.update(4, { ...msg(0), masked: false }), RangeError);

  group.update(1, { ...msg(0x43), masked: true });
  assert.equal(kvm.irqfds.size, 1, 'a vector set up masked has no irqfd yet');
  group.disable();
  assert.equal(kvm.irqfds.size + kvm.msiRoutes.size, 0, 'disable leaves no route or irqfd');
  assert.equal(group.notifier(0), undefined);
});

test('MSI group: a failed set-up (out of GSIs) takes nothing', () => {
  const kvm = new FakeKvm(2 ** 46, 25); // one MSI GSI (24)
  const group = new KvmInterrupts(kvm.vm()).msiGroup(2);
  group.update(0, { ...msg(1), masked: false });
  assert.throws(() => group.update(1, { ...msg(2), masked: false }), /out of GSIs/);
  assert.equal(group.notifier(1), undefined);
  assert.equal(kvm.msiRoutes.size, 1);
  group.disable();
  assert.equal(kvm.irqfds.size + kvm.msiRoutes.size, 0);
});

test('INTx line: connect binds trigger (+resample) to the GSI, keeps its eventfds across reconnects', () => {
  const kvm = new FakeKvm(2 ** 46);
  const line = new KvmInterrupts(kvm.vm()).line(17);
  const a = line.connect();
  assert.deepEqual([...kvm.irqfds], [`${a.trigger}:17`]);
  assert.deepEqual(line.connect(), a, 'connecting twice binds once');
  line.disconnect();
  assert.equal(kvm.irqfds.size, 0);
  assert.deepEqual(line.connect(), a);
  line.close();
  assert.equal(kvm.irqfds.size, 0);
});
