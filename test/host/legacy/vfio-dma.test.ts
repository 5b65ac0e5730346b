// The VFIO DMA listener follows the guest's memory while the VM runs: RAM added is mapped,
// RAM removed is unmapped — checked against the kernel's own accounting of pinned pages.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { runGuest } from '../../helpers/guest.js';
import { hostDevice } from '../../helpers/testhost-env.js';
import { native, MAP_SHARED, PROT_READ, PROT_WRITE, MFD_CLOEXEC } from '../../../core/native.js';
import { MemoryRegion } from '../../../core/memory/index.js';
import { lockedBytes } from '../../../core/vfio/limits.js';
import { projectRoot } from '../../../core/paths.js';
import { inside } from '../../helpers/inside.js';

test('RAM hot-added while the guest runs is DMA-mapped, and unmapped when removed', async () => {
  const edu = hostDevice('edu');
  const size = 32 * 2 ** 20,
    at = 2 ** 33; // 32 MiB at 8 GiB
  const seen: Record<string, number | boolean> = {};
  const r = await runGuest({
    config: { memory: 32, devices: [{ type: 'vfio-pci', host: edu.bdf }] },
    inspect: (m) => {
      // inside: VFIO containers and groups: no interface shows them
      const c = inside(m).vfio.listeners[0]!;
      const base = lockedBytes();
      const fd = native().memfdCreate('hotplug', MFD_CLOEXEC);
      ftruncateSync(fd, size);
      const map = native().mmap(0, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      const ram = MemoryRegion.ram('hotplug-ram', size, { hostAddr: map.addr, fd, bytes: new Uint8Array(map.buffer) });
      // inside: KVM state (memslots, GSI routes, irqfds, vCPU state): no interface shows it
      inside(m).vm.memory.root.addSubregion(at, ram);
      seen.mapped = c.covers(at, size);
      seen.pinnedDelta = lockedBytes() - base;
      // inside: KVM state (memslots, GSI routes, irqfds, vCPU state): no interface shows it
      inside(m).vm.memory.root.removeSubregion(ram);
      seen.unmapped = !c.covers(at, 4096);
      seen.afterDelta = lockedBytes() - base;
      native().munmap(map.buffer);
      closeSync(fd);
    },
  });
  assert.equal(r.status, 0, r.output);
  assert.equal(seen.mapped, true, 'the listener mapped the new RAM');
  assert.equal(seen.pinnedDelta, size, 'the kernel pinned exactly the new RAM');
  assert.equal(seen.unmapped, true);
  assert.equal(seen.afterDelta, 0, 'and unpinned it on removal');
});

test('tsvmm groups lists groups, devices, drivers and viability', () => {
  const edu = hostDevice('edu');
  const out = spawnSync(process.execPath, [join(projectRoot, 'dist/bin/tsvmm.cjs'), 'groups'], { encoding: 'utf8' });
  assert.equal(out.status, 0, out.stderr);
  assert.match(
    out.stdout,
    new RegExp(`^group ${edu.group} viable\\n  ${edu.bdf.replace(/\./g, '\\.')} 1234:11e8 driver=vfio-pci$`, 'm'),
  );
});
