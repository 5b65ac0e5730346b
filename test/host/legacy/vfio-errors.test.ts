// Bad input around device assignment, against the real kernel: each is refused with an error
// that says what and how to fix it, or is contained — and nothing is left behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chownSync, statSync, writeFileSync, mkdtempSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runGuest } from '../../helpers/guest.js';
import { hostDevice } from '../../helpers/testhost-env.js';
import { checkConfig } from '../../../machine/config/config.js';
import { Machine } from '../../../machine/machine.js';
import { assignBars } from '../../../hw/pci-bars.js';
import { lockedBytes } from '../../../core/vfio/limits.js';
import { projectRoot } from '../../../core/paths.js';
import type { TsvmmError } from '../../../core/errors.js';
import { inside } from '../../helpers/inside.js';

function machineWith(devices: object[], memory = 16): () => Machine {
  const cfg = checkConfig({ memory, kernel: { path: 'guest/out/tsvmm-guest.elf' }, devices }, 'test', projectRoot);
  return () => new Machine(cfg);
}

test('a device that is not on the host', () => {
  assert.throws(
    machineWith([{ type: 'vfio-pci', host: '00:1f.7' }]),
    (e: TsvmmError) =>
      /^no PCI device 0000:00:1f\.7 on this host \(.*\)$/.test(e.message) && /'tsvmm groups' lists/.test(e.fix ?? ''),
  );
});

test('a device bound to no driver / not vfio-pci names the fix', () => {
  const edu = hostDevice('edu');
  writeFileSync(`/sys/bus/pci/devices/${edu.bdf}/driver/unbind`, edu.bdf);
  try {
    assert.throws(machineWith([{ type: 'vfio-pci', host: edu.bdf }]), (e: TsvmmError) => {
      assert.match(e.message, new RegExp(`${edu.bdf.replace(/\./g, '\\.')} is not bound to any driver, not vfio-pci$`));
      assert.match(e.fix ?? '', new RegExp(`^echo ${edu.bdf.replace(/\./g, '\\.')} > .*/driver_override`));
      return true;
    });
  } finally {
    writeFileSync(`/sys/bus/pci/drivers/vfio-pci/bind`, edu.bdf);
  }
});

test('the wrong IOMMU group in the config', () => {
  const edu = hostDevice('edu');
  assert.throws(
    machineWith([{ type: 'vfio-pci', host: edu.bdf, group: edu.group! + 100 }]),
    new RegExp(`is in IOMMU group ${edu.group}, not ${edu.group! + 100}`),
  );
});

test('garbage written over the whole config space is contained; the device still works', async () => {
  const edu = hostDevice('edu');
  const r = await runGuest({
    cmdline: 'test=edu msi=2',
    config: { memory: 32, devices: [{ type: 'vfio-pci', host: edu.bdf }] },
    onStart: (m) => {
      // inside: the device model's own state (backend, host device, INTx unmasks): no interface shows it
      const dev = inside(m).devices[0]!;
      for (let off = 0; off < 256; off += 4) dev.configWrite(off, 4, 0xffffffff);
      for (let off = 0; off < 256; off++) dev.configWrite(off, 1, 0xa5);
      assert.equal(dev.configRead(0, 4), 0x11e81234, 'IDs are read-only');
      assert.equal(dev.configRead(0x30, 4), 0, 'the ROM BAR stays hidden');
      // Firmware programs the BARs again, as after a reset; the guest then drives the device.
      dev.configWrite(4, 2, 0);
      // inside: moves the bus limit to provoke what KVM refuses: no interface may
      assignBars(inside(m).pciBus, { base: 0xc0000000, end: 0xfec00000 }, { base: 0xc000, end: 0x10000 });
    },
  });
  assert.equal(r.status, 0, `${r.reason}\n${r.output}`);
  assert.ok(r.lines.includes('PASS edu-msi'), r.output);
});

// Runs `tsvmm run` as an unprivileged user (nobody), with the given memlock limit.
function runAsNobody(devices: object[], memlockBytes: number) {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-nobody-')); // the host's own /tmp: nobody can reach it
  chmodSync(dir, 0o755);
  const cfg = join(dir, 'vm.json');
  writeFileSync(
    cfg,
    JSON.stringify({ memory: 64, kernel: { path: join(projectRoot, 'guest/out/tsvmm-guest.elf') }, devices }),
  );
  chmodSync(cfg, 0o644);
  return spawnSync(
    'prlimit',
    [
      `--memlock=${memlockBytes}:${memlockBytes}`,
      'setpriv',
      '--reuid=65534',
      '--regid=65534',
      '--clear-groups',
      '--inh-caps=-all',
      process.execPath,
      join(projectRoot, 'dist/bin/tsvmm.cjs'),
      'run',
      cfg,
    ],
    { encoding: 'utf8', timeout: 120000 },
  );
}

