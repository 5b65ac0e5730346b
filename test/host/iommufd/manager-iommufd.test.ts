// The manager on the iommufd backend: it opens /dev/iommu and the device cdev, the VMM (as
// nobody, no capabilities) cannot open them itself and still assigns edu with the passed fds.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { hostDevice } from '../../helpers/testhost-env.js';
import { writeConfig, openAsNobody } from '../../helpers/manager.js';
import { projectRoot } from '../../../core/paths.js';
import { native } from '../../../core/native.js';
import { sendPassedFds } from '../../../core/fdpass.js';
import { pinnedBytes } from '../../../core/vfio/limits.js';
import { inside } from '../../helpers/inside.js';

const cli = join(projectRoot, 'dist/bin/tsvmm.cjs');

test('iommufd via the manager: the unprivileged VMM cannot open the cdev or /dev/iommu, and assigns edu with the passed fds', () => {
  const edu = hostDevice('edu');
  assert.equal(openAsNobody(edu.vfioCdev!), 'EACCES');
  assert.equal(openAsNobody('/dev/iommu'), 'EACCES');
  const cfg = writeConfig({
    memory: 64,
    kernel: { path: join(projectRoot, 'guest/out/tsvmm-guest.elf') },
    cmdline: 'test=edu dma=1 msi=3 intx=3',
    vfio: { backend: 'iommufd' },
    devices: [{ type: 'vfio-pci', host: edu.bdf }],
  });
  const r = spawnSync(process.execPath, [cli, 'manager', cfg, '--user', 'nobody'], {
    encoding: 'utf8',
    timeout: 180000,
  });
  assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
  assert.doesNotMatch(r.stderr, /warning/, 'per-process pin accounting was set by the manager');
  for (const t of ['edu-id', 'edu-dma', 'edu-msi', 'edu-intx']) assert.match(r.stdout, new RegExp(`^PASS ${t}$`, 'm'));
  assert.equal(pinnedBytes(), 0);
});

test('a cdev fd of another device, or a non-iommufd fd labelled /dev/iommu, is refused by the VMM', () => {
  const edu = hostDevice('edu'),
    nvme = hostDevice('nvme');
  const receive = (fds: Parameters<typeof sendPassedFds>[1]) => {
    const [a, b] = native().socketpair();
    sendPassedFds(a, fds);
    const r = spawnSync(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `import { receivePassedFds } from '${join(projectRoot, 'dist/core/fdpass.js')}'; try { receivePassedFds(3); console.log('accepted') } catch (e) { console.log(e.message) }`,
      ],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe', b] },
    );
    for (const f of [a, b, ...fds.map((x) => x.fd)]) closeSync(f);
    return r.stdout.trim();
  };
  assert.match(
    receive([{ name: 'edu', kind: 'vfio-cdev', device: edu.bdf, fd: openSync(nvme.vfioCdev!, 'r+') }]),
    new RegExp(`passed fd 'edu' \\(fd \\d+\\) is the cdev of ${nvme.bdf}, not of ${edu.bdf}`),
  );
  assert.match(
    receive([{ name: 'iommu', kind: 'iommufd', fd: openSync('/dev/kvm', 'r+') }]),
    /passed fd 'iommu' \(fd \d+\) should be \/dev\/iommu but is \/dev\/kvm/,
  );
  assert.equal(
    receive([
      { name: 'iommu', kind: 'iommufd', fd: openSync('/dev/iommu', 'r+') },
      { name: 'edu', kind: 'vfio-cdev', device: edu.bdf, fd: openSync(edu.vfioCdev!, 'r+') },
    ]),
    'accepted',
  );
});

test('config "fd" alone: a passed cdev names the device, and the passed /dev/iommu is used', async () => {
  const edu = hostDevice('edu');
  const { checkConfig } = await import('../../../machine/config/config.js');
  const { Machine } = await import('../../../machine/machine.js');
  const cfg = checkConfig(
    {
      memory: 32,
      kernel: { path: 'guest/out/tsvmm-guest.elf' },
      cmdline: 'test=edu dma=1',
      devices: [{ type: 'vfio-pci', fd: 'edu' }],
    },
    't',
    projectRoot,
  );
  const iommu = openSync('/dev/iommu', 'r+'),
    cdev = openSync(edu.vfioCdev!, 'r+');
  let out = '';
  const m = new Machine(cfg, {
    serialOutput: (b) => {
      out += Buffer.from(b).toString('latin1');
    },
    passedFds: [
      { name: 'iommu', kind: 'iommufd', fd: iommu },
      { name: 'edu', kind: 'vfio-cdev', device: edu.bdf, fd: cdev },
    ],
  });
  try {
    // inside: the device model's own state (backend, host device, INTx unmasks): no interface shows it
    const a = inside(m).devices[0]!.assigned;
    assert.equal(a.backend, 'iommufd');
    assert.equal(a.host.name, edu.bdf);
    assert.equal(a.device.fd, cdev, 'the device uses the passed cdev');
    // inside: VFIO containers and groups: no interface shows them
    assert.equal(inside(m).vfio.iommufd!.fd, iommu, 'and the passed /dev/iommu');
    const r = await m.run();
    assert.equal(r.status, 0, `${r.reason}\n${out}`);
    assert.match(out, /^PASS edu-dma\r?$/m);
  } finally {
    m.close();
  }
  assert.equal(pinnedBytes(), 0);
});
