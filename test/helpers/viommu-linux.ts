// Linux guests with assigned devices behind tsvmm's virtio-iommu, run INSIDE the test host on either VFIO backend
// (test/host/linux/viommu-assigned.test.ts: legacy; test/host/iommufd/viommu-linux.test.ts: iommufd). The Debian
// kernel's own virtio_iommu driver (found through the VIOT) drives it; every guest mapping becomes a mapping in the
// host IOMMU (VfioViommu: the device's own VFIO container, or an IOAS per domain): nvme reads in strict and lazy
// mode, the guest's own VFIO on edu (a userspace driver inside the guest, through the guest's type1 on the
// virtio-iommu, down to the test host's IOMMU), a DMA to an IOVA the guest never mapped, which the test host's IOMMU
// stops, and nvme hot-added behind the vIOMMU.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { hostDevice } from './testhost-env.js';
import { linuxEnv, linuxKernel, sampleConfig } from './linux.js';
import { spawnVm, vmmFds } from './hotplug.js';
import { lockedBytes, pinnedBytes } from '../../core/vfio/limits.js';
import { GUEST_VFIO_MODULES, guestModulesWith, nvmeBlockSha256, parseNvmeReadHashes } from './guest-programs.js';

export type Backend = 'legacy' | 'iommufd';

const start = (config: string) => spawnVm(config, { ...process.env, ...linuxEnv() });
interface ViommuState {
  bypass: boolean;
  requests: Record<string, number>;
  domains: { id: number; endpoints: number[]; mappings: number }[];
  host: {
    domains: { id: number; endpoints: number[]; mappings: number; maps: number; unmaps: number }[];
    endpoints: { endpoint: number; device: string; backend: string; target: string }[];
    groups: { group: number; members: string[]; host: string }[];
    stats: { maps: number; unmaps: number; refused: number; moves: number; hostMaps: number; hostUnmaps: number };
  };
}

/** Lines that tell where a device's DMA goes in the guest: its IOMMU group and the IOMMU of that group. */
const GUEST_IOMMU_LINES = [
  'for d in /sys/bus/pci/devices/*; do',
  '  [ -e $d/iommu_group ] || continue',
  '  echo "iommu-group: $(basename $d) $(cat $d/vendor):$(cat $d/device) group=$(basename $(readlink $d/iommu_group)) iommu=$(basename $(readlink $d/iommu))"',
  'done',
  // The IOMMU is registered under the virtio device's PCI function (virtio_iommu: the virtio device's parent).
  'for v in /sys/bus/virtio/devices/*; do [ "$(cat $v/device)" = 0x0017 ] && echo "virtio-iommu: $(basename $(dirname $(readlink -f $v)))"; done',
  'dmesg | grep -i "TLB invalidation policy" | sed "s/^.*iommu: /policy: /"',
];

/** The test host's kernel log (root may read it). */
function kernelLog(): string {
  for (const cmd of [['dmesg'], ['busybox', 'dmesg']]) {
    const r = spawnSync(cmd[0]!, cmd.slice(1), { encoding: 'utf8' });
    if (r.status === 0) return r.stdout;
  }
  throw new Error('cannot read the kernel log (dmesg)');
}

