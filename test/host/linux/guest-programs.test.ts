// Runs INSIDE the test host: tsvmm's static guest programs (guest/linux/), put in a Linux guest's initramfs by
// kernel.initramfs.programs. dirty-checksum's chained sums against the ones recomputed here; nvme-read's block
// hashes against the image the outer machine wrote; vfio-edu's DMA and interrupts through real VFIO type1 on the
// test host's edu (behind QEMU's intel-iommu), including a DMA to an IOVA nobody mapped. The same vfio-edu runs in a
// Linux guest once the guest has an IOMMU (or a kernel with vfio's no-IOMMU mode, which Debian's lacks).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { hostDevice } from '../../helpers/testhost-env.js';
import { describe, linuxKernel, sampleConfig, tsvmmRun } from '../../helpers/linux.js';
import {
  checkDirtyChecksum,
  dirtyChecksumChain,
  GUEST_VFIO_MODULES,
  guestModulesWith,
  nvmeBlockSha256,
  parseNvmeReadHashes,
} from '../../helpers/guest-programs.js';
import { linuxProgramPath } from '../../../machine/loader/initramfs.js';

const POWERED_OFF = /guest powered off \(ACPI S5\)/;
const MiB = 2 ** 20;

test(
  'dirty-checksum and nvme-read in a Linux guest with nvme assigned: chained sums as recomputed, block hashes as written from outside, VFIO modules load',
  { timeout: 300_000 },
  async () => {
    hostDevice('nvme');
    const k = linuxKernel();
    const bytes = Number(process.env.TSVMM_TESTHOST_NVME_BYTES);
    assert.ok(bytes > 0, 'TSVMM_TESTHOST_NVME_BYTES is not set');
    // First, last and a few random 4 KiB blocks of the namespace.
    const last = bytes / 4096 - 1;
    const blocks = [0, last, ...Array.from({ length: 6 }, () => 1 + Math.floor(Math.random() * (last - 1)))];
    const passes = 4,
      size = 4 * MiB;
    const script = [
      `dirty-checksum -p ${passes} ${size}`,
      `nvme-read hash /dev/nvme0n1 ${blocks.join(' ')}`,
      'nvme-read seq /dev/nvme0n1 1',
      'nvme-read -s 7 -j 2 rand /dev/nvme0n1 1',
      'nvme-read hash /dev/nvme0n1 999999; echo "past-end status $?"',
      '[ -c /dev/vfio/vfio ] && echo "guest vfio: /dev/vfio/vfio"',
      'ls /sys/module | grep -x -e vfio_pci -e vfio_iommu_type1 | sed "s/^/guest module: /"',
    ].join('\n');
    const r = await tsvmmRun(
      sampleConfig('linux-nvme', (c) => {
        c.kernel.initramfs.script = script;
        c.kernel.initramfs.programs = ['dirty-checksum', 'nvme-read'];
        c.kernel.initramfs.modules = guestModulesWith(
          k.modules,
          GUEST_VFIO_MODULES,
          process.env.TSVMM_TESTHOST_RUN_DIR!,
        );
      }),
      { timeoutMs: 280_000 },
    );
    assert.equal(r.code, 0, describe(r));
    assert.match(r.stderr, POWERED_OFF, describe(r));
    assert.doesNotMatch(r.stdout, /insmod .* failed/, describe(r));

    const seen = checkDirtyChecksum(r.stdout, { from: 1, expect: dirtyChecksumChain(size, passes) });
    assert.equal(seen, passes, describe(r));
    assert.match(r.stdout, /^dirty-checksum done bad=0\r?$/m, describe(r));

    const got = parseNvmeReadHashes(r.stdout);
    for (const b of blocks) assert.equal(got.get(b), nvmeBlockSha256(b), `block ${b}\n${describe(r)}`);
    const seq = /^nvme-read seq bytes=(\d+) usec=(\d+) MBps=[\d.]+\r?$/m.exec(r.stdout);
    assert.ok(seq && Number(seq[1]) > 0, `no sequential read result\n${describe(r)}`);
    const rand = /^nvme-read rand ios=(\d+) usec=(\d+) iops=\d+ jobs=2\r?$/m.exec(r.stdout);
    assert.ok(rand && Number(rand[1]) > 0, `no random read result\n${describe(r)}`);
    assert.match(r.stdout, /^nvme-read error block 999999 is past the end of \/dev\/nvme0n1/m, describe(r));
    assert.match(r.stdout, /^past-end status 1\r?$/m, describe(r));

    assert.match(r.stdout, /^guest vfio: \/dev\/vfio\/vfio\r?$/m, describe(r));
    assert.match(r.stdout, /^guest module: vfio_pci\r?$/m, describe(r));
    assert.match(r.stdout, /^guest module: vfio_iommu_type1\r?$/m, describe(r));
    console.log(
      `# guest programs: ${(r.ms / 1000).toFixed(1)} s; nvme-read in TCG: ${seq![0]!.trim()}; ${rand![0]!.trim()}`,
    );
  },
);

