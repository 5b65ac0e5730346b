// The vIOMMU in a running machine: the virtio-iommu on the guest's PCI bus (the demo guest lists
// it), driven by the test guest's own virtio driver (guest/src/test-virtio.c: capabilities,
// negotiation, config, requests polled on the used ring, NEEDS_RESET, reset) over real port-I/O
// exits (the port doorbell the device lists first) and, with two vCPUs, KVM ioeventfd doorbells;
// a device behind it is opened as any other (its DMA behind the vIOMMU is tested in the test
// host: test/host/linux/viommu-assigned.test.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { projectRoot } from '../../core/paths.js';
import { guestPaths } from '../../guest/index.js';

const cli = join(projectRoot, 'dist/bin/tsvmm.cjs');
const run = (...args: string[]) =>
  spawnSync(
    process.execPath,
    [cli, 'run', '--memory', '32M', '--kernel', guestPaths().elf, '--serial', 'stdio', ...args],
    {
      encoding: 'utf8',
      timeout: 60000,
      input: '',
    },
  );

test('--device virtio-iommu-pci: the guest finds 1af4:1057 in the slot asked for, and the VM runs and exits cleanly', () => {
  const r = run('--device', 'virtio-iommu-pci,addr=5');
  assert.equal(r.status, 0, `${r.stderr}\n${r.stdout}`);
  assert.match(r.stdout, /^pci 00:05\.0 1af4:1057 class ff0000$/m);
  assert.match(r.stdout, /^tsvmm-guest: 2 pci functions$/m);
  const plain = run();
  assert.equal(plain.status, 0, plain.stderr);
  assert.doesNotMatch(plain.stdout, /1af4:1057/, 'no vIOMMU unless asked for');
});

for (const cpus of ['1', '2'])
  test(`the test guest's virtio driver runs the virtio-iommu (${cpus} vCPU${cpus === '1' ? ': doorbells are port-I/O exits' : 's: doorbells on ioeventfds'})`, () => {
    const r = run('--cpus', cpus, '--cmdline', 'test=virtio-iommu', '--device', 'virtio-iommu-pci');
    assert.equal(r.status, 0, `${r.stderr}\n${r.stdout}`);
    assert.doesNotMatch(r.stdout, /^FAIL/m);
    assert.equal(r.stdout.match(/^PASS /gm)?.length, 14, r.stdout);
    assert.match(r.stdout, /^tsvmm-guest: virtio-iommu passed$/m);
    assert.match(
      r.stdout,
      /^tsvmm-guest: virtio doorbell: port I\/O$/m,
      'the port doorbell, listed first, is the one taken',
    );
  });

test('a device behind the vIOMMU is looked up and opened as any other: a missing host device is named, with the fix', () => {
  const r = run('--device', 'virtio-iommu-pci', '--device', 'vfio-pci,host=0000:ff:1f.7,id=nic,iommu=on');
  assert.equal(r.status, 1, `${r.stderr}\n${r.stdout}`);
  assert.match(r.stderr, /no PCI device 0000:ff:1f\.7 on this host/);
  assert.match(r.stderr, /fix: check the address/);
});