/** nvme behind the virtio-iommu: blocks read as written from outside, the guest groups nvme under the virtio-iommu, maps and unmaps reach the host; system_reset tears every domain down. */
export async function nvmeBehindViommu(mode: 'strict' | 'lazy', backend: Backend): Promise<void> {
  const nvme = hostDevice('nvme');
  const bytes = Number(process.env.TSVMM_TESTHOST_NVME_BYTES);
  assert.ok(bytes > 0, 'TSVMM_TESTHOST_NVME_BYTES is not set');
  const last = bytes / 4096 - 1;
  const blocks = [0, last, ...Array.from({ length: 6 }, () => 1 + Math.floor(Math.random() * (last - 1)))];
  const script = [
    `nvme-read hash /dev/nvme0n1 ${blocks.join(' ')}`,
    'nvme-read -s 3 -j 2 rand /dev/nvme0n1 1',
    'echo "nvme-dev: $(basename $(readlink /sys/class/nvme/nvme0/device))"',
    ...GUEST_IOMMU_LINES,
    'echo "viommu: done"',
    'while true; do sleep 10; done',
  ].join('\n');
  const cfg = sampleConfig('linux-nvme', (c) => {
    c.iommu = { type: 'virtio' };
    c.vfio = { backend };
    c.devices = [{ type: 'vfio-pci', id: 'nvme', host: nvme.bdf, iommu: true }];
    c.cmdline = `${c.cmdline} iommu.strict=${mode === 'strict' ? 1 : 0}`;
    c.kernel.initramfs.script = script;
    c.kernel.initramfs.programs = ['nvme-read'];
    c.kernel.initramfs.modules = linuxKernel().modules;
  });
  const vm = start(cfg);
  try {
    await vm.seen(/^viommu: done\r?$/m, 300_000);
    const out = vm.io.out;
    const got = parseNvmeReadHashes(out);
    for (const b of blocks) assert.equal(got.get(b), nvmeBlockSha256(b), `block ${b}\n${vm.log()}`);
    assert.match(out, /^nvme-read rand ios=[1-9]\d* usec=\d+ iops=\d+ jobs=2\r?$/m, vm.log());

    const viommu = /^virtio-iommu: (\S+?)\r?$/m.exec(out)?.[1];
    assert.ok(viommu, `no virtio-iommu bound in the guest\n${vm.log()}`);
    const bdf = /^nvme-dev: (\S+?)\r?$/m.exec(out)?.[1];
    assert.ok(bdf, vm.log());
    assert.match(
      out,
      new RegExp(`^iommu-group: ${bdf} \\S+ group=\\d+ iommu=${viommu}\\r?$`, 'm'),
      `nvme (${bdf}) is not in a group of ${viommu}\n${vm.log()}`,
    );
    assert.match(out, new RegExp(`^policy: DMA domain TLB invalidation policy: ${mode} mode`, 'm'), vm.log());

    const q = await vm.qmp();
    const pci = (await q.cmd('query-pci')).return[0].devices as { qdev_id: string; 'x-iommu'?: boolean }[];
    assert.equal(pci.find((d) => d.qdev_id === 'nvme')?.['x-iommu'], true, JSON.stringify(pci));
    assert.equal(pci.find((d) => d.qdev_id === 'virtio-iommu')?.['x-iommu'], undefined);
    const s = (await q.cmd('x-query-viommu')).return as ViommuState;
    const ep = s.host.endpoints.find((e) => e.device === nvme.bdf);
    assert.ok(ep, JSON.stringify(s));
    assert.equal(ep.backend, backend);
    // The guest's DMA API put nvme in a translated domain of its own: the host follows it there.
    const dom = s.host.domains.find((d) => d.endpoints.includes(ep.endpoint));
    assert.ok(dom, `nvme is in no host domain: ${JSON.stringify(s)}`);
    assert.equal(ep.target, `domain ${dom.id}`);
    assert.ok(s.host.stats.maps > 0 && s.host.stats.unmaps > 0, JSON.stringify(s.host.stats));
    assert.ok(s.host.stats.hostMaps >= s.host.stats.maps, JSON.stringify(s.host.stats));
    const guestDom = s.domains.find((d) => d.id === dom.id);
    assert.equal(guestDom?.mappings, dom.mappings, 'the device model and the host agree on the mappings');
    console.log(`# ${backend} ${mode}: ${JSON.stringify(s.host.stats)}; requests ${JSON.stringify(s.requests)}`);

    // system_reset: the host side is back to bypass, with no domain left, before the guest runs again.
    await q.cmd('stop');
    assert.deepEqual(await q.cmd('system_reset'), { return: {} });
    const r = (await q.cmd('x-query-viommu')).return as ViommuState;
    assert.deepEqual(r.host.domains, [], JSON.stringify(r));
    assert.deepEqual(
      r.host.endpoints.map((e) => e.target),
      ['bypass'],
    );
    assert.deepEqual(r.domains, []);
    await q.cmd('quit');
    q.sock.destroy();
    await vm.exited;
  } finally {
    if (vm.vmm.exitCode === null) vm.vmm.kill('SIGKILL');
  }
}

