// VFIO on the legacy container/group model, against the real kernel in the test host: the
// test guest drives QEMU's edu device assigned to a tsvmm VM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runGuest } from '../../helpers/guest.js';
import { hostDevice } from '../../helpers/testhost-env.js';
import { lockedBytes } from '../../../core/vfio/limits.js';
import { inside } from '../../helpers/inside.js';
import { dmaCovers } from '../../helpers/guest.js';

const edu = () => hostDevice('edu');

test("edu assigned: MMIO through the mmap'd BAR with no exits, factorial, DMA into mapped IOVA, MSI, then INTx via irqfd+resample", async () => {
  let bar0 = 0;
  const r = await runGuest({
    cmdline: 'test=edu dma=1 msi=5 intx=3',
    config: { memory: 64, devices: [{ type: 'vfio-pci', host: edu().bdf }] },
    onLine: (line) => {
      const m = /^edu bar0=0x([0-9a-f]+)/.exec(line);
      if (m) bar0 = parseInt(m[1]!, 16);
    },
    inspect: (m) => {
      // While the machine is up: the container maps the guest's RAM for DMA.
      // inside: VFIO containers and groups: no interface shows them
      assert.equal(inside(m).vfio.listeners.length, 1);
      assert.ok(dmaCovers(m.inspect(), 0, 64 * 2 ** 20), 'all guest RAM is DMA-mapped');
      assert.ok(lockedBytes() >= 64 * 2 ** 20, `pinned memory is accounted (VmLck ${lockedBytes()})`);
    },
  });
  assert.equal(r.status, 0, `${r.reason}\n${r.output}`);
  for (const t of ['edu-id', 'edu-liveness', 'edu-factorial', 'edu-dma', 'edu-msi', 'edu-intx'])
    assert.ok(r.lines.includes(`PASS ${t}`), `${t}:\n${r.output}`);
  assert.ok(bar0 >= 0xc0000000, r.output);
  // Direct access: not one MMIO exit hit the edu BAR (1 MiB), although the guest used it throughout.
  assert.equal(
    r.stats.mmioIn(bar0, bar0 + 2 ** 20),
    0,
    `exits on BAR0: ${[...r.stats.mmio].filter(([a]) => a >= bar0 && a < bar0 + 2 ** 20)}`,
  );
  // The DMA addresses the guest programmed lie in what our listener mapped.
  const dma = r.lines.find((l) => l.startsWith('edu dma iova='))!;
  const [src, dst] = [...dma.matchAll(/0x([0-9a-f]+)/g)].map((x) => parseInt(x[1]!, 16));
  assert.ok(r.dmaCovered(src!, 256) && r.dmaCovered(dst!, 256), dma);
  // Interrupts came through irqfd: the VMM injected none itself.
  assert.equal(r.stats.irqInjections, 0);
  assert.equal(lockedBytes(), 0, 'every pinned page is released after the VM');
});
