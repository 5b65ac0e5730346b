// The iommufd backend against the real kernel (test host, iommufd kernel): the edu acceptance
// of the VFIO issue unchanged, the same guest-visible behaviour as legacy, mdev (mtty) on both
// backends, and the kernel's group-isolation refusal explained.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, openSync, readdirSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { runGuest, openFds, type GuestRun } from '../../helpers/guest.js';
import { hostDevice } from '../../helpers/testhost-env.js';
import { lockedBytes, pinnedBytes } from '../../../core/vfio/limits.js';
import { native } from '../../../core/native.js';
import { createMdev, removeMdev, mdevs } from '../../../core/vfio/mdev.js';
import { projectRoot } from '../../../core/paths.js';
import type { VfioBackendKind } from '../../../core/vfio/vfio.js';
import type { TsvmmError } from '../../../core/errors.js';
import { inside } from '../../helpers/inside.js';
import { dmaCovers } from '../../helpers/guest.js';

const edu = () => hostDevice('edu');
const MiB = 2 ** 20;

async function eduScenario(backend: VfioBackendKind): Promise<GuestRun> {
  const r = await runGuest({
    cmdline: 'test=edu dma=1 msi=3 intx=3',
    config: { memory: 64, vfio: { backend }, devices: [{ type: 'vfio-pci', host: edu().bdf }] },
    inspect: (m) => {
      // inside: the device model's own state (backend, host device, INTx unmasks): no interface shows it
      assert.equal(inside(m).devices[0]!.assigned.backend, backend);
      assert.equal(inside(m).vfio.listeners.length, 1);
      assert.equal(inside(m).vfio.listeners[0]!.name, backend === 'iommufd' ? 'iommufd-dma' : 'vfio-dma');
      assert.ok(dmaCovers(m.inspect(), 0, 64 * MiB), 'all guest RAM is DMA-mapped');
      if (backend === 'iommufd') {
        assert.ok(
          // inside: VFIO containers and groups: no interface shows them
          inside(m).vfio.iommufd!.accountPerProcess,
          'as root, pins are charged to this process (IOMMU_OPTION_RLIMIT_MODE)',
        );
        assert.ok(pinnedBytes() >= 64 * MiB, `iommufd charges the pins to this process (VmPin ${pinnedBytes()})`);
      } else {
        assert.ok(lockedBytes() >= 64 * MiB, `type1 charges the pins to this process (VmLck ${lockedBytes()})`);
      }
    },
  });
  assert.equal(r.status, 0, `${r.reason}\n${r.output}`);
  return r;
}

/** Binding a cdev to a fresh iommufd succeeds only when nobody else holds the device or its group. */
function cdevIsFree(cdev: string): boolean {
  const dev = openSync(cdev, 'r+'),
    ctx = openSync('/dev/iommu', 'r+');
  try {
    native().vfioDeviceBindIommufd(dev, ctx);
    return true;
  } catch (e) {
    if (['EBUSY', 'EPERM'].includes((e as { code?: string }).code ?? '')) return false;
    throw e;
  } finally {
    closeSync(dev);
    closeSync(ctx);
  }
}

test('edu on the iommufd backend: DMA into the IOAS, MSI and INTx via irqfd, nothing pinned or held afterwards', async () => {
  const fds = openFds();
  const r = await eduScenario('iommufd');
  for (const t of ['edu-id', 'edu-liveness', 'edu-factorial', 'edu-dma', 'edu-msi', 'edu-intx'])
    assert.ok(r.lines.includes(`PASS ${t}`), `${t}:\n${r.output}`);
  const dma = r.lines.find((l) => l.startsWith('edu dma iova='))!;
  const [src, dst] = [...dma.matchAll(/0x([0-9a-f]+)/g)].map((x) => parseInt(x[1]!, 16));
  assert.ok(r.dmaCovered(src!, 256) && r.dmaCovered(dst!, 256), dma);
  assert.equal(r.stats.irqInjections, 0, 'interrupts came through irqfd');
  assert.equal(pinnedBytes() + lockedBytes(), 0, 'every pinned page is released after the VM');
  assert.equal(openFds(), fds, 'no fd leaked (iommufd, cdev, eventfds)');
  assert.ok(cdevIsFree(edu().vfioCdev!), 'the cdev is free again');
});

test('legacy and iommufd: the same guest-visible behaviour for the same scenario', async () => {
  const legacy = await eduScenario('legacy');
  const iommufd = await eduScenario('iommufd');
  // Everything the guest printed (IDs, BAR address, DMA IOVAs, interrupt counts, results).
  assert.deepEqual(iommufd.lines, legacy.lines);
  assert.equal(legacy.stats.irqInjections + iommufd.stats.irqInjections, 0);
});