/** Lets nobody use /dev/kvm (and a VFIO group) for the duration of fn. */
function lend<T>(paths: string[], fn: () => T): T {
  const saved = paths.map((p) => ({ p, s: statSync(p) }));
  for (const p of paths) chownSync(p, 65534, 65534);
  try {
    return fn();
  } finally {
    for (const { p, s } of saved) chownSync(p, s.uid, s.gid);
  }
}

test('no permission on /dev/vfio/N: says so and how to fix it', () => {
  const edu = hostDevice('edu');
  const r = lend(['/dev/kvm'], () => runAsNobody([{ type: 'vfio-pci', host: edu.bdf }], 2 ** 30));
  assert.equal(r.status, 1, r.stderr);
  assert.match(
    r.stderr,
    new RegExp(`no permission to open /dev/vfio/${edu.group} \\(EACCES\\)\ntsvmm: fix: give your user`),
  );
});

test('RLIMIT_MEMLOCK below guest RAM: refused before pinning, with the ulimit fix', () => {
  const edu = hostDevice('edu');
  const r = lend(['/dev/kvm', `/dev/vfio/${edu.group}`], () =>
    runAsNobody([{ type: 'vfio-pci', host: edu.bdf }], 64 * 1024),
  );
  assert.equal(r.status, 1, r.stderr);
  assert.match(
    r.stderr,
    /pins all guest RAM \(64M\), but the locked-memory limit is 64K\ntsvmm: fix: raise it \(ulimit -l 65536 or unlimited/,
  );
  assert.equal(lockedBytes(), 0);
});

/** Moves a device to another driver (via driver_override) and returns a function that undoes it. */
function rebind(bdf: string, driver: string): () => void {
  const dev = `/sys/bus/pci/devices/${bdf}`;
  const move = (to: string) => {
    try {
      writeFileSync(`${dev}/driver/unbind`, bdf);
    } catch {
      /* not bound */
    }
    writeFileSync(`${dev}/driver_override`, to);
    writeFileSync('/sys/bus/pci/drivers_probe', bdf);
  };
  move(driver);
  return () => move('vfio-pci');
}

test('a non-viable group (pci-bridge pair, one member on another driver) names the member, its driver and the fix', () => {
  const edu = hostDevice('bridge-edu'),
    other = hostDevice('bridge-testdev');
  assert.equal(edu.group, other.group, 'the pair shares one IOMMU group');
  const restore = rebind(other.bdf, 'uio_pci_generic');
  try {
    const esc = (s: string) => s.replace(/\./g, '\\.');
    assert.throws(machineWith([{ type: 'vfio-pci', host: edu.bdf }]), (e: TsvmmError) => {
      assert.match(
        e.message,
        new RegExp(
          `IOMMU group ${edu.group} \\(of ${esc(edu.bdf)}\\) is not viable: .*\\n  - ${esc(other.bdf)} is bound to uio_pci_generic$`,
        ),
      );
      assert.match(
        e.fix ?? '',
        new RegExp(`echo ${esc(other.bdf)} > /sys/bus/pci/devices/${esc(other.bdf)}/driver/unbind`),
      );
      return true;
    });
    const groups = spawnSync(process.execPath, [join(projectRoot, 'dist/bin/tsvmm.cjs'), 'groups'], {
      encoding: 'utf8',
    });
    assert.match(groups.stdout, new RegExp(`^group ${edu.group} NOT viable$`, 'm'));
  } finally {
    restore();
  }
  // Bound back, the group is viable again and both devices can be assigned together.
  const m = machineWith([
    { type: 'vfio-pci', host: edu.bdf },
    { type: 'vfio-pci', host: other.bdf },
  ])();
  try {
    // inside: VFIO containers and groups: no interface shows them
    assert.equal(inside(m).vfio.groups.size, 1);
    assert.equal(inside(m).devices.length, 2);
  } finally {
    m.close();
  }
});
