// Interrupt injection into a real guest (needs a full KVM: runs in the test host). The guest
// prints "irq ready", then "irq N" for each interrupt its handler counted.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeSync, closeSync } from 'node:fs';
import { native } from '../../../core/native.js';
import { runGuest } from '../../helpers/guest.js';
import { hostDevices } from '../../helpers/testhost-env.js';
import type { Machine } from '../../../machine/machine.js';
import { inside } from '../../helpers/inside.js';

const one = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);

/** Fires `fire` once at "irq ready" and again after each "irq N" until the guest counted 3. */
async function irqScenario(cmdline: string, setup: (m: Machine) => () => void) {
  hostDevices();
  let fire: (() => void) | undefined;
  const r = await runGuest({
    cmdline,
    timeoutMs: 60000,
    onLine: (line, m) => {
      if (line === 'irq ready') {
        fire = setup(m);
        fire();
      } else if (/^irq [12]$/.test(line)) fire!();
    },
  });
  assert.equal(r.status, 0, `${r.reason}\n${r.output}`);
  assert.deepEqual(
    r.lines.filter((l) => /^irq (\d|done)/.test(l)),
    ['irq 1', 'irq 2', 'irq 3', 'irq done'],
  );
  return r;
}

test('irqfd on an IOAPIC GSI: each eventfd write is one guest interrupt', async () => {
  let efd = -1;
  const r = await irqScenario('test=irq vector=0x40 gsi=10 count=3', (m) => {
    efd = native().eventfd(0, 0);
    // inside: KVM state (memslots, GSI routes, irqfds, vCPU state): no interface shows it
    inside(m).vm.irqfd(efd, 10);
    return () => writeSync(efd, one);
  });
  closeSync(efd);
  assert.equal(r.stats.irqInjections, 0, 'delivered by KVM from the eventfd, not injected by the VMM');
});

test('MSI through a GSI route and an irqfd (the path VFIO vectors take)', async () => {
  let efd = -1;
  const r = await irqScenario('test=irq vector=0x45 count=3', (m) => {
    efd = native().eventfd(0, 0);
    // inside: KVM state (memslots, GSI routes, irqfds, vCPU state): no interface shows it
    const gsi = inside(m).vm.gsi.allocMsi({ addressLo: 0xfee00000, addressHi: 0, data: 0x45 });
    inside(m).vm.gsi.commit();
    assert.ok(gsi >= 24);
    // inside: KVM state (memslots, GSI routes, irqfds, vCPU state): no interface shows it
    inside(m).vm.irqfd(efd, gsi);
    return () => writeSync(efd, one);
  });
  closeSync(efd);
  assert.equal(r.stats.irqInjections, 0);
});

test("KVM_SIGNAL_MSI delivers to the guest's LAPIC", async () => {
  const r = await irqScenario('test=irq vector=0x46 count=3', (m) => () => {
    // inside: KVM state (memslots, GSI routes, irqfds, vCPU state): no interface shows it
    assert.equal(inside(m).vm.signalMsi({ addressLo: 0xfee00000, addressHi: 0, data: 0x46 }), 1);
  });
  assert.equal(r.stats.irqInjections, 3);
});
