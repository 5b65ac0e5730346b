// Runs INSIDE the test host: the Debian kernel's own virtio_pci and virtio_iommu drivers against
// tsvmm's virtio-pci transport and virtio-iommu, found through the VIOT ("iommu": {"type": "virtio"}).
// It needs virtio-iommu.ko among the guest modules (GUEST_MODULES in testhost/kernel.ts: it is
// skipped, saying so, without); TSVMM_VIOMMU_MODULES names another guest-modules directory (with
// virtio-iommu.ko in its modules.order, and the host's modules/ next to it).
// The second test puts edu behind the vIOMMU with the host side's recording test double
// (test/helpers/viommu-child.ts): Linux's requests are real, edu's DMA stays 1:1 (it does none).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { projectRoot } from '../../../core/paths.js';
import { hostDevice } from '../../helpers/testhost-env.js';
import { describe, linuxEnv, linuxKernel, sampleConfig, tsvmmRun, type RunResult } from '../../helpers/linux.js';

/**
 * The guest modules with virtio-iommu.ko (and uio_pci_generic, which the host's modules/ next to
 * guest-modules/ has: the same kernel), composed in the run dir; undefined without virtio-iommu.ko.
 */
function viommuModules(): string | undefined {
  const dir = process.env.TSVMM_VIOMMU_MODULES ?? linuxKernel().modules;
  const has = (d: string, m: string) =>
    existsSync(join(d, 'modules.order')) && readFileSync(join(d, 'modules.order'), 'utf8').split('\n').includes(m);
  if (!has(dir, 'virtio-iommu.ko')) return undefined;
  if (has(dir, 'uio_pci_generic.ko')) return dir;
  const out = join(process.env.TSVMM_TESTHOST_RUN_DIR!, `viommu-modules-${process.pid}`);
  mkdirSync(out, { recursive: true });
  const order = readFileSync(join(dir, 'modules.order'), 'utf8').split('\n').filter(Boolean);
  for (const m of order) copyFileSync(join(dir, m), join(out, m));
  for (const m of ['uio.ko', 'uio_pci_generic.ko']) {
    const from = join(dir, '..', 'modules', m);
    if (!existsSync(from)) return dir; // the second test then finds no uio_pci_generic and says so
    copyFileSync(from, join(out, m));
    order.push(m);
  }
  writeFileSync(join(out, 'modules.order'), order.map((m) => `${m}\n`).join(''));
  return out;
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

/** The config run by test/helpers/viommu-child.js (the host side is the recording test double). */
function runChild(config: string): Promise<RunResult> {
  const t0 = performance.now();
  const child = spawn(process.execPath, [join(projectRoot, 'dist/test/helpers/viommu-child.js'), config], {
    env: { ...process.env, ...linuxEnv() },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '',
    stderr = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString('latin1')));
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 240_000);
  return new Promise((resolve) =>
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: performance.now() - t0 });
    }),
  );
}

test(
  'Linux puts a device behind the virtio-iommu: its PROBE and ATTACH reach the host side (the recording test double)',
  { timeout: 300_000 },
  async (t) => {
    const modules = viommuModules();
    if (!modules) {
      t.skip('virtio-iommu.ko is not among the guest modules (see above)');
      return;
    }
    const edu = hostDevice('edu');
    const r = await runChild(
      sampleConfig('linux', (c) => {
        c.iommu = { type: 'virtio' };
        c.devices = [{ type: 'vfio-pci', id: 'edu', host: edu.bdf, iommu: true }];
        c.kernel.initramfs.modules = modules;
        // A driver must bind for Linux to set the device up behind its IOMMU (dma_configure reads the
        // VIOT then): uio_pci_generic, which does no DMA.
        c.kernel.initramfs.script = [
          '[ -d /sys/bus/pci/drivers/uio_pci_generic ] || echo "no uio_pci_generic driver"',
          'echo "1234 11e8" > /sys/bus/pci/drivers/uio_pci_generic/new_id',
          'for g in /sys/kernel/iommu_groups/*; do echo "group: $(basename $g) $(ls $g/devices | tr "\\n" " ")"; done',
          'dmesg | grep -i -E "virtio_iommu|iommu group" | sed "s/^/dmesg: /"',
        ].join('\n');
      }),
    );
    assert.equal(r.code, 0, describe(r));
    assert.doesNotMatch(r.stdout, /^no uio_pci_generic driver/m, `uio_pci_generic.ko was not found\n${describe(r)}`);
    const report = JSON.parse(/^viommu-host: (.*)$/m.exec(r.stderr)?.[1] ?? 'null') as {
      calls: string[];
      violations: string[];
      viommu: { requests: Record<string, number>; domains: { endpoints: number[] }[] };
    } | null;
    assert.ok(report, describe(r));
    assert.deepEqual(report.violations, []);
    // edu sits in the first free slot after the devices' (slot 1): requester ID 0x08.
    const slot = /^group: \d+ 0000:00:(\w\w)\.0\s*$/m.exec(r.stdout)?.[1];
    assert.ok(slot, `the guest has no IOMMU group with edu in it\n${describe(r)}`);
    const ep = parseInt(slot, 16) << 3;
    assert.ok((report.viommu.requests.probe ?? 0) >= 1, `no PROBE: ${JSON.stringify(report.viommu)}`);
    assert.ok((report.viommu.requests.attach ?? 0) >= 1, `no ATTACH: ${JSON.stringify(report.viommu)}`);
    assert.ok(
      report.calls.some((c) => new RegExp(`^attach ${ep} \\d+$`).test(c)),
      `the host side never heard of endpoint ${ep} joining a domain: ${report.calls.join(', ')}`,
    );
    for (const l of r.stdout.split('\n').filter((x) => /^(group|dmesg): /.test(x))) console.log(l);
    console.log(`host side: ${report.calls.slice(0, 12).join(', ')}`);
  },
);
