// Whole VMs with an assigned device that migrates (test host, iommufd kernel, devices edu and
// nvme): the multiboot test guest streams a running sequence through an mtty mdev (test=mtty-stream:
// 8 bytes always in mtty's FIFO), the VM is saved to a file and restored in a new process on a
// second mtty instance, or migrated live over a unix socket between two tsvmm processes (PRE_COPY
// data goes while the guest runs); the sequence goes on with no byte lost. A destination that
// drops the stream leaves the source running with its mtty usable (migrated again right after);
// nvme (no migration driver) is a blocker that names it.
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { projectRoot } from '../../../core/paths.js';
import { guestPaths } from '../../../guest/index.js';
import { createMdev, removeMdev, type Mdev } from '../../../core/vfio/mdev.js';
import { withMdevs } from '../../helpers/mdev.js';
import type { VfioBackendKind } from '../../../core/vfio/vfio.js';
import { QmpTestClient } from '../../helpers/qmp.js';
import { hostDevice } from '../../helpers/testhost-env.js';

const cli = join(projectRoot, 'dist/bin/tsvmm.cjs');
const dir = mkdtempSync(join(tmpdir(), 'tsvmm-vfio-mig-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

const WAIT = 240_000;

function args(m: Mdev, backend: VfioBackendKind, cmdline = 'test=mtty-stream'): string[] {
  return [
    '--memory',
    '32M',
    '--kernel',
    guestPaths().elf,
    '--cmdline',
    cmdline,
    '--serial',
    'stdio',
    '--device',
    `vfio-pci,sysfsdev=${m.path},id=tty0,backend=${backend}`,
  ];
}

/** Every tsvmm a test started is gone after it, whatever failed (a live child keeps the runner alive). */
const children = new Set<ChildProcess>();
afterEach(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  children.clear();
});

function runChild(a: string[]): { child: ChildProcess; out: () => string; err: () => string } {
  const child = spawn(process.execPath, [cli, 'run', ...a], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let out = '',
    err = '';
  child.stdout!.setEncoding('latin1').on('data', (c: string) => (out += c));
  child.stderr!.setEncoding('utf8').on('data', (c: string) => (err += c));
  return { child, out: () => out, err: () => err };
}

async function until(what: string, f: () => boolean, ms = WAIT): Promise<void> {
  for (const end = Date.now() + ms; !f(); ) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The sequence positions the guest printed (whole lines). */
const seqs = (s: string) => [...s.matchAll(/^mtty seq (\d+)\n/gm)].map((x) => Number(x[1]));

/** Every 64th byte once, in order: nothing lost or repeated (a FIFO byte lost fails the guest itself). */
function assertSequence(values: number[], what: string): void {
  assert.ok(values.length > 0, `${what}: no sequence`);
  for (let i = 1; i < values.length; i++)
    assert.equal(values[i], values[i - 1]! + 64, `${what}: ${values[i - 1]} then ${values[i]}`);
}

async function qmp(sock: string): Promise<QmpTestClient> {
  const q = await QmpTestClient.connect(sock);
  await q.next();
  await q.call('qmp_capabilities');
  return q;
}

async function migrationEnd(q: QmpTestClient): Promise<string> {
  for (;;) {
    const m = q.events.shift() ?? (await q.next(WAIT));
    if (m.event !== 'MIGRATION') continue;
    const s = (m.data as { status: string }).status;
    if (['completed', 'failed', 'cancelled'].includes(s)) return s;
  }
}

async function stop(c: { child: ChildProcess }): Promise<void> {
  if (c.child.exitCode !== null || c.child.signalCode !== null) return;
  c.child.kill('SIGTERM');
  await once(c.child, 'exit');
}

/** Source streaming, migrated to `uri` (a destination already waiting there, or a file). */
async function migrateOut(
  m: Mdev,
  backend: VfioBackendKind,
  uri: string,
  name: string,
): Promise<{ src: ReturnType<typeof runChild>; q: QmpTestClient; info: Record<string, unknown> }> {
  const sock = join(dir, `${name}.qmp`);
  // The sandbox lets a running VMM open no socket: a unix: migration needs it off (docs/migration.md).
  const src = runChild([...args(m, backend), '--qmp', sock, '--sandbox', 'off']);
  await until('the source to stream through mtty', () => seqs(src.out()).length >= 5);
  const q = await qmp(sock);
  assert.deepEqual(await q.call('migrate', { uri }), { return: {} }, src.err());
  const end = await migrationEnd(q);
  const info = (await q.call('query-migrate')).return as Record<string, unknown>;
  assert.equal(end, 'completed', `${JSON.stringify(info)}\n${src.err()}`);
  return { src, q, info };
}

async function snapshotRestore(from: VfioBackendKind, to: VfioBackendKind): Promise<void> {
  await withMdevs(2, async ([a, b]) => {
    const file = join(dir, `mtty-${from}-${to}.snap`);
    const { src, q, info } = await migrateOut(a!, from, `file:${file}`, `snap-${from}`);
    let dst: ReturnType<typeof runChild> | undefined;
    try {
      const vfio = info.vfio as { transferred: number };
      assert.ok(vfio?.transferred > 0, `mtty's state went in the stream: ${JSON.stringify(info)}`);
      await q.call('quit');
      await once(src.child, 'exit');
      const saved = seqs(src.out());
      dst = runChild([...args(b!, to), '--incoming', `file:${file}`]);
      await until(
        'the restored guest to stream on',
        () => seqs(dst!.out()).length >= 5 || /FAIL/.test(dst!.out()) || dst!.child.exitCode !== null,
      );
      assert.doesNotMatch(dst.out(), /FAIL|tsvmm-guest: start|mtty stream ready/, dst.out() + dst.err());
      const all = seqs(src.out() + dst.out());
      assert.ok(all.length >= saved.length + 5);
      assertSequence(all, `source (${from}) then restored (${to})`);
    } finally {
      src.child.kill('SIGKILL');
      if (dst) await stop(dst);
    }
  });
}

test('mtty saved to a file and restored in a new process on another instance: the stream goes on, no byte lost (iommufd)', () =>
  snapshotRestore('iommufd', 'iommufd'));

test('the same across backends: saved on legacy VFIO, restored on iommufd', () => snapshotRestore('legacy', 'iommufd'));

test('live migration over unix between two tsvmm processes: PRE_COPY data while the guest runs, the stream continues', async () => {
  await withMdevs(2, async ([a, b]) => {
    const path = join(dir, 'live.sock');
    const dstSock = join(dir, 'live-dst.qmp');
    const dst = runChild([...args(b!, 'iommufd'), '--incoming', `unix:${path}`, '--qmp', dstSock]);
    let src: ReturnType<typeof runChild> | undefined;
    try {
      await until('the destination to listen', () => existsSync(path), 60_000);
      const r = await migrateOut(a!, 'iommufd', `unix:${path}`, 'live-src');
      src = r.src;
      const vfio = r.info.vfio as { transferred: number; 'x-precopy-bytes': number };
      assert.ok(
        vfio['x-precopy-bytes'] > 0,
        `mtty's PRE_COPY data went while the guest ran: ${JSON.stringify(r.info)}`,
      );
      assert.ok(vfio.transferred > vfio['x-precopy-bytes'], 'and its final state after the stop');
      await until(
        'the destination to stream on',
        () => seqs(dst.out()).length >= 5 || /FAIL/.test(dst.out()) || dst.child.exitCode !== null,
      );
      assert.doesNotMatch(dst.out(), /FAIL|mtty stream ready/, dst.out() + dst.err());
      const d = await qmp(dstSock);
      assert.equal(((await d.call('query-status')).return as { status: string }).status, 'running');
      assertSequence(seqs(src.out() + dst.out()), 'source then destination');
      await r.q.call('quit');
    } finally {
      src?.child.kill('SIGKILL');
      await stop(dst);
    }
  });
});

test('a destination that drops the stream: the source runs on, its mtty back in RUNNING and used, and migrates again', async () => {
  await withMdevs(1, async ([a]) => {
    const sock = join(dir, 'dies-src.qmp');
    const src = runChild([...args(a!, 'iommufd'), '--qmp', sock, '--sandbox', 'off']);
    try {
      await until('the source to stream', () => seqs(src.out()).length >= 5);
      const q = await qmp(sock);
      // A destination that reads 1000 bytes and exits (the stream is far more than a pipe holds):
      // the source's write fails while mtty is in PRE_COPY.
      assert.deepEqual(await q.call('migrate', { uri: 'exec:head -c 1000 >/dev/null' }), { return: {} });
      assert.equal(await migrationEnd(q), 'failed');
      const info = (await q.call('query-migrate')).return as Record<string, unknown>;
      assert.equal(info.status, 'failed');
      assert.match(String(info['error-desc']), /EPIPE|status/i);
      assert.equal(((await q.call('query-status')).return as { status: string }).status, 'running');
      const at = seqs(src.out()).length;
      await until('the guest to go on streaming', () => seqs(src.out()).length >= at + 5 || /FAIL/.test(src.out()));
      assert.doesNotMatch(src.out(), /FAIL/, src.out());
      assert.doesNotMatch(src.err(), /could not be returned|needs a reset/, src.err());
      // A device left in PRE_COPY or STOP could not start another save.
      const file = join(dir, 'after.snap');
      assert.deepEqual(await q.call('migrate', { uri: `file:${file}` }), { return: {} });
      assert.equal(await migrationEnd(q), 'completed', src.err());
      assertSequence(seqs(src.out()), 'the source throughout');
      await q.call('quit');
    } finally {
      src.child.kill('SIGKILL');
    }
  });
});

test('nvme assigned (no migration driver): migrate is refused naming nvme and why; the guest runs on', async () => {
  const nvme = hostDevice('nvme');
  const sock = join(dir, 'nvme.qmp');
  const src = runChild([
    '--memory',
    '32M',
    '--kernel',
    guestPaths().elf,
    '--cmdline',
    'test=count',
    '--serial',
    'stdio',
    '--device',
    `vfio-pci,host=${nvme.bdf},id=disk0,backend=iommufd`,
    '--qmp',
    sock,
  ]);
  const counts = () => [...src.out().matchAll(/^count (\d+)\n/gm)].length;
  try {
    await until('the guest to count', () => counts() > 20);
    const q = await qmp(sock);
    const r = await q.call('migrate', { uri: `file:${join(dir, 'nvme.snap')}` });
    const err = r.error as { class: string; desc: string };
    assert.equal(err?.class, 'GenericError', JSON.stringify(r));
    assert.match(
      err.desc,
      new RegExp(`^disk0 \\(${nvme.bdf.replace(/\./g, '\\.')}\\): VFIO device doesn't support migration`),
    );
    assert.match(err.desc, /NVMe controller/);
    assert.match(err.desc, /has no migration support \(VFIO_DEVICE_FEATURE_MIGRATION: ENOTTY\)/);
    assert.deepEqual(await q.call('query-migrate'), { return: {} });
    const at = counts();
    await until('the guest to count on', () => counts() >= at + 20);
    await q.call('quit');
  } finally {
    src.child.kill('SIGKILL');
  }
});

test('a destination whose device refuses the state (another mtty type) exits 1 naming the device and why', async () => {
  const file = join(dir, 'foreign.snap');
  await withMdevs(1, async ([a]) => {
    const { src, q } = await migrateOut(a!, 'iommufd', `file:${file}`, 'foreign-src');
    await q.call('quit');
    await once(src.child, 'exit');
  });
  const b = createMdev('mtty-2');
  try {
    const dst = runChild([...args(b, 'iommufd'), '--incoming', `file:${file}`]);
    await once(dst.child, 'exit');
    assert.equal(dst.child.exitCode, 1, dst.err());
    assert.match(dst.err(), /tsvmm: load of migration failed: .*tty0/);
    assert.doesNotMatch(dst.out(), /mtty seq/, 'the guest never ran');
  } finally {
    removeMdev(b.uuid);
  }
});
