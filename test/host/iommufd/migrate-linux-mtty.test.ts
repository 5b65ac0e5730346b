// Runs INSIDE the test host (iommufd kernel): a Linux guest (the test host's Debian kernel) with an mtty mdev,
// which the guest's 8250_pci driver binds as a 16550A ttyS; the guest's mtty-loop streams a sequence through it
// (raw, interrupt-driven, at most 15 bytes in mtty's FIFO) and checks every byte that comes back. Migrated live
// over a unix socket to a second tsvmm process with its own mtty instance of the same type, on each backend
// (PRE_COPY data goes while the guest runs), or saved to a file and restored in a new process: the stream goes on
// with no byte lost or repeated — mtty's registers, FIFO and interrupt enables arrived, or the guest would stall
// or see a wrong byte.
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Mdev } from '../../../core/vfio/mdev.js';
import { withMdevs } from '../../helpers/mdev.js';
import type { VfioBackendKind } from '../../../core/vfio/vfio.js';
import {
  FIND_MTTY_TTY,
  handOver,
  killChildren,
  linuxConfig,
  migrationEnd,
  qmp,
  queryStatus,
  runTsvmm,
  show,
  startLivePair,
  stop,
  until,
  TEST_MS,
  type Child,
} from '../../helpers/linux-migration.js';

const REPORT = 256;
const dir = mkdtempSync(join(tmpdir(), 'tsvmm-mig-mtty-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
afterEach(killChildren);

/** mtty instances for a test, removed once the VMMs holding them are gone. */
const withMttys = <T>(n: number, f: (m: Mdev[]) => Promise<T>) => withMdevs(n, f, killChildren);

/** A Linux guest whose /init finds mtty's tty and streams through it forever. */
function mttyConfig(name: string, m: Mdev, backend: VfioBackendKind): string {
  return linuxConfig(name, {
    memory: '128M',
    programs: ['mtty-loop'],
    devices: [{ type: 'vfio-pci', sysfsdev: m.path, id: 'tty0', backend }],
    script: `${FIND_MTTY_TTY}\n[ -n "$tty" ] || exit 1\nexec mtty-loop -r ${REPORT} /dev/$tty`,
  });
}

/** The byte counts mtty-loop reported (whole lines). */
const ats = (s: string) => [...s.matchAll(/^mtty-loop at (\d+)\r?\n/gm)].map((m) => Number(m[1]));

/** No error line, and every REPORT bytes once, in order, from the first. */
function assertStream(text: string, what: string): number {
  assert.doesNotMatch(text, /mtty-loop error/, `${what}\n${text.slice(-3000)}`);
  const v = ats(text);
  assert.ok(v.length > 0, `${what}: no "mtty-loop at" line`);
  v.forEach((n, i) => assert.equal(n, (i + 1) * REPORT, `${what}: line ${i}: ${v[i - 1]} then ${n}`));
  return v.at(-1)!;
}

/** The guest found mtty as a ttyS bound by 8250_pci's driver ("serial"). */
function assertBound(out: string): void {
  assert.match(out, /^mtty tty=ttyS\d+ pci=0000:00:[0-9a-f]{2}\.0 driver=serial\r?$/m, out);
}

/** The source streaming (5 reports), then migrated to `uri`; query-migrate's reply once it completed. */
async function migrateOut(src: Child, srcQmp: string, uri: string, watch: [string, Child][]) {
  await until('the source guest to stream through mtty', () => ats(src.out()).length >= 5, watch);
  assertBound(src.out());
  const q = await qmp(srcQmp);
  assert.deepEqual(await q.call('migrate', { uri }), { return: {} }, show('source', src));
  const end = await migrationEnd(q);
  const info = (await q.call('query-migrate')).return as Record<string, any>;
  assert.equal(end, 'completed', `${JSON.stringify(info)}\n${watch.map(([n, c]) => show(n, c)).join('\n')}`);
  assert.ok(info.vfio?.transferred > 0, `mtty's state went in the stream: ${JSON.stringify(info)}`);
  return { q, info };
}

/** The destination goes on from where the source stopped: 5 more reports, the whole stream in order. */
async function assertContinues(src: Child, dst: Child, watch: [string, Child][]): Promise<void> {
  const at = ats(src.out() + dst.out()).length;
  await until(
    'the destination guest to stream on',
    () => ats(src.out() + dst.out()).length >= at + 5 || /mtty-loop error/.test(dst.out()),
    watch,
  );
  assert.doesNotMatch(dst.out(), /tsvmm-init: running|mtty-loop start/, 'the guest went on, it did not start again');
  const bytes = assertStream(src.out() + dst.out(), 'source then destination');
  console.log(`# ${bytes} bytes through mtty, ${ats(src.out()).length * REPORT} of them before the migration`);
}

async function live(backend: VfioBackendKind): Promise<void> {
  await withMttys(2, async ([a, b]) => {
    const uri = `unix:${join(dir, `live-${backend}.sock`)}`;
    const srcQmp = join(dir, `live-${backend}-src.qmp`),
      dstQmp = join(dir, `live-${backend}-dst.qmp`);
    const { src, dst, both } = await startLivePair({
      uri,
      src: mttyConfig('mtty-src', a!, backend),
      dst: mttyConfig('mtty-dst', b!, backend),
      srcQmp,
      dstQmp,
    });
    const { q, info } = await migrateOut(src, srcQmp, uri, both);
    // mtty offers PRE_COPY: its initial data went while the guest still ran, its final state after the stop.
    assert.ok(info.vfio['x-precopy-bytes'] > 0, `PRE_COPY data went while the guest ran: ${JSON.stringify(info)}`);
    assert.ok(info.vfio.transferred > info.vfio['x-precopy-bytes'], 'and the state after the stop');
    console.log(
      `# ${backend}: mtty ${info.vfio.transferred} bytes (${info.vfio['x-precopy-bytes']} in PRE_COPY), ` +
        `${info.ram['dirty-sync-count']} RAM passes, downtime ${info.downtime} ms, total ${info['total-time']} ms`,
    );
    await assertContinues(src, dst, both);
    await stop(dst, await handOver(src, q, dstQmp));
  });
}

test(
  'live migration over unix of a Linux guest streaming through mtty (iommufd): PRE_COPY used, the stream goes on with no byte lost',
  { timeout: TEST_MS },
  () => live('iommufd'),
);

test('the same on the legacy VFIO backend (container and group)', { timeout: TEST_MS }, () => live('legacy'));

test(
  'a Linux guest with mtty saved to a file and restored in a new process on another instance: its mtty still works, the stream goes on',
  { timeout: TEST_MS },
  async () => {
    await withMttys(2, async ([a, b]) => {
      const file = join(dir, 'mtty-linux.snap');
      const srcQmp = join(dir, 'snap-src.qmp');
      const src = runTsvmm([mttyConfig('mtty-snap', a!, 'iommufd'), '--qmp', srcQmp]);
      const { q } = await migrateOut(src, srcQmp, `file:${file}`, [['source', src]]);
      assert.equal(await queryStatus(q), 'postmigrate');
      await stop(src, q);
      assert.equal(src.child.exitCode, 0, show('source', src));
      const dst = runTsvmm([mttyConfig('mtty-restore', b!, 'iommufd'), '--incoming', `file:${file}`]);
      await assertContinues(src, dst, [['restored', dst]]);
      await stop(dst);
    });
  },
);
