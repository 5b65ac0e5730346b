// An application processor's reads of registers the device models publish (core/kvm/register-file.ts)
// are answered on its own thread: they must still see the AP's own posted writes, and values the
// device thread changes (serial input) as soon as they change.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runGuest } from '../helpers/guest.js';
import { inside } from '../helpers/inside.js';

test(
  "2 vCPUs: COM1's registers written by the AP read back at once (scratch, LCR, IER, MCR, divisor latch), its polled console output comes out whole, and input the device thread receives shows in LSR",
  { timeout: 120_000 },
  async () => {
    let machine: Parameters<typeof inside>[0] | undefined;
    let sent = false;
    const r = await runGuest({
      cmdline: 'test=smp input=1',
      config: { vcpus: 2 },
      timeoutMs: 90_000,
      onLine: (line, m) => {
        if (line !== 'smp ap waiting for input' || sent) return;
        sent = true;
        // inside: serial input from the host side without a terminal: no interface takes bytes
        inside(m).serial.input(new Uint8Array([0x5a]));
      },
      onStart: (m) => (machine = m),
    });
    // inside: how many reads the AP answered on its own thread: no interface shows it
    const answered = inside(machine!).vm.registers.answered;
    assert.equal(r.status, 0, r.reason + '\n' + r.output);
    assert.ok(r.lines.includes('smp ap input 0x5a'), r.output);
    // Printed by the AP as a polled console does: each LSR poll behind its own THR write in flight.
    assert.ok(r.lines.includes('smp ap says hello'), r.output);
    assert.ok(r.lines.includes('smp check ok'), r.output);
    // Every second read-back of the check finds nothing of the AP's in flight: answered on its thread.
    assert.ok(answered >= 512 * 7, `reads answered on the AP's thread: ${answered}`);
  },
);

test(
  '4 vCPUs: three APs start one after another and every vCPU reads a published register at once',
  { timeout: 120_000 },
  async () => {
    const r = await runGuest({ cmdline: 'test=smp aps=3 count=300', config: { vcpus: 4 }, timeoutMs: 90_000 });
    assert.equal(r.status, 0, r.reason + '\n' + r.output);
    for (const id of [1, 2, 3]) assert.ok(r.lines.includes(`smp ap up id=${id}`), r.output);
    assert.ok(r.lines.includes('smp check ok'), r.output);
    const m = /^bench smp done n=(\d+) ticks=/m.exec(r.output);
    assert.ok(m, r.output);
    // Every read of every vCPU's loop counted, whichever thread answered it.
    assert.ok(r.stats.pio.get(0x3ff)! >= Number(m[1]), `scratch reads: ${r.stats.pio.get(0x3ff)} of ${m[1]}`);
  },
);
