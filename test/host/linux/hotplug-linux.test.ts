// Runs INSIDE the test host: guest-visible hot-plug with a Linux guest. device_add raises the
// ACPI GED, whose _EVT notifies the slot, and Linux's acpiphp probes the device with no rescan;
// device_del asks the guest to eject (Notify 3), Linux stops the driver and runs _EJ0, and only
// then does tsvmm release the device and send DEVICE_DELETED. system_powerdown presses the ACPI
// power button.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readlinkSync } from 'node:fs';
import { hostDevice } from '../../helpers/testhost-env.js';
import { linuxEnv, sampleConfig } from '../../helpers/linux.js';
import { spawnVm, vmmFds } from '../../helpers/hotplug.js';
import { lockedBytes } from '../../../core/vfio/limits.js';

const MiB = 2 ** 20;

/** tsvmm run with a QMP socket, the Linux samples' env set. */
const start = (config: string) => spawnVm(config, { ...process.env, ...linuxEnv() });

const waitFor = async (what: string, ok: () => boolean, timeoutMs = 60_000) => {
  const t0 = Date.now();
  while (!ok()) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
};

test(
  'Linux sees nvme hot-added by device_add (no rescan), reads it, ejects it on device_del, gets it again',
  { timeout: 420_000 },
  async () => {
    const nvme = hostDevice('nvme');
    const bytes = process.env.TSVMM_TESTHOST_NVME_BYTES!,
      want = process.env.TSVMM_TESTHOST_NVME_SHA256!;
    // The guest only waits and reads: nothing in it asks for a rescan.
    const script = [
      // No deadlines in the guest (a nested guest's clocks jump): the host side times out.
      'wait_dev() { while [ ! -b /dev/nvme0n1 ]; do sleep 1; done; }',
      'gone_dev() { while [ -e /dev/nvme0n1 ]; do sleep 1; done; }',
      'echo "hotplug: ready"',
      'for round in 1 2; do',
      '  wait_dev',
      `  echo "read $round: $(head -c ${bytes} /dev/nvme0n1 | sha256sum)"`,
      '  [ $round = 2 ] && break',
      '  gone_dev',
      '  echo "hotplug: removed"',
      'done',
    ].join('\n');
    const cfg = sampleConfig('linux-nvme', (c) => {
      c.devices = [];
      c.kernel.initramfs.script = script;
    });
    const vm = start(cfg);
    try {
      await vm.seen(/^hotplug: ready$/m);
      const q = await vm.qmp();
      const base = lockedBytes(vm.vmm.pid!);
      assert.equal(base, 0, 'nothing pinned before a device comes');
      assert.deepEqual(await q.cmd('device_add', { driver: 'vfio-pci', id: 'nvme', host: nvme.bdf }), { return: {} });
      assert.equal((await vm.seen(/^read 1: ([0-9a-f]{64})\b/m))[1], want, vm.log());
      const pinned = lockedBytes(vm.vmm.pid!);
      assert.ok(pinned >= 256 * MiB, `guest RAM pinned while nvme is assigned (${pinned})`);

      assert.deepEqual(await q.cmd('device_del', { id: 'nvme' }), { return: {} });
      const ev = await q.event('DEVICE_DELETED', 60_000);
      assert.deepEqual(ev.data, { device: 'nvme', path: '/machine/peripheral/nvme' });
      await vm.seen(/^hotplug: removed$/m);
      await vm.until(() => lockedBytes(vm.vmm.pid!) === base, 'pinned memory released');
      assert.deepEqual(vmmFds(vm.vmm.pid!), [], 'no VFIO fd left');
      const pci = (await q.cmd('query-pci')).return[0].devices as { qdev_id: string }[];
      assert.deepEqual(
        pci.map((d) => d.qdev_id),
        ['pci-host-bridge'],
        'only the host bridge is left',
      );

      assert.deepEqual(await q.cmd('device_add', { driver: 'vfio-pci', id: 'nvme2', host: nvme.bdf }), { return: {} });
      assert.equal((await vm.seen(/^read 2: ([0-9a-f]{64})\b/m))[1], want, vm.log());
      assert.equal(await vm.exited, 0, vm.log());
      q.sock.destroy();
    } finally {
      if (vm.vmm.exitCode === null) vm.vmm.kill('SIGKILL');
    }
  },
);

