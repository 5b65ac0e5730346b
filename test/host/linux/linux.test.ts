// Runs INSIDE the test host: an unmodified Debian kernel booted by tsvmm (bzImage, 64-bit entry,
// ACPI + MP tables, tiny busybox initramfs), its own nvme and e1000e drivers driving the devices
// the host passes through with VFIO, QEMU booting the same guest for comparison, and a VMM killed
// in the middle of nvme reads leaving nothing behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hostDevice } from '../../helpers/testhost-env.js';
import { innerQemuArgs } from '../../../testhost/qemu.js';
import { cli, describe, linuxEnv, linuxKernel, parseInterrupts, sampleConfig, tsvmmRun } from '../../helpers/linux.js';
import { RawQmp } from '../../helpers/hotplug.js';
import { lockedBytes } from '../../../core/vfio/limits.js';
import { buildInitramfs } from '../../../machine/loader/initramfs.js';
import { PCI_INTX_GSI_BASE } from '../../../machine/board.js';

const POWERED_OFF = /guest powered off \(ACPI S5\)/;

test(
  'Linux boots to its init, prints uname -r over serial, powers off: tsvmm run exits 0',
  { timeout: 240_000 },
  async () => {
    const k = linuxKernel();
    const r = await tsvmmRun(sampleConfig('linux'));
    assert.equal(r.code, 0, describe(r));
    assert.match(r.stderr, POWERED_OFF, `the guest did not power off through ACPI\n${describe(r)}`);
    assert.ok(r.stdout.split(/\r?\n/).includes(k.version), `uname -r (${k.version}) not printed\n${describe(r)}`);
    assert.match(r.stdout, /tsvmm-init: script exited with status 0/, describe(r));
    console.log(`# linux boot to poweroff: ${(r.ms / 1000).toFixed(1)} s`);
  },
);

/** Reads the whole nvme namespace with Linux's nvme driver; /proc/interrupts before and after. */
function nvmeScript(bytes: string): string {
  return [
    'grep nvme /proc/interrupts | sed "s/^/before: /"',
    'echo 3 > /proc/sys/vm/drop_caches',
    `echo "sha256: $(head -c ${bytes} /dev/nvme0n1 | sha256sum)"`,
    'grep nvme /proc/interrupts | sed "s/^/after: /"',
  ].join('\n');
}

function checkNvmeOutput(out: string, ctx: string, irq: 'msix' | 'intx' = 'msix'): void {
  const want = process.env.TSVMM_TESTHOST_NVME_SHA256;
  assert.ok(want, 'TSVMM_TESTHOST_NVME_SHA256 is not set (the test host has no nvme?)');
  const got = /^sha256: ([0-9a-f]{64})\b/m.exec(out)?.[1];
  assert.equal(got, want, `the guest read a different pattern from /dev/nvme0n1\n${ctx}`);
  const before = parseInterrupts(out, 'before: '),
    after = parseInterrupts(out, 'after: ');
  const io = (l: typeof after) => l.filter((x) => /\bnvme0q[1-9]\d*$/.test(x.name));
  assert.ok(io(after).length > 0, `no nvme I/O queue vector in /proc/interrupts\n${ctx}`);
  if (irq === 'msix')
    for (const v of after) assert.match(v.chip, /^PCI-MSIX-/, `nvme vector ${v.name} is not MSI-X\n${ctx}`);
  // INTx: the one device gets the first INTx GSI; the DSDT's _PRT says so, and Linux routes it there (level: fasteoi).
  else
    for (const v of after)
      assert.match(
        `${v.chip} ${v.name}`,
        new RegExp(`^IO-APIC ${PCI_INTX_GSI_BASE}-fasteoi\\b`),
        `nvme interrupt ${v.name} is not INTx on IOAPIC pin ${PCI_INTX_GSI_BASE}\n${ctx}`,
      );
  const sum = (l: typeof after) => l.reduce((n, x) => n + x.count, 0);
  assert.ok(
    sum(io(after)) > sum(io(before)),
    `nvme I/O vectors did not count during the read (${sum(io(before))} → ${sum(io(after))})\n${ctx}`,
  );
}

test(
  "nvme passthrough: Linux's nvme driver reads the known pattern (sha256 matches) with MSI-X vectors counting",
  { timeout: 240_000 },
  async () => {
    hostDevice('nvme');
    const bytes = process.env.TSVMM_TESTHOST_NVME_BYTES;
    assert.ok(bytes, 'TSVMM_TESTHOST_NVME_BYTES is not set');
    const r = await tsvmmRun(
      sampleConfig('linux-nvme', (c) => {
        c.kernel.initramfs.script = nvmeScript(bytes);
      }),
    );
    assert.equal(r.code, 0, describe(r));
    assert.match(r.stderr, POWERED_OFF, describe(r));
    checkNvmeOutput(r.stdout, describe(r));
    console.log(`# linux nvme: ${(r.ms / 1000).toFixed(1)} s`);
  },
);

