// Guest RAM backings with a device assigned (test host): the edu suite runs on each backing the
// host can give (anonymous + THP, memfd, hugetlb pages through MAP_HUGETLB, MFD_HUGETLB and a
// hugetlbfs mount), DMA-mapped and pinned, everything unpinned after; and what the host cannot
// give (more RAM than it has, huge pages not reserved, a missing hugetlbfs mount) is one line on
// stderr with the fix, exit 2, nothing pinned or left behind.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runGuest } from '../../helpers/guest.js';
import { hostDevice } from '../../helpers/testhost-env.js';
import { lockedBytes } from '../../../core/vfio/limits.js';
import { projectRoot } from '../../../core/paths.js';
import { guestPaths } from '../../../guest/index.js';
import type { RawMemory } from '../../../machine/config/config.js';
import { inside } from '../../helpers/inside.js';
import { dmaCovers } from '../../helpers/guest.js';

const edu = () => hostDevice('edu');
const NR_HUGEPAGES = '/proc/sys/vm/nr_hugepages';
const meminfo = (k: string) =>
  Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(readFileSync('/proc/meminfo', 'utf8'))![1]);
const hostLocked = () =>
  readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .reduce((n, d) => {
      try {
        return (
          n +
          Number(/^VmLck:\s+(\d+)/m.exec(readFileSync(`/proc/${d}/status`, 'utf8'))?.[1] ?? 0) +
          Number(/^VmPin:\s+(\d+)/m.exec(readFileSync(`/proc/${d}/status`, 'utf8'))?.[1] ?? 0)
        );
      } catch {
        return n;
      }
    }, 0);

const runDir = mkdtempSync(join(process.env.TSVMM_TESTHOST_RUN_DIR ?? '/tmp', 'membacking-'));
const mount = join(runDir, 'hugepages');
let savedNr = '0',
  mounted = false;
after(() => {
  if (mounted) spawnSync('umount', [mount]);
  writeFileSync(NR_HUGEPAGES, savedNr);
  rmSync(runDir, { recursive: true, force: true });
});

/** Reserves `n` 2 MiB huge pages (test host: root) and mounts a hugetlbfs for the hugetlbfs backing. */
function reserveHugePages(n: number): void {
  savedNr = readFileSync(NR_HUGEPAGES, 'utf8').trim();
  writeFileSync(NR_HUGEPAGES, String(n));
  assert.ok(
    meminfo('HugePages_Free') >= n,
    `could not reserve ${n} huge pages (HugePages_Free ${meminfo('HugePages_Free')})`,
  );
  mkdirSync(mount, { recursive: true });
  const r = spawnSync('mount', ['-t', 'hugetlbfs', '-o', 'pagesize=2M', 'none', mount], { encoding: 'utf8' });
  assert.equal(r.status, 0, `mount -t hugetlbfs: ${r.stderr}`);
  mounted = true;
}

async function eduOn(
  memory: RawMemory,
  check: (during: { hugeFree: number; anonHuge: number; fd: number | undefined }) => void,
): Promise<void> {
  let during: { hugeFree: number; anonHuge: number; fd: number | undefined } | undefined;
  const r = await runGuest({
    cmdline: 'test=edu dma=1 msi=3',
    config: { memory, devices: [{ type: 'vfio-pci', host: edu().bdf }] },
    inspect: (m) => {
      assert.ok(dmaCovers(m.inspect(), 0, 0x9f000), 'guest RAM is DMA-mapped');
      assert.ok(lockedBytes() >= 64 * 2 ** 20, `pinned memory is accounted (VmLck ${lockedBytes()})`);
      const anonHuge = Number(
        /^AnonHugePages:\s+(\d+)/m.exec(readFileSync('/proc/self/smaps_rollup', 'utf8'))?.[1] ?? 0,
      );
      // inside: guest RAM through its host view: no interface shows it
      during = { hugeFree: meminfo('HugePages_Free'), anonHuge, fd: inside(m).guestRam.fd };
    },
  });
  assert.equal(r.status, 0, `${r.reason}\n${r.output}`);
  for (const t of ['edu-id', 'edu-factorial', 'edu-dma', 'edu-msi'])
    assert.ok(r.lines.includes(`PASS ${t}`), `${t} on ${JSON.stringify(memory)}:\n${r.output}`);
  const dma = r.lines.find((l) => l.startsWith('edu dma iova='))!;
  const [src, dst] = [...dma.matchAll(/0x([0-9a-f]+)/g)].map((x) => parseInt(x[1]!, 16));
  assert.ok(r.dmaCovered(src!, 256) && r.dmaCovered(dst!, 256), dma);
  check(during!);
  assert.equal(lockedBytes(), 0, 'every pinned page is released after the VM');
}