/** The guest's own VFIO behind the virtio-iommu: vfio-edu maps a buffer, edu DMAs both ways with MSI; a DMA to an unmapped IOVA is stopped by the host IOMMU, the buffer unchanged, tsvmm running. */
export async function guestVfioBehindViommu(backend: Backend): Promise<void> {
  const edu = hostDevice('edu');
  const script = [
    'vfio-edu -B -t type1 -U ok',
    'echo "ok status $?"',
    'vfio-edu -t type1 -U unmapped',
    'echo "unmapped status $?"',
    'vfio-edu -t type1 -U ok',
    'echo "again status $?"',
    ...GUEST_IOMMU_LINES,
    'echo "viommu: done"',
    'while true; do sleep 10; done',
  ].join('\n');
  const cfg = sampleConfig('linux', (c) => {
    c.iommu = { type: 'virtio' };
    c.vfio = { backend };
    c.devices = [{ type: 'vfio-pci', id: 'edu', host: edu.bdf, iommu: true }];
    c.kernel.initramfs.script = script;
    c.kernel.initramfs.programs = ['vfio-edu'];
    c.kernel.initramfs.modules = guestModulesWith(
      linuxKernel().modules,
      GUEST_VFIO_MODULES,
      process.env.TSVMM_TESTHOST_RUN_DIR!,
    );
  });
  const before = kernelLog().split('\n').length;
  const vm = start(cfg);
  try {
    await vm.seen(/^viommu: done\r?$/m, 300_000);
    const out = vm.io.out;
    assert.match(out, /^vfio-edu ok dma bytes=1024 iova=0x[0-9a-f]+ iommu=type1 irq=msi irqs=2\r?$/m, vm.log());
    assert.match(out, /^ok status 0\r?$/m, vm.log());
    assert.match(
      out,
      /^vfio-edu ok unmapped iova=0x[0-9a-f]+ bytes=1024 buffer-unchanged=1 dma-status=done irq=msi after=ok\r?$/m,
      vm.log(),
    );
    assert.match(out, /^unmapped status 0\r?$/m, vm.log());
    assert.match(out, /^again status 0\r?$/m, vm.log());
    const iova = /^vfio-edu ok unmapped iova=(0x[0-9a-f]+)/m.exec(out)![1]!;
    // The guest's type1 owns edu now: its group is the virtio-iommu's.
    const viommu = /^virtio-iommu: (\S+?)\r?$/m.exec(out)?.[1];
    assert.ok(viommu, vm.log());
    assert.match(out, new RegExp(`^iommu-group: \\S+ 0x1234:0x11e8 group=\\d+ iommu=${viommu}\\r?$`, 'm'), vm.log());

    const q = await vm.qmp();
    assert.equal((await q.cmd('query-status')).return.status, 'running', 'tsvmm runs on after the fault');
    const s = (await q.cmd('x-query-viommu')).return as ViommuState;
    assert.ok(s.host.stats.maps > 0 && s.host.stats.unmaps > 0, JSON.stringify(s.host.stats));
    assert.deepEqual(
      s.host.endpoints.map((e) => e.backend),
      [backend],
    );
    await q.cmd('quit');
    q.sock.destroy();
    await vm.exited;
    // The guest never mapped the IOVA, so neither did tsvmm in edu's container: the test host's IOMMU faulted.
    const added = kernelLog()
      .split('\n')
      .slice(before - 1)
      .join('\n');
    assert.match(
      added,
      new RegExp(`DMAR.*fault addr ${iova}`),
      `no DMAR fault for iova ${iova} in the kernel log:\n${added}`,
    );
  } finally {
    if (vm.vmm.exitCode === null) vm.vmm.kill('SIGKILL');
  }
}

