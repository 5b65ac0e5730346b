// The manager opens the privileged fds and starts the VMM as an unprivileged user: the VMM
// cannot open /dev/vfio/N itself, and still assigns edu with the fds it was passed.
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
import { checkConfig } from '../../../machine/config/config.js';
import { Machine } from '../../../machine/machine.js';
import { lockedBytes } from '../../../core/vfio/limits.js';
import { inside } from '../../helpers/inside.js';

const cli = join(projectRoot, 'dist/bin/tsvmm.cjs');

test('as nobody, the VMM cannot open the group itself (EACCES)', () => {
  const edu = hostDevice('edu');
  assert.equal(openAsNobody(`/dev/vfio/${edu.group}`), 'EACCES');
});

test('tsvmm manager: the unprivileged VMM assigns edu with passed fds; the edu guest program passes unchanged', () => {
  const edu = hostDevice('edu');
  const cfg = writeConfig({
    memory: 64,
    kernel: { path: join(projectRoot, 'guest/out/tsvmm-guest.elf') },
    cmdline: 'test=edu dma=1 msi=3 intx=3',
    devices: [{ type: 'vfio-pci', host: edu.bdf }],
  });
  const r = spawnSync(process.execPath, [cli, 'manager', cfg, '--user', 'nobody'], {
    encoding: 'utf8',
    timeout: 180000,
  });
  assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
  for (const t of ['edu-id', 'edu-dma', 'edu-msi', 'edu-intx']) assert.match(r.stdout, new RegExp(`^PASS ${t}$`, 'm'));
  assert.equal(lockedBytes(), 0);
});

test('the manager refuses to run the VMM as root', () => {
  const r = spawnSync(
    process.execPath,
    [cli, 'manager', writeConfig({ kernel: { path: join(projectRoot, 'guest/out/tsvmm-guest.elf') } }), '--uid', '0'],
    { encoding: 'utf8' },
  );
  assert.equal(r.status, 2, r.stderr); // a bad command line: --uid 0
  assert.match(r.stderr, /the VMM must not run as root/);
});

test('a group fd for a different group is refused by the VMM', () => {
  const edu = hostDevice('edu'),
    nvme = hostDevice('nvme');
  const cfg = checkConfig(
    { memory: 16, kernel: { path: 'guest/out/tsvmm-guest.elf' }, devices: [{ type: 'vfio-pci', host: edu.bdf }] },
    't',
    projectRoot,
  );
  const nvmeGroup = openSync(`/dev/vfio/${nvme.group}`, 'r+');
  // Labelled as the nvme group it is: the config has no device in it.
  assert.throws(
    () => new Machine(cfg, { passedFds: [{ name: 'nvme', kind: 'vfio-group', group: nvme.group!, fd: nvmeGroup }] }),
    new RegExp(`passed fd 'nvme' is VFIO group ${nvme.group}, but no device in the config is in that group`),
  );
  // Labelled as edu's group over the socket: identification sees through it.
  const [a, b] = native().socketpair();
  const again = openSync(`/dev/vfio/${nvme.group}`, 'r+');
  sendPassedFds(a, [{ name: 'edu-group', kind: 'vfio-group', group: edu.group!, fd: again }]);
  const r = spawnSync(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `import { receivePassedFds } from '${join(projectRoot, 'dist/core/fdpass.js')}'; try { receivePassedFds(3) } catch (e) { console.log(e.message) }`,
    ],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe', b] },
  );
  assert.match(
    r.stdout,
    new RegExp(`passed fd 'edu-group' \\(fd \\d+\\) is VFIO group ${nvme.group}, not group ${edu.group}`),
  );
  for (const fd of [a, b, again]) closeSync(fd);
});

test('config "fd": a device named by a passed fd; an unknown name, or a group fd for another device, is refused', async () => {
  const edu = hostDevice('edu'),
    nvme = hostDevice('nvme');
  const { resolveFdNames } = await import('../../../machine/fd-names.js');
  const eduGroup = openSync(`/dev/vfio/${edu.group}`, 'r+');
  // In-process, as the VMM sees it after --fd-socket: passed fds by name.
  const cfg = checkConfig(
    {
      memory: 32,
      kernel: { path: 'guest/out/tsvmm-guest.elf' },
      cmdline: 'test=edu',
      devices: [{ type: 'vfio-pci', host: edu.bdf, fd: 'edu-grp' }],
    },
    't',
    projectRoot,
  );
  const m = new Machine(cfg, {
    passedFds: [{ name: 'edu-grp', kind: 'vfio-group', group: edu.group!, fd: eduGroup }],
    serialOutput: () => {},
  });
  try {
    // inside: VFIO containers and groups: no interface shows them
    assert.equal(inside(m).vfio.groups.get(edu.group!)?.fd, eduGroup, 'the group uses the passed fd');
    const r = await m.run();
    assert.equal(r.status, 0, r.reason);
  } finally {
    m.close();
  }
  const p = [{ name: 'g', kind: 'vfio-group' as const, group: nvme.group!, fd: -1 }];
  assert.throws(
    () => resolveFdNames([{ type: 'vfio-pci', host: edu.bdf, fd: 'h' }], p),
    /\/devices\/0\/fd: no fd named 'h' was passed \(passed: g\)/,
  );
  assert.throws(
    () => resolveFdNames([{ type: 'vfio-pci', host: edu.bdf, fd: 'g' }], p),
    new RegExp(`fd 'g' is VFIO group ${nvme.group}, but ${edu.bdf} is in group ${edu.group}`),
  );
  assert.throws(
    () => resolveFdNames([{ type: 'vfio-pci', fd: 'g' }], p),
    /say which of its devices with "host" or "sysfsdev"/,
  );
  assert.equal(lockedBytes(), 0);
});