test(
  '4 vCPUs: Linux brings up all four CPUs (ACPI MADT, INIT/SIPI) and nvme still reads the pattern',
  { timeout: 300_000 },
  async () => {
    hostDevice('nvme');
    const r = await tsvmmRun(
      sampleConfig('linux-nvme', (c) => {
        c.vcpus = 4;
        c.kernel.initramfs.script = `echo "cpus online: $(grep -c ^processor /proc/cpuinfo)"\n${nvmeScript(process.env.TSVMM_TESTHOST_NVME_BYTES!)}`;
      }),
      { timeoutMs: 280_000 },
    );
    assert.equal(r.code, 0, describe(r));
    assert.match(r.stderr, POWERED_OFF, describe(r));
    assert.match(r.stdout, /^cpus online: 4\r?$/m, `Linux did not see 4 CPUs\n${describe(r)}`);
    checkNvmeOutput(r.stdout, describe(r));
    console.log(`# linux 4 vCPUs nvme: ${(r.ms / 1000).toFixed(1)} s`);
  },
);

test(
  'system_reset of a 2-vCPU Linux guest with nvme: it boots to userspace again, both CPUs come up, nvme reads right, pinned memory unchanged',
  { timeout: 420_000 },
  async () => {
    hostDevice('nvme');
    const want = process.env.TSVMM_TESTHOST_NVME_SHA256!;
    const cfg = sampleConfig('linux-nvme', (c) => {
      c.vcpus = 2;
      c.kernel.initramfs.script = `echo "cpus online: $(grep -c ^processor /proc/cpuinfo)"\necho "sha256: $(head -c ${process.env.TSVMM_TESTHOST_NVME_BYTES} /dev/nvme0n1 | sha256sum)"\necho "userspace ready"\nsleep 100000`;
    });
    // Not in the run dir: a 9p mount takes no Unix sockets.
    const sock = join(mkdtempSync(join(tmpdir(), 'tsvmm-linux-reset-')), 'qmp.sock');
    const child = spawn(process.execPath, [cli, 'run', cfg, '--qmp', sock], {
      env: { ...process.env, ...linuxEnv() },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '',
      err = '';
    child.stdout.on('data', (b: Buffer) => {
      out += b.toString('latin1');
    });
    child.stderr.on('data', (b: Buffer) => {
      err += b.toString();
    });
    let gone = false;
    const exited = new Promise<number | null>((r) =>
      child.on('exit', (c) => {
        gone = true;
        r(c);
      }),
    );
    const count = (re: RegExp) => (out.match(re) ?? []).length;
    const until = async (f: () => boolean, what: string, ms = 180_000) => {
      for (let t = 0; t < ms && !f() && !gone; t += 100) await new Promise((r) => setTimeout(r, 100));
      assert.ok(f(), `${what}\n--- serial ---\n${out}\n--- stderr ---\n${err}`);
    };
    try {
      await until(() => count(/^userspace ready\r?$/gm) === 1, 'the first boot did not reach userspace');
      const q = await RawQmp.open(sock);
      assert.ok((await q.next()).QMP);
      await q.cmd('qmp_capabilities');
      const pinned = lockedBytes(child.pid!);
      assert.ok(pinned > 0, 'no guest memory pinned for nvme');
      assert.deepEqual(await q.cmd('system_reset'), { return: {} });
      await until(
        () => count(/^userspace ready\r?$/gm) === 2,
        'after system_reset the guest did not boot to userspace again',
      );
      assert.equal(count(/^cpus online: 2\r?$/gm), 2, `both boots see 2 CPUs\n${out}`);
      assert.equal(count(new RegExp(`^sha256: ${want}\\b`, 'gm')), 2, `both boots read the nvme pattern\n${out}`);
      assert.equal(lockedBytes(child.pid!), pinned, 'pinned memory changed across the reset');
      assert.doesNotMatch(err, /already|overlap/i, err);
      await q.cmd('quit');
      assert.equal(await exited, 0, err);
    } finally {
      child.kill('SIGKILL');
      await exited;
    }
  },
);

test(
  "pci=nomsi: nvme on INTx, routed by the DSDT's _PRT to its IOAPIC GSI (level, resampled irqfd), reads the pattern",
  { timeout: 240_000 },
  async () => {
    hostDevice('nvme');
    const r = await tsvmmRun(
      sampleConfig('linux-nvme', (c) => {
        c.cmdline += ' pci=nomsi';
        c.kernel.initramfs.script = nvmeScript(process.env.TSVMM_TESTHOST_NVME_BYTES!);
      }),
    );
    assert.equal(r.code, 0, describe(r));
    assert.match(r.stderr, POWERED_OFF, describe(r));
    checkNvmeOutput(r.stdout, describe(r), 'intx');
    console.log(`# linux nvme INTx: ${(r.ms / 1000).toFixed(1)} s`);
  },
);

test(
  'acpi=off pci=nomsi: the MP table alone describes CPUs, IOAPIC and INTx routing; nvme on INTx reads the pattern; reboot through the i8042 exits 0',
  { timeout: 240_000 },
  async () => {
    hostDevice('nvme');
    const r = await tsvmmRun(
      sampleConfig('linux-nvme', (c) => {
        c.cmdline += ' acpi=off pci=nomsi';
        c.kernel.initramfs.script = `${nvmeScript(process.env.TSVMM_TESTHOST_NVME_BYTES!)}\n[ -d /sys/firmware/acpi/tables ] && echo "acpi tables" || echo "no acpi"\ndmesg | grep -i "MP-table" | sed "s/^/dmesg: /"`;
      }),
    );
    assert.equal(r.code, 0, describe(r));
    assert.match(r.stderr, /through the i8042/, `the guest did not reboot through the i8042\n${describe(r)}`);
    assert.match(r.stdout, /^no acpi\r?$/m, describe(r));
    assert.match(r.stdout, /^dmesg: .*found SMP MP-table/m, describe(r));
    checkNvmeOutput(r.stdout, describe(r), 'intx');
    console.log(`# linux acpi=off nvme: ${(r.ms / 1000).toFixed(1)} s`);
  },
);

test(
  "e1000e passthrough: Linux's e1000e probes, allocates MSI-X vectors, the link comes up",
  { timeout: 240_000 },
  async () => {
    hostDevice('e1000e');
    // The interface is whichever netdev the e1000e driver made; state comes from sysfs, after a wait for carrier.
    const script = [
      'IF=; for n in /sys/class/net/*; do [ "$(basename "$(readlink $n/device/driver)")" = e1000e ] && IF=${n##*/}; done',
      'echo "iface: $IF"',
      'ip link set "$IF" up',
      'for i in $(seq 1 20); do [ "$(cat /sys/class/net/$IF/carrier 2>/dev/null)" = 1 ] && break; sleep 0.5; done',
      'echo "operstate: $(cat /sys/class/net/$IF/operstate) carrier: $(cat /sys/class/net/$IF/carrier)"',
      'grep "$IF" /proc/interrupts | sed "s/^/irq: /"',
    ].join('\n');
    const r = await tsvmmRun(
      sampleConfig('linux-e1000e', (c) => {
        c.kernel.initramfs.script = script;
      }),
    );
    assert.equal(r.code, 0, describe(r));
    assert.match(r.stderr, POWERED_OFF, describe(r));
    const iface = /^iface: (\S+)$/m.exec(r.stdout)?.[1];
    assert.ok(iface, `the e1000e driver made no network interface\n${describe(r)}`);
    const state = /^operstate: (\S+) carrier: (\S+)/m.exec(r.stdout);
    assert.ok(state, describe(r));
    assert.equal(state[1], 'up', `operstate\n${describe(r)}`);
    assert.equal(state[2], '1', `carrier\n${describe(r)}`);
    const vectors = parseInterrupts(r.stdout, 'irq: ');
    assert.ok(vectors.length >= 2, `e1000e MSI-X vectors (rx, tx, other) not allocated\n${describe(r)}`);
    for (const v of vectors) assert.match(v.chip, /^PCI-MSIX-/, `${v.name} is not MSI-X\n${describe(r)}`);
    console.log(`# linux e1000e: ${(r.ms / 1000).toFixed(1)} s`);
  },
);

/** Pids with locked or pinned memory (VmLck / VmPin in /proc/PID/status), and who holds /dev/vfio fds. */
function hostState(): { locked: Map<number, string>; vfioHolders: string[] } {
  const locked = new Map<number, string>();
  const vfioHolders: string[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const st = readFileSync(`/proc/${d}/status`, 'utf8');
      const lck = Number(/^VmLck:\s+(\d+)/m.exec(st)?.[1] ?? 0),
        pin = Number(/^VmPin:\s+(\d+)/m.exec(st)?.[1] ?? 0);
      if (lck || pin) locked.set(Number(d), `VmLck ${lck} kB VmPin ${pin} kB (${/^Name:\s+(.*)$/m.exec(st)?.[1]})`);
      for (const fd of readdirSync(`/proc/${d}/fd`)) {
        let target = '';
        try {
          target = readlinkSync(`/proc/${d}/fd/${fd}`);
        } catch {
          continue;
        }
        if (target.startsWith('/dev/vfio/')) vfioHolders.push(`pid ${d} fd ${fd} → ${target}`);
      }
    } catch {
      /* the process went away */
    }
  }
  return { locked, vfioHolders };
}

test(
  'a guest killed mid-I/O (SIGKILL during nvme reads) leaves no pinned memory, no VFIO fds, no processes',
  { timeout: 240_000 },
  async () => {
    const nvme = hostDevice('nvme');
    assert.ok(nvme.vfioGroup, 'nvme has no VFIO group');
    const before = hostState();
    assert.deepEqual(before.vfioHolders, [], 'something holds a VFIO fd before the test');
    const script =
      'echo "reading"\nwhile true; do dd if=/dev/nvme0n1 of=/dev/null bs=64k 2>/dev/null; echo 3 > /proc/sys/vm/drop_caches; echo pass; done';
    let pid = 0,
      killedAt = 0,
      during: ReturnType<typeof hostState> | undefined;
    const r = await tsvmmRun(
      sampleConfig('linux-nvme', (c) => {
        c.kernel.initramfs.script = script;
      }),
      {
        onStdout: (all, child) => {
          pid = child.pid!;
          // A few full passes over the device: the kill lands in the middle of the next ones.
          if (!killedAt && (all.match(/^pass\r?$/gm)?.length ?? 0) >= 2) {
            during = hostState();
            killedAt = performance.now();
            child.kill('SIGKILL');
          }
        },
      },
    );
    assert.ok(killedAt, `the guest never got to its reads\n${describe(r)}`);
    assert.equal(r.signal, 'SIGKILL', describe(r));
    // While it ran, the VMM did pin guest RAM and held the group: the checks below can fail.
    assert.ok(
      during!.locked.has(pid),
      `tsvmm (pid ${pid}) had no locked/pinned memory while running: ${[...during!.locked.values()].join('; ')}`,
    );
    assert.ok(
      during!.vfioHolders.some((h) => h.startsWith(`pid ${pid} `)),
      `tsvmm held no /dev/vfio fd while running: ${during!.vfioHolders.join('; ')}`,
    );

    const after = hostState();
    const newLocked = [...after.locked].filter(([p]) => !before.locked.has(p)).map(([p, s]) => `pid ${p}: ${s}`);
    assert.deepEqual(newLocked, [], 'memory still locked/pinned after the kill');
    assert.deepEqual(after.vfioHolders, [], 'VFIO fds still open after the kill');
    assert.ok(!readdirSync('/proc').includes(String(pid)), `pid ${pid} still exists`);
    const children = readdirSync('/proc')
      .filter((d) => /^\d+$/.test(d))
      .filter((d) => {
        try {
          return readFileSync(`/proc/${d}/stat`, 'utf8').split(') ')[1]!.split(' ')[1] === String(pid);
        } catch {
          return false;
        }
      });
    assert.deepEqual(children, [], `processes whose parent was the killed tsvmm (pid ${pid})`);
    // The group is free again: opening it fails with EBUSY while another process holds it.
    const fd = openSync(nvme.vfioGroup, 'r+');
    closeSync(fd);
    console.log(`# killed after ${((killedAt - (performance.now() - r.ms)) / 1000).toFixed(1)} s of running`);
  },
);

test(
  'the same Linux guest under QEMU (-accel kvm, vfio-pci nvme) reads the same pattern (comparison)',
  { timeout: 300_000 },
  async () => {
    const nvme = hostDevice('nvme');
    const k = linuxKernel();
    const bytes = process.env.TSVMM_TESTHOST_NVME_BYTES!;
    const initrd = join(process.env.TSVMM_TESTHOST_RUN_DIR!, `qemu-initramfs-${process.pid}.cpio`);
    writeFileSync(initrd, buildInitramfs({ script: nvmeScript(bytes), modulesDir: k.modules }));
    const args = [
      ...innerQemuArgs({ memMiB: 256 }),
      '-no-reboot',
      '-kernel',
      k.image,
      '-initrd',
      initrd,
      '-append',
      'console=ttyS0 quiet',
      '-device',
      `vfio-pci,host=${nvme.bdf}`,
    ];
    const t0 = performance.now();
    const child = spawn('/bin/sh', ['-c', 'ulimit -l unlimited && exec qemu-system-x86_64 "$@"', 'sh', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '',
      err = '';
    child.stdout.on('data', (b: Buffer) => {
      out += b.toString('latin1');
    });
    child.stderr.on('data', (b: Buffer) => {
      err += b.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 240_000);
    const code = await new Promise<number | null>((res) => child.on('close', (c) => res(c)));
    clearTimeout(timer);
    const ctx = `QEMU exit ${code}\n--- serial ---\n${out}\n--- qemu stderr ---\n${err}`;
    assert.equal(code, 0, ctx);
    checkNvmeOutput(out, ctx);
    console.log(`# QEMU linux nvme: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  },
);