/** Hot-plug behind the virtio-iommu: nvme added by device_add iommu=on into a running guest is translated and reads right; device_del releases its pins and fds. */
export async function hotplugBehindViommu(backend: Backend): Promise<void> {
  const nvme = hostDevice('nvme');
  const want = process.env.TSVMM_TESTHOST_NVME_SHA256!,
    bytes = process.env.TSVMM_TESTHOST_NVME_BYTES!;
  const script = [
    'echo "hotplug: ready"',
    'while [ ! -b /dev/nvme0n1 ]; do sleep 1; done',
    `echo "read: $(head -c ${bytes} /dev/nvme0n1 | sha256sum)"`,
    'echo "nvme-dev: $(basename $(readlink /sys/class/nvme/nvme0/device))"',
    ...GUEST_IOMMU_LINES,
    'echo "viommu: read"',
    'while [ -e /dev/nvme0n1 ]; do sleep 1; done',
    'echo "hotplug: removed"',
    'while true; do sleep 10; done',
  ].join('\n');
  const cfg = sampleConfig('linux-nvme', (c) => {
    c.iommu = { type: 'virtio' };
    c.vfio = { backend };
    c.devices = [];
    c.kernel.initramfs.script = script;
  });
  const vm = start(cfg);
  try {
    await vm.seen(/^hotplug: ready\r?$/m, 300_000);
    const q = await vm.qmp();
    // iommufd charges pins to the process's pinned_vm, type1 to its locked_vm.
    const pinned = (pid: number) => (backend === 'legacy' ? lockedBytes(pid) : pinnedBytes(pid));
    const base = pinned(vm.vmm.pid!);
    assert.deepEqual(
      await q.cmd('device_add', { driver: 'vfio-pci', id: 'nvme', host: nvme.bdf, iommu: 'on', backend }),
      {
        return: {},
      },
    );
    await vm.seen(/^viommu: read\r?$/m, 200_000);
    const out = vm.io.out;
    assert.equal(/^read: ([0-9a-f]{64})\b/m.exec(out)?.[1], want, vm.log());
    const viommu = /^virtio-iommu: (\S+?)\r?$/m.exec(out)?.[1];
    const bdf = /^nvme-dev: (\S+?)\r?$/m.exec(out)?.[1];
    assert.ok(viommu && bdf, vm.log());
    assert.match(out, new RegExp(`^iommu-group: ${bdf} \\S+ group=\\d+ iommu=${viommu}\\r?$`, 'm'), vm.log());
    const s = (await q.cmd('x-query-viommu')).return as ViommuState;
    assert.equal(s.host.endpoints.length, 1, JSON.stringify(s));
    assert.equal(s.host.endpoints[0]!.backend, backend);
    assert.match(s.host.endpoints[0]!.target, /^domain \d+$/, JSON.stringify(s));
    assert.ok(s.host.stats.maps > 0, JSON.stringify(s.host.stats));

    assert.deepEqual(await q.cmd('device_del', { id: 'nvme' }), { return: {} });
    await q.event('DEVICE_DELETED', 60_000);
    await vm.seen(/^hotplug: removed\r?$/m);
    await vm.until(() => pinned(vm.vmm.pid!) === base, 'pinned memory released');
    // /dev/iommu stays open for the next device (as without a vIOMMU); group, container and device fds go.
    assert.deepEqual(
      vmmFds(vm.vmm.pid!).filter((l) => l !== '/dev/iommu'),
      [],
      'no VFIO fd left',
    );
    const after = (await q.cmd('x-query-viommu')).return as ViommuState;
    assert.deepEqual(after.host.endpoints, []);
    assert.deepEqual(after.host.domains, [], 'the guest domain went with its last endpoint');
    await q.cmd('quit');
    q.sock.destroy();
    await vm.exited;
  } finally {
    if (vm.vmm.exitCode === null) vm.vmm.kill('SIGKILL');
  }
}