/** The test host's kernel log (root may read it). */
function kernelLog(): string {
  for (const cmd of [['dmesg'], ['busybox', 'dmesg']]) {
    const r = spawnSync(cmd[0]!, cmd.slice(1), { encoding: 'utf8' });
    if (r.status === 0) return r.stdout;
  }
  throw new Error('cannot read the kernel log (dmesg)');
}

function vfioEdu(args: string[]): { code: number | null; out: string } {
  const r = spawnSync(linuxProgramPath('vfio-edu'), args, { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

test(
  "vfio-edu through the test host's own VFIO (type1 behind intel-iommu): DMA both ways with MSI, then with INTx",
  { timeout: 300_000 },
  () => {
    const edu = hostDevice('edu');
    for (const irq of ['msi', 'intx']) {
      const r = vfioEdu(['-d', edu.bdf, '-t', 'type1', '-i', irq, '-n', '1000', 'ok']);
      assert.equal(r.code, 0, r.out);
      assert.match(
        r.out,
        new RegExp(`^vfio-edu ok dma bytes=1000 iova=0x1001000 iommu=type1 irq=${irq} irqs=2$`, 'm'),
        r.out,
      );
    }
  },
);

test(
  'vfio-edu unmapped: edu told to write to an IOVA never mapped leaves the buffer and its guards unchanged, the IOMMU logs the fault, the device still works',
  { timeout: 300_000 },
  () => {
    const edu = hostDevice('edu');
    const before = kernelLog().split('\n').length;
    const r = vfioEdu(['-d', edu.bdf, '-t', 'type1', 'unmapped']);
    assert.equal(r.code, 0, r.out);
    assert.match(
      r.out,
      /^vfio-edu ok unmapped iova=0x2000000 bytes=1024 buffer-unchanged=1 dma-status=done irq=msi after=ok$/m,
      r.out,
    );
    const added = kernelLog()
      .split('\n')
      .slice(before - 1)
      .join('\n');
    assert.match(added, /DMAR.*fault addr 0x2000000/, `no DMAR fault for iova 0x2000000 in the kernel log:\n${added}`);
  },
);

test('vfio-edu refuses bad arguments and the unmapped mode without an IOMMU, with its reason', () => {
  const edu = hostDevice('edu');
  const bad = vfioEdu(['-n', '4096', 'ok']);
  assert.equal(bad.code, 2, bad.out);
  assert.match(bad.out, /^vfio-edu error bad arguments: -n 4096: 1 to 4032 bytes$/m);
  // In no-IOMMU mode an IOVA is a physical address: "unmapped" has no meaning and is refused before any DMA.
  const noiommu = vfioEdu(['-d', edu.bdf, '-t', 'noiommu', 'unmapped']);
  assert.equal(noiommu.code, 1, noiommu.out);
  assert.match(noiommu.out, /^vfio-edu error unmapped mode needs an IOMMU \(type1\)/m, noiommu.out);
});

// vfio-edu inside a Linux guest needs an IOMMU in the guest: Debian's kernel has no vfio no-IOMMU mode
// (CONFIG_VFIO_NOIOMMU is not set), so the guest's own VFIO is tested behind the virtio-iommu.
