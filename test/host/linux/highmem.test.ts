// RAM above 4 GiB for a Linux guest with nvme assigned (test host with 7 GiB or more): 5 GiB of
// guest RAM, 2 GiB of it above 4 GiB (Linux's ZONE_NORMAL), all of it pinned for DMA; the nvme
// driver reads the known pattern into page cache that Linux takes from ZONE_NORMAL first, so the
// device DMAs above 4 GiB; pinned memory returns to 0 after the VM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { hostDevice } from '../../helpers/testhost-env.js';
import { describe, sampleConfig, tsvmmRun } from '../../helpers/linux.js';

const GiB = 2 ** 30;
/** Locked + pinned kB of every process (VmLck / VmPin). */
const pinnedKb = (pid?: number) =>
  (pid ? [String(pid)] : readdirSync('/proc').filter((d) => /^\d+$/.test(d))).reduce((n, d) => {
    try {
      const st = readFileSync(`/proc/${d}/status`, 'utf8');
      return n + Number(/^VmLck:\s+(\d+)/m.exec(st)?.[1] ?? 0) + Number(/^VmPin:\s+(\d+)/m.exec(st)?.[1] ?? 0);
    } catch {
      return n;
    }
  }, 0);
const memTotal = () => Number(/^MemTotal:\s+(\d+)/m.exec(readFileSync('/proc/meminfo', 'utf8'))![1]) * 1024;

// Page-cache pages in ZONE_NORMAL (above 4 GiB here), from /proc/zoneinfo.
const ZONE_FILE = `awk '/^Node .*zone +Normal/{z=1;next} /^Node/{z=0} z&&/nr_zone_(in)?active_file/{s+=$2} END{print s+0}' /proc/zoneinfo`;

test(
  '5 GiB Linux guest with nvme: RAM above 4 GiB in e820, the pattern read by DMA into pages above 4 GiB, all pinned, unpinned after',
  { timeout: 420_000 },
  async () => {
    hostDevice('nvme');
    assert.ok(
      memTotal() > 6.5 * GiB,
      `the test host has ${Math.round(memTotal() / 2 ** 20)} MiB: it needs > 6.5 GiB to pin 5 GiB (tsvmm testhost run --memory 7168)`,
    );
    const bytes = process.env.TSVMM_TESTHOST_NVME_BYTES;
    assert.ok(bytes, 'TSVMM_TESTHOST_NVME_BYTES is not set');
    assert.equal(pinnedKb(), 0, 'nothing pinned before');
    const script = [
      'grep MemTotal /proc/meminfo',
      'dmesg | grep -E "BIOS-e820|Normal +\\[mem"',
      'echo 3 > /proc/sys/vm/drop_caches',
      // Held open, so the device's page cache outlives the read (the last close drops it).
      'exec 3</dev/nvme0n1',
      `echo "normal-file-before: $(${ZONE_FILE})"`,
      `echo "sha256: $(head -c ${bytes} /dev/nvme0n1 | sha256sum)"`,
      `echo "normal-file-after: $(${ZONE_FILE})"`,
      // For the record when the check fails: where the page cache went, per zone.
      'grep -E "zone|nr_zone_(in)?active_file|managed" /proc/zoneinfo | sed "s/^/zoneinfo: /"',
      'grep -E "^(Buffers|Cached):" /proc/meminfo',
      'exec 3<&-',
    ].join('\n');
    let pid = 0,
      pinnedDuring = 0;
    const r = await tsvmmRun(
      sampleConfig('linux-nvme', (c) => {
        c.memory = '5G';
        c.kernel.initramfs.script = script;
      }),
      {
        timeoutMs: 400_000,
        onStdout: (all, child) => {
          pid = child.pid!;
          if (!pinnedDuring && /normal-file-before/.test(all)) pinnedDuring = pinnedKb(pid);
        },
      },
    );
    const ctx = describe(r);
    assert.equal(r.code, 0, ctx);
    // The firmware map Linux got: RAM above 4 GiB (2 GiB of it).
    assert.match(r.stdout, /BIOS-e820: \[mem 0x0000000100000000-0x000000017fffffff\] usable/, ctx);
    const memKb = Number(/^MemTotal:\s+(\d+) kB/m.exec(r.stdout)?.[1]);
    assert.ok(memKb > 4.5 * 2 ** 20, `guest MemTotal ${memKb} kB\n${ctx}`);
    assert.equal(
      /^sha256: ([0-9a-f]{64})/m.exec(r.stdout)?.[1],
      process.env.TSVMM_TESTHOST_NVME_SHA256,
      `the guest read a different pattern\n${ctx}`,
    );
    const before = Number(/^normal-file-before: (\d+)/m.exec(r.stdout)?.[1]),
      afterRead = Number(/^normal-file-after: (\d+)/m.exec(r.stdout)?.[1]);
    assert.ok(
      afterRead - before >= (Number(bytes) / 4096) * 0.9,
      `page cache above 4 GiB grew by ${afterRead - before} pages for ${Number(bytes) / 4096} read\n${ctx}`,
    );
    assert.ok(pinnedDuring >= 5 * 2 ** 20, `tsvmm pinned ${pinnedDuring} kB while running, not all 5 GiB\n${ctx}`);
    assert.equal(pinnedKb(), 0, 'pinned memory returns to 0 after the VM');
    console.log(`# linux 5 GiB nvme: ${(r.ms / 1000).toFixed(1)} s`);
  },
);