/** e1000e behind the virtio-iommu: DHCP from the test host's user network and a ping of its server, through the guest's domain. */
export async function e1000eBehindViommu(backend: Backend): Promise<void> {
  const nic = hostDevice('e1000e');
  // busybox udhcpc with a script of ours (there is no default one in the initramfs); QEMU's user network answers.
  const script = [
    'IF=; for n in /sys/class/net/*; do [ "$(basename "$(readlink $n/device/driver)")" = e1000e ] && IF=${n##*/}; done',
    'echo "iface: $IF"',
    'ip link set "$IF" up',
    `printf '#!/bin/sh\\necho "dhcp: $1 ip=$ip router=$router"\\n[ "$1" = bound ] && ip addr add $ip/$mask dev $interface\\nexit 0\\n' > /tmp/dhcp.sh`,
    'chmod +x /tmp/dhcp.sh',
    'udhcpc -i "$IF" -n -q -t 10 -T 2 -s /tmp/dhcp.sh',
    'ping -c 3 -W 5 10.0.2.2 | sed "s/^/ping: /"',
    ...GUEST_IOMMU_LINES,
    'echo "nic-dev: $(basename $(readlink /sys/class/net/$IF/device))"',
    'echo "viommu: done"',
    'while true; do sleep 10; done',
  ].join('\n');
  const cfg = sampleConfig('linux-e1000e', (c) => {
    c.iommu = { type: 'virtio' };
    c.vfio = { backend };
    c.devices = [{ type: 'vfio-pci', id: 'e1000e', host: nic.bdf, iommu: true }];
    c.kernel.initramfs.script = script;
  });
  const vm = start(cfg);
  try {
    await vm.seen(/^viommu: done\r?$/m, 300_000);
    const out = vm.io.out;
    // QEMU's restricted user network leases an address (no router: it forwards nothing) and answers pings.
    assert.match(out, /^dhcp: bound ip=10\.0\.2\.\d+ /m, vm.log());
    assert.match(out, /^udhcpc: lease of 10\.0\.2\.\d+ obtained from 10\.0\.2\.2/m, vm.log());
    assert.match(out, /^ping: 3 packets transmitted, 3 (packets )?received/m, vm.log());
    const viommu = /^virtio-iommu: (\S+?)\r?$/m.exec(out)?.[1];
    const bdf = /^nic-dev: (\S+?)\r?$/m.exec(out)?.[1];
    assert.ok(viommu && bdf, vm.log());
    assert.match(out, new RegExp(`^iommu-group: ${bdf} \\S+ group=\\d+ iommu=${viommu}\\r?$`, 'm'), vm.log());
    const q = await vm.qmp();
    const s = (await q.cmd('x-query-viommu')).return as ViommuState;
    assert.match(s.host.endpoints[0]?.target ?? '', /^domain \d+$/, JSON.stringify(s));
    assert.ok(s.host.stats.maps > 0, JSON.stringify(s.host.stats));
    await q.cmd('quit');
    q.sock.destroy();
    await vm.exited;
  } finally {
    if (vm.vmm.exitCode === null) vm.vmm.kill('SIGKILL');
  }
}

/**
 * The bridge pair (edu and pci-testdev: two devices of one host IOMMU group) behind the virtio-iommu. tsvmm puts them
 * in one guest slot as functions 0 and 1 (no ACS), so the guest groups them as the host does and gives the group one
 * domain. The guest's own VFIO then moves the group one device at a time (Linux attaches each device of a group in
 * turn: the blocking domain, then type1's domain, and back at the end): the host group follows the domain that holds
 * mappings while the functions are apart, and is whole in the guest's domain when they are together; vfio-edu's DMA
 * goes both ways through it. A split with mappings on both sides is refused (test/helpers/viommu-edu.ts, the unit tests).
 */
