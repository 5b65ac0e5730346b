// Hostile guests against the real kernel and devices: the test guest (guest/src/
// test-fuzz.c) abuses config space, BARs and the MSI/MSI-X emulation of an assigned edu and nvme;
// tsvmm must neither crash nor fall out of step with the devices, which must work afterwards,
// and nothing may be left pinned, open or mapped.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runGuest, openFds } from '../../helpers/guest.js';
import { hostDevice } from '../../helpers/testhost-env.js';
import { lockedBytes } from '../../../core/vfio/limits.js';
import { guestEvents } from '../../../hw/pci.js';
import type { Machine } from '../../../machine/machine.js';
import { inside } from '../../helpers/inside.js';

const devices = () => [
  { type: 'vfio-pci' as const, host: hostDevice('edu').bdf },
  { type: 'vfio-pci' as const, host: hostDevice('nvme').bdf },
];
const DEVICE_OK = ['nvme-alive', 'edu-id', 'edu-liveness', 'edu-factorial', 'edu-dma', 'edu-msi'];

/** Runs the guest with guestEvents captured; checks the VMM's and KVM's view of memslots at a line. */
async function hostile(cmdline: string, opts: { onStart?: (m: Machine) => void; timeoutMs?: number } = {}) {
  const logged: string[] = [];
  const sink = guestEvents.sink;
  guestEvents.sink = (l) => {
    logged.push(l);
  };
  guestEvents.counts.clear();
  const fds = openFds();
  let slotCheck: { numbers: number; slots: number } | undefined;
  try {
    const r = await runGuest({
      cmdline,
      config: { memory: 64, devices: devices() },
      timeoutMs: opts.timeoutMs ?? 240000,
      ...(opts.onStart ? { onStart: opts.onStart } : {}),
      onLine: (line, m) => {
        if (line.startsWith('PASS nvme-alive') || line.startsWith('FAIL nvme-alive'))
          // inside: KVM state (memslots, GSI routes, irqfds, vCPU state): no interface shows it
          slotCheck = { numbers: inside(m).vm.memslots.numbersInUse, slots: inside(m).vm.memslots.slots().length };
      },
    });
    return { r, logged, slotCheck, fdsLeaked: openFds() - fds };
  } finally {
    guestEvents.sink = sink;
  }
}

test('a 64-bit BAR placed where KVM cannot map it (EINVAL): the command still reaches the device, the BAR does not decode there, logged once; moved back it works; no memslot number leaks', async () => {
  // Let tsvmm try what KVM refuses: the bus limit above KVM's (the default limit, the vCPU's
  // address width, stops such a BAR before KVM is asked; the next test covers that).
  const { r, logged, slotCheck, fdsLeaked } = await hostile('test=hostile', {
    onStart: (m) => {
      // inside: moves the bus limit to provoke what KVM refuses: no interface may
      inside(m).pciBus.memLimit = 2 ** 52;
    },
  });
  assert.equal(r.status, 0, `${r.reason}\n${r.output}\n${logged.join('\n')}`);
  for (const t of ['hostile-bar-high', 'hostile-d3', 'hostile-shadow', 'hostile-msi-dword', ...DEVICE_OK])
    assert.ok(r.lines.includes(`PASS ${t}`), `${t}:\n${r.output}`);
  const refused = logged.filter((l) =>
    /vfio1: BAR0 cannot decode at 0x8000[0-9a-f]{9} \(.*KVM_SET_USER_MEMORY_REGION/.test(l),
  );
  assert.equal(refused.length, 1, `the refusal is logged once:\n${logged.join('\n')}`);
  assert.ok((guestEvents.counts.get('vfio1:bar0:map') ?? 0) >= 20, 'and counted every time');
  assert.ok(
    slotCheck && slotCheck.numbers === slotCheck.slots,
    `memslot numbers in use = live slots: ${JSON.stringify(slotCheck)}`,
  );
  assert.equal(lockedBytes(), 0, 'nothing left pinned');
  assert.equal(fdsLeaked, 0, 'no fd left open');
});

test("BARs beyond the vCPU's physical address width or over the LAPIC/IOAPIC do not decode there (no KVM call, debug level); the devices work after", async () => {
  const { r, logged } = await hostile('test=hostile');
  assert.equal(r.status, 0, `${r.reason}\n${r.output}\n${logged.join('\n')}`);
  for (const t of ['hostile-bar-high', 'hostile-d3', 'hostile-shadow', 'hostile-msi-dword', ...DEVICE_OK])
    assert.ok(r.lines.includes(`PASS ${t}`), `${t}:\n${r.output}`);
  assert.ok(
    (guestEvents.counts.get('vfio1:bar0:limit') ?? 0) >= 20,
    `beyond the width: ${JSON.stringify([...guestEvents.counts])}`,
  );
  assert.ok((guestEvents.counts.get('vfio0:bar0:hole:the LAPIC/MSI window') ?? 0) >= 1);
  assert.ok((guestEvents.counts.get('vfio0:bar0:hole:the IOAPIC') ?? 0) >= 1);
  assert.equal(guestEvents.counts.get('vfio1:bar0:map'), undefined, 'KVM was never asked');
  assert.deepEqual(
    logged.filter((l) => !/tsvmm: .*(not decoded|does not decode)/.test(l)),
    [],
    'nothing else logged',
  );
  assert.equal(lockedBytes(), 0);
});

/** CI-sized here; `npm run fuzz` sets TSVMM_FUZZ_COUNT for the long run. */
const count = Number(process.env.TSVMM_FUZZ_COUNT ?? 5000);
const seed = Number(process.env.TSVMM_FUZZ_SEED ?? Date.now() % 1000000);

test(`guest fuzzer: ${count} seeded random conf1/BAR/MSI-X accesses on edu + nvme, then both devices work and nothing is left pinned`, async () => {
  const t0 = Date.now();
  const { r, logged, fdsLeaked } = await hostile(`test=fuzz seed=${seed} count=${count}`, {
    timeoutMs: Math.max(240000, count * 20),
  });
  const secs = (Date.now() - t0) / 1000;
  console.log(
    `guest fuzz: seed=${seed} accesses=${count} time=${secs.toFixed(1)}s verdict=${r.status === 0 ? 'pass' : 'FAIL'}`,
  );
  assert.equal(r.status, 0, `seed=${seed}: ${r.reason}\n${r.output.slice(-4000)}\n${logged.join('\n')}`);
  assert.ok(r.lines.includes(`fuzz seed=${seed} count=${count}`), r.output);
  for (const t of DEVICE_OK) assert.ok(r.lines.includes(`PASS ${t}`), `seed=${seed} ${t}:\n${r.output.slice(-4000)}`);
  assert.equal(lockedBytes(), 0, 'nothing left pinned');
  assert.equal(fdsLeaked, 0, 'no fd left open');
});
