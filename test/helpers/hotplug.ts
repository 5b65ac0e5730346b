// QMP hot-plug against the real kernel (a helper for the host suites): a running tsvmm VM gets
// edu through getfd (the group fd, or cdev + /dev/iommu, in SCM_RIGHTS) + device_add, the guest finds and uses it, device_del removes it with
// DEVICE_DELETED, and the kernel shows everything released (VmLck, /proc/<pid>/fd). The QMP
// client is raw JSON lines per the QMP spec (no QMP client library is packaged for Node).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hostDevice } from './testhost-env.js';
import { projectRoot } from '../../core/paths.js';
import { native } from '../../core/native.js';
import { lockedBytes, pinnedBytes } from '../../core/vfio/limits.js';

type Msg = Record<string, any>;

export class RawQmp {
  private buf = '';
  private readonly queue: Msg[] = [];
  private waiters: (() => void)[] = [];
  readonly events: Msg[] = [];
  private constructor(readonly sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.buf += d;
      let i;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const m = JSON.parse(this.buf.slice(0, i)) as Msg;
        this.buf = this.buf.slice(i + 1);
        if (m.event) this.events.push(m);
        else this.queue.push(m);
        for (const w of this.waiters.splice(0)) w();
      }
    });
  }
  static open(path: string): Promise<RawQmp> {
    return new Promise((res, rej) => {
      const s = connect(path, () => res(new RawQmp(s)));
      s.once('error', rej);
    });
  }
  async next(): Promise<Msg> {
    while (!this.queue.length) await new Promise<void>((r) => this.waiters.push(r));
    return this.queue.shift()!;
  }
  /** Sends one command; `fds` ride along in SCM_RIGHTS on the same message. */
  async cmd(execute: string, args?: object, fds: number[] = []): Promise<Msg> {
    const line = Buffer.from(JSON.stringify({ execute, ...(args ? { arguments: args } : {}) }) + '\n');
    const fd = (this.sock as unknown as { _handle: { fd: number } })._handle.fd;
    native().sendFds(fd, line, fds);
    return this.next();
  }
  async event(name: string, timeoutMs = 10000): Promise<Msg> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const e = this.events.find((x) => x.event === name);
      if (e) return e;
      if (Date.now() > end) throw new Error(`no ${name} event (got ${this.events.map((x) => x.event).join(', ')})`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/**
 * `tsvmm run <config> --qmp <socket>` as a child process (the socket in a tmpfs: 9p cannot hold
 * one): its serial output and stderr, a wait for a pattern or a condition, and a QMP client
 * past negotiation.
 */
export function spawnVm(config: string, env: NodeJS.ProcessEnv = process.env) {
  const sock = join(mkdtempSync(join(tmpdir(), 'tsvmm-qmp-')), 'qmp.sock');
  const vmm = spawn(process.execPath, [join(projectRoot, 'dist/bin/tsvmm.cjs'), 'run', config, '--qmp', sock], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const io = { out: '', err: '' };
  vmm.stdout.on('data', (d) => {
    io.out += d;
  });
  vmm.stderr.on('data', (d) => {
    io.err += d;
  });
  const exited = new Promise<number | null>((r) => vmm.on('exit', (c) => r(c)));
  const log = () => `${io.out}\n--- stderr ---\n${io.err}`;
  /** Serial lines equal to `line`. */
  const count = (line: string) => io.out.split('\n').filter((l) => l === line).length;
  const until = async (ok: () => boolean, what: string, timeoutMs = 60_000) => {
    const t0 = Date.now();
    while (!ok()) {
      if (vmm.exitCode !== null || Date.now() - t0 > timeoutMs)
        assert.fail(`${what} (exit ${vmm.exitCode}):\n${log()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const seen = async (re: RegExp, timeoutMs = 120_000) => {
    await until(() => re.test(io.out), `guest never printed ${re}`, timeoutMs);
    return re.exec(io.out)!;
  };
  const qmp = async () => {
    const q = await RawQmp.open(sock);
    assert.ok((await q.next()).QMP, 'greeting');
    assert.deepEqual(await q.cmd('qmp_capabilities'), { return: {} });
    return q;
  };
  return { vmm, io, exited, log, count, until, seen, qmp };
}

/** The VMM's VFIO and iommufd fds, from /proc/<pid>/fd. */
export function vmmFds(pid: number): string[] {
  const out: string[] = [];
  for (const f of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const l = readlinkSync(`/proc/${pid}/fd/${f}`);
      if (l.startsWith('/dev/vfio/') || l === '/dev/iommu') out.push(l);
    } catch {
      /* closed meanwhile */
    }
  }
  return out.sort();
}

/** The hot-plug acceptance, on either backend: legacy passes the group fd, iommufd the cdev and /dev/iommu. */
export async function hotplugScenario(backend: 'legacy' | 'iommufd'): Promise<void> {
  const pinned = (pid: number) => (backend === 'legacy' ? lockedBytes(pid) : pinnedBytes(pid));
  const edu = hostDevice('edu');
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-hotplug-'));
  const cfg = join(dir, 'vm.json'),
    sock = join(dir, 'qmp.sock');
  writeFileSync(
    cfg,
    JSON.stringify({
      memory: 64,
      kernel: { path: join(projectRoot, 'guest/out/tsvmm-guest.elf') },
      cmdline: 'test=hotplug dev=1234:11e8 dma=1 msi=2 intx=2',
    }),
  );
  const vmm = spawn(process.execPath, [join(projectRoot, 'dist/bin/tsvmm.cjs'), 'run', cfg, '--qmp', sock], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '',
    err = '';
  const seen = (re: RegExp, timeoutMs = 60000) =>
    new Promise<void>((res, rej) => {
      const t0 = Date.now();
      const tick = () =>
        re.test(out)
          ? res()
          : Date.now() - t0 > timeoutMs
            ? rej(new Error(`guest never printed ${re}:\n${out}\n${err}`))
            : setTimeout(tick, 20);
      tick();
    });
  vmm.stdout.on('data', (d) => {
    out += d;
  });
  vmm.stderr.on('data', (d) => {
    err += d;
  });
  const exited = new Promise<number | null>((r) => vmm.on('exit', (c) => r(c)));
  try {
    await seen(/hotplug ready/);
    const q = await RawQmp.open(sock);
    assert.ok((await q.next()).QMP, 'greeting');
    assert.deepEqual(await q.cmd('qmp_capabilities'), { return: {} });
    assert.equal(pinned(vmm.pid!), 0, 'nothing pinned before the device comes');
    assert.deepEqual(vmmFds(vmm.pid!), []);
    // All that follows (getfd, device_add's VFIO set-up, the guest's use, device_del) runs in the sandbox.
    assert.match(readFileSync(`/proc/${vmm.pid}/status`, 'utf8'), /^Seccomp:\s*2$/m, 'the VMM runs sandboxed');

    // Bad input first: each is a QMP error, and the VM keeps running.
    assert.equal((await q.cmd('getfd', { fdname: 'edu' })).error.desc, 'No file descriptor supplied via SCM_RIGHTS');
    assert.match(
      (await q.cmd('device_add', { driver: 'vfio-pci', id: 'x', fd: 'nope' })).error.desc,
      /File descriptor named 'nope' has not been found/,
    );
    assert.match(
      (await q.cmd('device_add', { driver: 'e1000', id: 'x', host: edu.bdf })).error.desc,
      /'e1000' is not a valid device model name/,
    );
    assert.equal((await q.cmd('device_del', { id: 'nope' })).error.class, 'DeviceNotFound');
    const kvm = openSync('/dev/kvm', 'r+');
    assert.deepEqual(await q.cmd('getfd', { fdname: 'notvfio' }, [kvm]), { return: {} });
    closeSync(kvm);
    assert.match(
      (await q.cmd('device_add', { driver: 'vfio-pci', id: 'x', fd: 'notvfio' })).error.desc,
      /should be a VFIO device cdev/,
    );
    assert.equal(pinned(vmm.pid!), 0);

    // The fds, opened here (the manager's role), travel with getfd.
    const pass = async (name: string, path: string) => {
      const fd = openSync(path, 'r+');
      assert.deepEqual(await q.cmd('getfd', { fdname: name }, [fd]), { return: {} });
      closeSync(fd);
    };
    if (backend === 'legacy') {
      await pass('edu-fd', `/dev/vfio/${edu.group}`);
      assert.deepEqual(await q.cmd('device_add', { driver: 'vfio-pci', id: 'hotedu', host: edu.bdf, fd: 'edu-fd' }), {
        return: {},
      });
    } else {
      await pass('edu-fd', edu.vfioCdev!);
      await pass('iommu', '/dev/iommu');
      // The cdev names the device: no host= needed.
      assert.deepEqual(
        await q.cmd('device_add', { driver: 'vfio-pci', id: 'hotedu', fd: 'edu-fd', iommufd: 'iommu' }),
        { return: {} },
      );
    }
    assert.ok(pinned(vmm.pid!) >= 64 * 2 ** 20, `guest RAM pinned for the new device (${pinned(vmm.pid!)})`);
    const want = backend === 'legacy' ? `/dev/vfio/${edu.group}` : edu.vfioCdev!;
    assert.ok(vmmFds(vmm.pid!).includes(want), vmmFds(vmm.pid!).join(' '));
    if (backend === 'iommufd') assert.ok(vmmFds(vmm.pid!).includes('/dev/iommu'));
    const pci = (await q.cmd('query-pci')).return[0].devices as Msg[];
    assert.ok(
      pci.some((d) => d.qdev_id === 'hotedu' && d.id.vendor === 0x1234 && d.id.device === 0x11e8),
      JSON.stringify(pci),
    );
    assert.match(
      (await q.cmd('device_add', { driver: 'vfio-pci', id: 'hotedu', host: edu.bdf })).error.desc,
      /exists already/,
    );

    await seen(/hotplug used rc=\d+/);
    for (const t of ['edu-id', 'edu-liveness', 'edu-factorial', 'edu-dma', 'edu-msi', 'edu-intx'])
      assert.match(out, new RegExp(`^PASS ${t}$`, 'm'), out);
    assert.match(out, /^hotplug used rc=0$/m);

    assert.deepEqual(await q.cmd('device_del', { id: 'hotedu' }), { return: {} });
    const ev = await q.event('DEVICE_DELETED');
    assert.deepEqual(ev.data, { device: 'hotedu', path: '/machine/peripheral/hotedu' });
    // The kernel's view: no pinned pages, no VFIO fd (group, container, device) left.
    assert.equal(pinned(vmm.pid!), 0, 'DMA mappings released');
    assert.deepEqual(
      vmmFds(vmm.pid!).filter((l) => l !== '/dev/iommu'),
      [],
      'group, container and device fds closed',
    );
    await seen(/^hotplug gone$/m);
    assert.equal(await exited, 0, `${out}\n${err}`);
    q.sock.destroy();
  } finally {
    if (vmm.exitCode === null) vmm.kill('SIGKILL');
  }
}