export async function bridgePairBehindViommu(backend: Backend): Promise<void> {
  const edu = hostDevice('bridge-edu'),
    testdev = hostDevice('bridge-testdev');
  const script = [
    // Linux 6.12 gives a device its IOMMU group when a driver binds it: both get vfio-pci, as a guest handing the
    // whole group to a userspace driver does.
    'for d in /sys/bus/pci/devices/*; do case "$(cat $d/vendor):$(cat $d/device)" in 0x1234:0x11e8|0x1b36:0x0005)',
    '  echo vfio-pci > $d/driver_override; echo $(basename $d) > /sys/bus/pci/drivers_probe;; esac; done',
    ...GUEST_IOMMU_LINES,
    'echo "viommu: grouped"',
    // Twice: the group goes to VFIO's domain and back to its default domain each time.
    'vfio-edu -t type1 -U ok',
    'echo "ok status $?"',
    'vfio-edu -t type1 -U ok',
    'echo "again status $?"',
    'echo "viommu: done"',
    'while true; do sleep 10; done',
  ].join('\n');
  const cfg = sampleConfig('linux', (c) => {
    c.iommu = { type: 'virtio' };
    c.vfio = { backend };
    c.devices = [
      { type: 'vfio-pci', id: 'bedu', host: edu.bdf, iommu: true },
      { type: 'vfio-pci', id: 'btest', host: testdev.bdf, iommu: true },
    ];
    c.kernel.initramfs.script = script;
    c.kernel.initramfs.programs = ['vfio-edu'];
    c.kernel.initramfs.modules = guestModulesWith(
      linuxKernel().modules,
      GUEST_VFIO_MODULES,
      process.env.TSVMM_TESTHOST_RUN_DIR!,
    );
  });
  const vm = start(cfg);
  try {
    await vm.seen(/^viommu: grouped\r?$/m, 300_000);
    const q = await vm.qmp();
    const targets = (s: ViommuState) => s.host.endpoints.map((x) => x.target);
    // The guest may still be placing the group's functions (one at a time) when its script goes on: the group is
    // whole in one domain within a few seconds, or this fails with the first and the last state seen.
    const first = (await q.cmd('x-query-viommu')).return as ViommuState;
    let before = first;
    for (let end = Date.now() + 30_000; targets(before)[0] !== targets(before)[1] && Date.now() < end; ) {
      await new Promise((r) => setTimeout(r, 200));
      before = (await q.cmd('x-query-viommu')).return as ViommuState;
    }
    assert.equal(targets(before).length, 2, JSON.stringify(before));
    assert.match(targets(before)[0]!, /^domain \d+$/, JSON.stringify(before));
    assert.equal(
      targets(before)[1],
      targets(before)[0],
      `one domain for the group: first ${JSON.stringify(first)}, last ${JSON.stringify(before)}`,
    );

    await vm.seen(/^viommu: done\r?$/m, 120_000);
    const out = vm.io.out;
    const viommu = /^virtio-iommu: (\S+?)\r?$/m.exec(out)?.[1];
    assert.ok(viommu, vm.log());
    const line = (id: string) =>
      new RegExp(`^iommu-group: 0000:00:([0-9a-f]{2})\\.(\\d) ${id} group=(\\d+) iommu=(\\S+?)\\r?$`, 'm').exec(out);
    const e = line('0x1234:0x11e8'),
      t = line('0x1b36:0x0005');
    assert.ok(e && t, `both functions in an IOMMU group\n${vm.log()}`);
    assert.equal(e[1], t[1], 'one slot');
    assert.deepEqual([e[2], t[2]], ['0', '1'], 'functions 0 and 1');
    assert.equal(e[3], t[3], `one guest IOMMU group\n${vm.log()}`);
    assert.deepEqual([e[4], t[4]], [viommu, viommu]);
    // The guest's VFIO moved the group, one function at a time, to its own domain and back, twice: edu's DMA went
    // both ways through the guest's mapping, and nothing was refused on the way.
    assert.match(out, /^vfio-edu ok dma bytes=1024 iova=0x[0-9a-f]+ iommu=type1 irq=msi irqs=2\r?$/m, vm.log());
    assert.match(out, /^ok status 0\r?$/m, vm.log());
    assert.match(out, /^again status 0\r?$/m, vm.log());
    assert.doesNotMatch(vm.io.err, /cannot be split/, vm.log());
    const after = (await q.cmd('x-query-viommu')).return as ViommuState;
    assert.equal(after.host.stats.refused, 0, JSON.stringify(after.host.stats));
    const { maps, unmaps, moves } = after.host.stats;
    assert.ok(maps > 0 && unmaps > 0, `vfio-edu's maps and unmaps reached the host: ${JSON.stringify(after)}`);
    // Each run moves the host group four times (to the blocking domain, type1's, the blocking one again, the default
    // domain), each when the last function got there or the first mapping came.
    assert.ok(moves >= 8, JSON.stringify(after.host.stats));
    // Back in one domain, and the host group is there with it: whole.
    assert.match(targets(after)[0]!, /^domain \d+$/, JSON.stringify(after));
    assert.equal(targets(after)[0], targets(after)[1], `the group is whole: ${JSON.stringify(after)}`);
    const group = after.host.groups.find((g) => g.members.includes(edu.bdf));
    assert.ok(group && group.members.includes(testdev.bdf), JSON.stringify(after));
    assert.equal(group.host, targets(after)[0], `the host group follows it: ${JSON.stringify(after)}`);
    console.log(`# ${backend} bridge pair: ${JSON.stringify(after.host.stats)}`);
    assert.equal((await q.cmd('query-status')).return.status, 'running');
    await q.cmd('quit');
    q.sock.destroy();
    await vm.exited;
  } finally {
    if (vm.vmm.exitCode === null) vm.vmm.kill('SIGKILL');
  }
}
