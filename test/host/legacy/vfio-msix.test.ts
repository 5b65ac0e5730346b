// MSI-X on an assigned nvme (table and PBA inside the register BAR, QEMU's layout): the table
// page is trapped and emulated, the rest of the BAR is a memslot; a vector the guest programs
// and unmasks delivers through irqfd; a masked one sets the PBA bit and is not lost.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runGuest } from '../../helpers/guest.js';
import { hostDevice } from '../../helpers/testhost-env.js';
import { inside } from '../../helpers/inside.js';

test('nvme MSI-X: table page trapped, rest of BAR0 direct; vector delivered; masked vector pends and is delivered on unmask', async () => {
  const nvme = hostDevice('nvme');
  let slots: { gpa: number; size: number }[] = [];
  const r = await runGuest({
    cmdline: 'test=msix dev=1b36:0010',
    config: { memory: 64, devices: [{ type: 'vfio-pci', host: nvme.bdf }] },
    timeoutMs: 120000,
    inspect: (m) => {
      slots = m.inspect().memslots.map((s) => ({ gpa: s.guestAddr, size: s.size }));
    },
  });
  assert.equal(r.status, 0, `${r.reason}\n${r.output}`);
  for (const t of ['msix', 'msix-mask']) assert.ok(r.lines.includes(`PASS ${t}`), `${t}:\n${r.output}`);
  const layout = /^msix table bar=0 off=0x([0-9a-f]+) size=(\d+) pba bar=0 off=0x([0-9a-f]+)/m.exec(r.output);
  assert.ok(layout, r.output);
  // Where BAR0 landed: the slot layout shows the 16 KiB BAR split around the table page.
  const bar0 = r.lines.map((l) => /^msix bar0=0x([0-9a-f]+)/.exec(l)).find(Boolean);
  const base = bar0 ? parseInt(bar0[1]!, 16) : Math.min(...slots.filter((s) => s.gpa >= 0xc0000000).map((s) => s.gpa));
  const table = base + parseInt(layout[1]!, 16);
  const inSlot = (a: number) => slots.some((s) => a >= s.gpa && a < s.gpa + s.size);
  assert.ok(inSlot(base), `BAR0 registers are a memslot (direct): ${JSON.stringify(slots)}`);
  assert.ok(!inSlot(table), 'the MSI-X table page is not a memslot (trapped)');
  assert.ok(r.stats.mmioIn(table, table + 4096) > 0, "the guest's table writes trapped");
  assert.equal(r.stats.mmioIn(base, base + 0x1000), 0, 'register accesses did not exit');
});

test('two groups share one container (edu and nvme)', async () => {
  const edu = hostDevice('edu'),
    nvme = hostDevice('nvme');
  assert.notEqual(edu.group, nvme.group);
  let containers = 0,
    groups = 0;
  const r = await runGuest({
    config: {
      memory: 32,
      devices: [
        { type: 'vfio-pci', host: edu.bdf },
        { type: 'vfio-pci', host: nvme.bdf },
      ],
    },
    inspect: (m) => {
      // inside: VFIO containers and groups: no interface shows them
      containers = inside(m).vfio.listeners.length;
      groups = inside(m).vfio.groups.size;
    },
  });
  assert.equal(r.status, 0, r.output);
  assert.equal(groups, 2);
  assert.equal(containers, 1, 'the second group joined the first container');
  assert.ok(
    r.lines.some((l) => /^pci 00:0[0-9a-f]\.0 1234:11e8/.test(l)),
    r.output,
  );
  assert.ok(
    r.lines.some((l) => /^pci 00:0[0-9a-f]\.0 1b36:0010/.test(l)),
    r.output,
  );
});