async function mttyScenario(backend: VfioBackendKind): Promise<void> {
  const m = createMdev('mtty-1');
  try {
    assert.ok(mdevs().some((d) => d.uuid === m.uuid && d.type === 'mtty-1'));
    let unmasks: number | undefined;
    const r = await runGuest({
      cmdline: 'test=mtty count=4',
      config: { memory: 32, devices: [{ type: 'vfio-pci', sysfsdev: m.path, backend }] },
      inspect: (vm) => {
        // inside: the device model's own state (backend, host device, INTx unmasks): no interface shows it
        const a = inside(vm).devices[0]!.assigned;
        assert.equal(a.backend, backend);
        assert.equal(a.host.name, m.uuid);
        assert.notEqual(a.host.group, edu().group, 'an mdev has an IOMMU group of its own');
      },
      onLine: (line, vm) => {
        // inside: the device model's own state (backend, host device, INTx unmasks): no interface shows it
        if (line === 'PASS mtty-intx') unmasks = inside(vm).devices[0]!.userspaceIntxUnmasks;
      },
    });
    assert.equal(r.status, 0, `${r.reason}\n${r.output}`);
    assert.ok(r.lines.includes('mtty loopback wrote "tsvmm-mdev" read "tsvmm-mdev"'), r.output);
    assert.ok(r.lines.includes('PASS mtty-loopback') && r.lines.includes('PASS mtty-intx'), r.output);
    // The interrupt went VFIO eventfd → KVM irqfd; mtty cannot unmask from an eventfd, so the
    // VMM unmasked after each EOI (one per interrupt), but injected nothing itself.
    assert.equal(r.stats.irqInjections, 0);
    assert.ok(unmasks !== undefined && unmasks >= 4, `userspace unmasks: ${unmasks}`);
  } finally {
    removeMdev(m.uuid);
  }
  assert.ok(!mdevs().some((d) => d.uuid === m.uuid), 'mdev removed');
}

test('mtty mdev on the legacy backend: loopback through its I/O BAR, INTx through irqfd', () => mttyScenario('legacy'));
test('mtty mdev on the iommufd backend: loopback through its I/O BAR, INTx through irqfd', () =>
  mttyScenario('iommufd'));

test('a device whose group-mate is held elsewhere: the kernel refuses the bind, tsvmm explains', async () => {
  const be = hostDevice('bridge-edu'),
    bt = hostDevice('bridge-testdev');
  assert.equal(be.group, bt.group);
  // Another "process" (this one, outside the VM) holds bridge-testdev through iommufd.
  const dev = openSync(bt.vfioCdev!, 'r+'),
    ctx = openSync('/dev/iommu', 'r+');
  try {
    native().vfioDeviceBindIommufd(dev, ctx);
    await assert.rejects(
      runGuest({ config: { memory: 16, devices: [{ type: 'vfio-pci', host: be.bdf, backend: 'iommufd' }] } }),
      (e: Error) => {
        assert.match(e.message, new RegExp(`VFIO_DEVICE_BIND_IOMMUFD of ${be.bdf} .* was refused \\(EPERM\\)`));
        assert.match(e.message, new RegExp(`whole IOMMU group ${be.group} is free`));
        assert.ok(e.message.includes(`- ${bt.bdf}: bound to vfio-pci`), e.message);
        assert.match((e as TsvmmError).fix ?? '', /^close the other user /);
        return true;
      },
    );
  } finally {
    closeSync(dev);
    closeSync(ctx);
  }
  assert.equal(pinnedBytes() + lockedBytes(), 0);
  // Released: the same VM now starts.
  const r = await runGuest({
    config: { memory: 16, devices: [{ type: 'vfio-pci', host: be.bdf, backend: 'iommufd' }] },
  });
  assert.equal(r.status, 0, r.output);
  assert.ok(
    r.lines.some((l) => /^pci 00:0[0-9a-f]\.0 1234:11e8/.test(l)),
    r.output,
  );
});

test("a cdev that is not the named device's is refused before anything is opened", async () => {
  const nvme = hostDevice('nvme');
  await assert.rejects(
    runGuest({
      config: { devices: [{ type: 'vfio-pci', host: edu().bdf, cdev: nvme.vfioCdev!, backend: 'iommufd' }] },
    }),
    new RegExp(`${nvme.vfioCdev} is the cdev of ${nvme.bdf}, not of ${edu().bdf} \\(that is ${edu().vfioCdev}\\)`),
  );
  // cdev alone names the device.
  const r = await runGuest({ config: { memory: 16, devices: [{ type: 'vfio-pci', cdev: edu().vfioCdev! }] } });
  assert.equal(r.status, 0, r.output);
});

test('tsvmm mdev create / list / remove', () => {
  const cli = (...a: string[]) =>
    spawnSync('node', [`${projectRoot}/dist/bin/tsvmm.cjs`, 'mdev', ...a], { encoding: 'utf8' });
  const list0 = cli('list');
  assert.equal(list0.status, 0, list0.stderr);
  assert.match(list0.stdout, /^type mtty\/mtty-1 available=\d+ api=vfio-pci/m);
  const created = cli('create', 'mtty-2');
  assert.equal(created.status, 0, created.stderr);
  const path = created.stdout.trim();
  assert.match(path, /^\/sys\/bus\/mdev\/devices\/[0-9a-f-]{36}$/);
  const uuid = path.split('/').pop()!;
  const list1 = cli('list');
  assert.match(
    list1.stdout,
    new RegExp(
      `^mdev ${uuid} type=mtty-2 parent=mtty group=\\d+ cdev=/dev/vfio/devices/vfio\\d+ sysfsdev=${path}$`,
      'm',
    ),
  );
  const bad = cli('create', 'no-such-type');
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /no mdev type 'no-such-type'\. known: .*mtty\/mtty-1/);
  assert.equal(cli('remove', uuid).status, 0);
  assert.ok(!readdirSync('/sys/bus/mdev/devices').includes(uuid));
  const gone = cli('remove', uuid);
  assert.equal(gone.status, 1);
  assert.match(gone.stderr, /no mdev .* does not exist/);
});