test(
  'edu suite on each RAM backing: anonymous (THP), memfd, MAP_HUGETLB, MFD_HUGETLB, hugetlbfs (2M pages)',
  { timeout: 300_000 },
  async () => {
    reserveHugePages(48); // 96 MiB: one 64 MiB VM at a time
    const free0 = meminfo('HugePages_Free');
    // A kernel built without THP (the iommufd kernel) has no such file: no huge pages to expect.
    const thpFile = '/sys/kernel/mm/transparent_hugepage/enabled';
    const thpOn = existsSync(thpFile) && !/\[never\]/.test(readFileSync(thpFile, 'utf8'));
    await eduOn({ size: '64M' }, (d) => {
      assert.equal(d.fd, undefined, 'anonymous RAM has no fd');
      if (thpOn)
        assert.ok(d.anonHuge >= 2048, `anonymous RAM got transparent huge pages (AnonHugePages ${d.anonHuge} kB)`);
    });
    await eduOn({ size: '64M', backing: 'memfd' }, (d) =>
      assert.ok(d.fd !== undefined && d.fd > 2, 'memfd RAM has its fd'),
    );
    for (const memory of [
      { size: '64M', hugepages: '2M' },
      { size: '64M', backing: 'memfd', hugepages: '2M' },
      { size: '64M', backing: 'hugetlbfs', path: mount },
    ] as RawMemory[]) {
      await eduOn(memory, (d) =>
        assert.equal(
          free0 - d.hugeFree,
          32,
          `${JSON.stringify(memory)}: 32 huge pages in use while it ran (free ${d.hugeFree} of ${free0})`,
        ),
      );
      assert.equal(meminfo('HugePages_Free'), free0, `${JSON.stringify(memory)}: huge pages returned after`);
    }
    assert.deepEqual(readdirSync(mount), [], 'no file left on the hugetlbfs mount');
  },
);

/** `tsvmm run` on a config with this memory; the edu device assigned so pinning is at stake. */
function runCli(memory: unknown): { status: number | null; stderr: string } {
  const cfg = join(runDir, `bad-${Date.now()}.json`);
  writeFileSync(
    cfg,
    JSON.stringify({
      memory,
      kernel: { path: guestPaths().elf },
      cmdline: 'test=edu',
      devices: [{ type: 'vfio-pci', host: edu().bdf }],
    }),
  );
  const r = spawnSync(process.execPath, [join(projectRoot, 'dist/bin/tsvmm.cjs'), 'run', cfg], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { status: r.status, stderr: r.stderr };
}

test('a backing the host cannot give: one line and the fix, exit 2, nothing pinned', { timeout: 120_000 }, () => {
  writeFileSync(NR_HUGEPAGES, '0');
  const totalMiB = Math.ceil(meminfo('MemTotal') / 1024);
  const cases: [unknown, RegExp][] = [
    [`${2 * totalMiB}M`, /more than this host has .*\)\ntsvmm: fix: give the VM less memory$/],
    // Between what is available and what the host has: it could be backed lazily, not pinned.
    [
      `${Math.ceil(meminfo('MemAvailable') / 1024 / 2) * 2}M`,
      /must be resident \(pinned for device assignment\), but the host has .* available/,
    ],
    [
      { size: '64M', hugepages: '2M' },
      /needs 32 free 2M huge pages, but 0 of 0 reserved are free\ntsvmm: fix: reserve them \(echo 32 > \/sys\/kernel\/mm\/hugepages\/hugepages-2048kB\/nr_hugepages/,
    ],
    [
      { size: '64M', backing: 'hugetlbfs', path: '/nonexistent/hugepages' },
      /hugetlbfs mount \/nonexistent\/hugepages does not exist\ntsvmm: fix: mount one/,
    ],
  ];
  for (const [memory, re] of cases) {
    const r = runCli(memory);
    assert.equal(r.status, 2, `${JSON.stringify(memory)}: exit ${r.status}\n${r.stderr}`);
    const lines = r.stderr.split('\n').filter(Boolean);
    assert.equal(lines.length, 2, `${JSON.stringify(memory)}: one line, and the fix:\n${r.stderr}`);
    assert.match(lines[0]!, /^tsvmm: \/memory: /);
    assert.match(lines[1]!, /^tsvmm: fix: /);
    assert.match(lines.join('\n'), re);
    assert.equal(hostLocked(), 0, 'nothing pinned');
  }
});