test(
  'system_powerdown presses the ACPI power button: the guest sees KEY_POWER and powers off; POWERDOWN then SHUTDOWN',
  { timeout: 300_000 },
  async () => {
    // The guest's "power management" is this script: it waits for the power button's input event
    // (what acpid or systemd-logind would do), then returns, and init powers off through ACPI.
    const script = [
      "ev=$(grep -A6 'Name=\"Power Button\"' /proc/bus/input/devices | sed -n 's/.*Handlers=.*\\(event[0-9]*\\).*/\\1/p' | head -n 1)",
      '[ -n "$ev" ] || { cat /proc/bus/input/devices; dmesg | grep -i -e button -e PNP0C0C -e input; ls /sys/bus/acpi/devices/; exit 5; }',
      // Opened before "ready": evdev queues events only for a reader that has the device open.
      'exec 3</dev/input/$ev',
      'echo "powerdown: ready ${ev:-none}"',
      'dd bs=24 count=1 of=/dev/null <&3 2>/dev/null',
      'echo "powerdown: pressed"',
    ].join('\n');
    // linux-nvme for its guest modules (the button driver among them), without the device.
    const vm = start(
      sampleConfig('linux-nvme', (c) => {
        c.devices = [];
        c.kernel.initramfs.script = script;
      }),
    );
    try {
      await vm.seen(/^powerdown: ready event\d+$/m);
      const q = await vm.qmp();
      assert.deepEqual(await q.cmd('system_powerdown'), { return: {} });
      await vm.seen(/^powerdown: pressed$/m);
      assert.equal(await vm.exited, 0, vm.log());
      assert.match(vm.log(), /guest powered off \(ACPI S5\)/);
      const names = q.events.map((e) => e.event);
      assert.deepEqual(
        names.filter((n) => n === 'POWERDOWN' || n === 'SHUTDOWN'),
        ['POWERDOWN', 'SHUTDOWN'],
        names.join(' '),
      );
      assert.deepEqual(q.events.find((e) => e.event === 'SHUTDOWN')!.data, { guest: true, reason: 'guest-shutdown' });
    } finally {
      if (vm.vmm.exitCode === null) vm.vmm.kill('SIGKILL');
    }
  },
);

