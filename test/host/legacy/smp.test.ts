// SMP multiboot guests: the application processor, started by the guest with INIT-SIPI-SIPI, runs
// in a pool worker and posts its port I/O to the device thread (posted writes, a read behind
// them, REP strings in one request); system_reset puts it back to wait-for-SIPI.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runGuest } from '../../helpers/guest.js';
import { native } from '../../../core/native.js';
import { inside } from '../../helpers/inside.js';

test(
  '2 vCPUs: the AP starts, its trapped writes land before its reads, REP OUTSB/INSB strings are right',
  { timeout: 120_000 },
  async () => {
    const r = await runGuest({ cmdline: 'test=smp', config: { vcpus: 2 }, timeoutMs: 90_000 });
    assert.equal(r.status, 0, r.reason + '\n' + r.output);
    assert.ok(r.lines.includes('smp ap up id=1'), r.output);
    assert.ok(r.lines.includes('smp check ok'), r.output);
    // 4096 write/read pairs, 256 + 256 string elements and the checks' own accesses, all from the AP.
    assert.ok(r.stats.pio.get(0x3ff)! >= 2 * 4096 + 512, `scratch accesses: ${r.stats.pio.get(0x3ff)}`);
  },
);

test(
  'system_reset of a 2-vCPU guest: the AP waits for INIT/SIPI again, the guest boots and starts it again',
  { timeout: 120_000 },
  async () => {
    let reset: Promise<void> | undefined;
    let apStateAfterReset = -1;
    const r = await runGuest({
      cmdline: 'test=smp count=20000',
      config: { vcpus: 2 },
      timeoutMs: 100_000,
      onLine: (line, m) => {
        if (line !== 'smp ap up id=1' || reset) return;
        // Parked for the reset, kept parked to look at the AP, then let go.
        m.pause();
        reset = m.reset().then(() => {
          // inside: an AP's KVM MP state after the reset: no interface shows it
          apStateAfterReset = inside(m).vm.vcpus[1]!.mpState;
          // The next boot need not run the 20 s loop again.
          // inside: changes the config a reset loads the guest from: no interface may
          inside(m).config.cmdline = 'test=smp';
          m.resume();
        });
      },
    });
    await reset;
    assert.equal(apStateAfterReset, native().constants.KVM_MP_STATE_UNINITIALIZED, 'the AP is back waiting for INIT');
    assert.equal(r.status, 0, r.reason + '\n' + r.output);
    assert.equal(r.lines.filter((l) => l === 'tsvmm-guest: start').length, 2, r.output);
    assert.equal(r.lines.filter((l) => l === 'smp ap up id=1').length, 2, r.output);
    assert.ok(r.lines.includes('smp check ok'), r.output);
  },
);
