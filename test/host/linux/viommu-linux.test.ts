// Runs INSIDE the test host: the Debian kernel's own virtio_pci and virtio_iommu drivers against
// tsvmm's virtio-pci transport and virtio-iommu, found through the VIOT ("iommu": {"type": "virtio"}).
// It needs virtio-iommu.ko among the guest modules: from the kernel's guest-modules/ (GUEST_MODULES
// in testhost/kernel.ts), or a directory named by TSVMM_VIOMMU_MODULES (the same modules plus
// virtio-iommu.ko and a modules.order that lists it).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, linuxKernel, sampleConfig, tsvmmRun } from '../../helpers/linux.js';

function viommuModules(): string | undefined {
  const dir = process.env.TSVMM_VIOMMU_MODULES ?? linuxKernel().modules;
  const order = join(dir, 'modules.order');
  return existsSync(order) && readFileSync(order, 'utf8').split('\n').includes('virtio_iommu.ko') ? dir : undefined;
}

test(
  'Linux binds virtio_iommu to the virtio-iommu, registers it as an IOMMU, and reads the VIOT',
  { timeout: 300_000 },
  async (t) => {
    const modules = viommuModules();
    if (!modules) {
      t.skip(
        'virtio-iommu.ko is not among the guest modules: add drivers/iommu/virtio-iommu to GUEST_MODULES (testhost/kernel.ts) or set TSVMM_VIOMMU_MODULES',
      );
      return;
    }
    const r = await tsvmmRun(
      sampleConfig('linux', (c) => {
        c.iommu = { type: 'virtio' };
        c.kernel.initramfs.modules = modules;
        c.kernel.initramfs.script = [
          'for d in /sys/bus/virtio/devices/*; do echo "virtio: $(basename $d) device=$(cat $d/device) status=$(cat $d/status) driver=$(basename "$(readlink $d/driver)")"; done',
          'echo "iommus: $(ls /sys/class/iommu | tr "\\n" " ")"',
          'echo "viot: $(head -c 4 /sys/firmware/acpi/tables/VIOT)"',
          'dmesg | grep -i -E "virtio|viot|iommu" | sed "s/^/dmesg: /"',
          'grep -i virtio /proc/interrupts | sed "s/^/irq: /"',
        ].join('\n');
      }),
    );
    assert.equal(r.code, 0, describe(r));
    const out = r.stdout;
    assert.match(out, /^viot: VIOT/m, `no VIOT in the guest's ACPI tables\n${describe(r)}`);
    const dev = /^virtio: (virtio\d+) device=0x0017 status=(0x[0-9a-f]+) driver=virtio_iommu\s*$/m.exec(out);
    assert.ok(dev, `virtio_iommu did not bind a virtio device 23\n${describe(r)}`);
    assert.equal(Number(dev[2]) & 0x4, 0x4, `DRIVER_OK not set (status ${dev[2]})\n${describe(r)}`);
    assert.equal(Number(dev[2]) & 0x40, 0, `the device needs a reset (status ${dev[2]})\n${describe(r)}`);
    assert.match(out, /^iommus: \S+/m, `/sys/class/iommu is empty\n${describe(r)}`);
    assert.doesNotMatch(out, /^dmesg: .*virtio_iommu.*(fail|error)/im, describe(r));
    // virtio_pci took MSI-X: the config and event queue vectors (the request queue is polled).
    assert.match(out, new RegExp(`^irq: .*PCI-MSIX-.*${dev[1]}-(config|event)`, 'm'), describe(r));
    for (const l of out.split('\n').filter((x) => /^(virtio|iommus|irq|dmesg): /.test(x))) console.log(l);
  },
);