test(
  'the host takes nvme back (unbind from vfio-pci): the guest is asked to eject it, tsvmm releases it, the unbind completes, the VM runs on',
  { timeout: 300_000 },
  async () => {
    const nvme = hostDevice('nvme');
    const script = [
      'while [ ! -b /dev/nvme0n1 ]; do sleep 1; done',
      'echo "unbind: ready"',
      'while [ -e /dev/nvme0n1 ]; do sleep 1; done',
      'echo "unbind: nvme gone"',
      // Still running: prove it with output after the device left.
      'echo "unbind: alive $(cat /proc/uptime)"',
    ].join('\n');
    const vm = start(
      sampleConfig('linux-nvme', (c) => {
        c.kernel.initramfs.script = script;
      }),
    );
    let unbind: ReturnType<typeof spawn> | undefined;
    try {
      await vm.seen(/^unbind: ready$/m);
      const q = await vm.qmp();
      assert.ok(lockedBytes(vm.vmm.pid!) > 0, 'pinned while assigned');
      // The kernel blocks this write until the VMM lets go of the device (it signals the request
      // notifier meanwhile): run it aside.
      unbind = spawn('sh', ['-c', `echo ${nvme.bdf} > /sys/bus/pci/devices/${nvme.bdf}/driver/unbind`], {
        stdio: 'inherit',
      });
      const unbound = new Promise<number | null>((r) => unbind!.on('exit', (c) => r(c)));
      const req = await q.event('VFIO_REQUEST', 60_000);
      assert.deepEqual(req.data, { device: 'nvme', host: nvme.bdf });
      await vm.seen(/^unbind: nvme gone$/m);
      assert.deepEqual((await q.event('DEVICE_DELETED', 60_000)).data, {
        device: 'nvme',
        path: '/machine/peripheral/nvme',
      });
      assert.equal(await unbound, 0, 'the unbind completed');
      await vm.until(() => lockedBytes(vm.vmm.pid!) === 0, 'pinned memory released');
      assert.deepEqual(vmmFds(vm.vmm.pid!), []);
      await vm.seen(/^unbind: alive /m);
      assert.equal(await vm.exited, 0, vm.log());
    } finally {
      if (vm.vmm.exitCode === null) vm.vmm.kill('SIGKILL');
      if (unbind && unbind.exitCode === null) unbind.kill('SIGKILL');
      // Give the device back to vfio-pci for the tests after this one.
      spawn(
        'sh',
        [
          '-c',
          `[ -e /sys/bus/pci/devices/${nvme.bdf}/driver ] || echo ${nvme.bdf} > /sys/bus/pci/drivers/vfio-pci/bind`,
        ],
        { stdio: 'inherit' },
      );
      await waitFor(
        'nvme back on vfio-pci',
        () => {
          try {
            return readlinkSync(`/sys/bus/pci/devices/${nvme.bdf}/driver`).endsWith('/vfio-pci');
          } catch {
            return false;
          }
        },
        10_000,
      );
    }
  },
);

test(
  'a device error (VFIO error notifier, signalled by the kernel through its loopback) stops the VM with VFIO_ERROR; cont resumes it',
  { timeout: 300_000 },
  async () => {
    const nvme = hostDevice('nvme');
    // A guest that shows it runs: a counter on the serial line.
    const script = ['echo "err: ready"', 'i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 1; done'].join('\n');
    const vm = start(
      sampleConfig('linux-nvme', (c) => {
        c.kernel.initramfs.script = script;
      }),
    );
    const ticks = () => [...vm.io.out.matchAll(/^tick (\d+)$/gm)].length;
    try {
      await vm.seen(/^err: ready$/m);
      const q = await vm.qmp();
      assert.deepEqual((await q.cmd('query-status')).return, { running: true, singlestep: false, status: 'running' });
      assert.deepEqual(await q.cmd('x-vfio-signal-notifier', { id: 'nvme', notifier: 'error' }), { return: {} });
      assert.deepEqual((await q.event('VFIO_ERROR', 30_000)).data, { device: 'nvme', host: nvme.bdf });
      await q.event('STOP', 30_000);
      assert.deepEqual((await q.cmd('query-status')).return, {
        running: false,
        singlestep: false,
        status: 'internal-error',
      });
      const stopped = ticks();
      await new Promise((r) => setTimeout(r, 3000));
      assert.equal(ticks(), stopped, 'the guest does not run while stopped');
      assert.deepEqual(await q.cmd('cont'), { return: {} });
      await q.event('RESUME', 30_000);
      await vm.until(() => ticks() > stopped, 'the guest running again');
      assert.deepEqual((await q.cmd('query-status')).return, { running: true, singlestep: false, status: 'running' });
      assert.match(
        (await q.cmd('x-vfio-signal-notifier', { id: 'nvme', notifier: 'bogus' })).error.desc,
        /does not accept value 'bogus'/,
      );
      await q.cmd('quit');
      assert.equal(await vm.exited, 0, vm.log());
    } finally {
      if (vm.vmm.exitCode === null) vm.vmm.kill('SIGKILL');
    }
  },
);
