// The run-loop rows' table (bench/runloop.ts renderRunloop): medians, the max-of-20 statistic, ratios.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { renderRunloop, type RunloopResults } from '../../bench/runloop.js';
import { readFileSync } from 'node:fs';
import { command, hostMemory } from '../../bench/vmm.js';

test('run-loop table: medians with ranges, tsvmm ÷ each other column, max of 20 per launch', () => {
  const qmp = (base: number) => Array.from({ length: 20 }, (_, i) => base + i * 0.1);
  const r: RunloopResults = {
    date: '2026-11-27T12:00:00Z',
    where: 'here',
    rounds: 2,
    phaseMs: 1000,
    errors: ['qemu ap round 2: exit 1'],
    samples: {
      tsvmm: { pio: [100, 300], qmp: [...qmp(1), ...qmp(3)], sigint: [40, 60] },
      qemu: { pio: [200, 200], qmp: qmp(0.5) },
      null: { pio: [400, 400] },
    },
  };
  const md = renderRunloop(r);
  const row = (label: string) => md.split('\n').find((l) => l.startsWith(`| ${label}`))!;
  assert.match(
    row('Trapped port-I/O round trips'),
    /\| 200 \(100–300\) \| 200 \(200–200\) \| 400 \(400–400\) \| 1\.00× \| 0\.50× \|$/,
  );
  // Launch maxima: 2.9 and 4.9 → median 3.9; QEMU's one launch: 2.4.
  assert.match(
    row('QMP query-status under exit load, max of 20'),
    /\| 3\.90 \(2\.90–4\.90\) \| 2\.40 \(2\.40–2\.40\) \| – \| 1\.63× \| – \|$/,
  );
  assert.match(row('Trapped port I/O from an AP'), /\| – \| – \| – \| – \| – \|$/);
  assert.match(md, /- qemu ap round 2: exit 1/);
});

test('run-loop table: the 4-vCPU control-plane row is the max of 100 per launch', () => {
  const q = (base: number) => Array.from({ length: 100 }, (_, i) => base + (i === 50 ? 5 : 0));
  const r: RunloopResults = {
    date: '2026-11-27T12:00:00Z',
    where: 'here',
    rounds: 2,
    phaseMs: 1000,
    errors: [],
    samples: { tsvmm: { qmpAll: [...q(1), ...q(2)], ap4: [10, 30] }, qemu: { qmpAll: q(1), ap4: [40] } },
  };
  const md = renderRunloop(r);
  const row = (label: string) => md.split('\n').find((l) => l.startsWith(`| ${label}`))!;
  // Maxima 6 and 7 → median 6.5 (a max of 20 would have made four launches of each).
  assert.match(
    row('QMP query-status under exit load from 4 vCPUs, max of 100'),
    /\| 6\.50 \(6\.00–7\.00\) \| 6\.00 \(6\.00–6\.00\) \| 1\.08× \|$/,
  );
  assert.match(row('Trapped port I/O from every vCPU at once'), /\| 20 \(10–30\) \| 40 \(40–40\) \| 0\.50× \|$/);
});

test('run-loop table: launch and memory rows (1 and 4 vCPUs), ratios against QEMU and the null VMM', () => {
  const r: RunloopResults = {
    date: '2026-11-27T12:00:00Z',
    where: 'here',
    rounds: 3,
    phaseMs: 1000,
    errors: [],
    samples: {
      tsvmm: {
        launch: [300, 200, 250],
        private1: [40, 44, 42],
        pss1: [50, 50, 50],
        private4: [60, 60, 60],
        guestRam1: [1, 1, 1],
      },
      qemu: { launch: [100, 125, 150], private1: [21, 21, 21], pss1: [25, 25, 25], private4: [30, 30, 30] },
      null: { launch: [10, 10, 10], private1: [1.5, 1.4, 1.6] },
    },
  };
  const md = renderRunloop(r);
  const row = (label: string) => md.split('\n').find((l) => l.startsWith(`| ${label}`))!;
  assert.match(
    row('Launch → first serial byte (1 vCPU, 256 MiB, no device) (ms, lower)'),
    /\| 250 \(200–300\) \| 125 \(100–150\) \| 10 \(10–10\) \| 2\.00× \| 25\.00× \|$/,
  );
  assert.match(
    row('Private memory beyond guest RAM, anonymous + shmem (1 vCPU, 256 MiB) (MiB, lower)'),
    /\| 42\.0 \(40\.0–44\.0\) \| 21\.0 \(21\.0–21\.0\) \| 1\.5 \(1\.4–1\.6\) \| 2\.00× \| 28\.00× \|$/,
  );
  assert.match(
    row('PSS beyond guest RAM (1 vCPU'),
    /\| 50\.0 \(50\.0–50\.0\) \| 25\.0 \(25\.0–25\.0\) \| – \| 2\.00× \| – \|$/,
  );
  assert.match(row('Private memory beyond guest RAM, anonymous + shmem (4 vCPU'), /\| 2\.00× \| – \|$/);
  // Evidence samples stay in the JSON, not in the table.
  assert.doesNotMatch(md, /guestRam/);
});

// One smaps entry: header line, then the fields the parser reads (and ones it must not add up).
const vma = (range: string, perms: string, sizeKiB: number, rssKiB: number, name = '', shared = 0) =>
  `${range} ${perms} 00000000 00:00 0 ${name}\nSize:   ${sizeKiB} kB\nKernelPageSize: 4 kB\nRss:    ${rssKiB} kB\n` +
  `Pss:    ${rssKiB - shared / 2} kB\nShared_Clean: ${shared} kB\nPrivate_Clean: 0 kB\nPrivate_Dirty: ${rssKiB - shared} kB\n` +
  `Anonymous: ${rssKiB - shared} kB\nVmFlags: rd wr mr mw me ac hg\n`;

test('host memory from smaps: private anonymous + shmem pages and PSS, guest RAM left out', () => {
  const smaps =
    vma('55d0c0000000-55d0c0200000', 'r-xp', 2048, 2000, '/usr/bin/node', 2000) + // shared with other node processes
    vma('55d0c0200000-55d0c0204000', 'rw-p', 16, 16, '/usr/bin/node') + // relocated data: private, but file-backed
    vma('7f0000000000-7f0010000000', 'rw-s', 262144, 1234, '/memfd:tsvmm-ram (deleted)') + // guest RAM
    vma('7f0010000000-7f0010100000', '---p', 1024, 0) + // a reservation: nothing resident
    vma('7f0020000000-7f0024000000', 'rw-p', 65536, 9000) + // V8 heap
    vma('7ffd00000000-7ffd00021000', 'rw-p', 132, 20, '[stack]');
  const m = hostMemory(smaps, 262144);
  assert.equal(m.guestMiB * 1024, 1234);
  assert.equal(m.privateMiB * 1024, 16 + 9000 + 20);
  assert.equal(m.pssMiB * 1024, 1000 + 16 + 9000 + 20);
  assert.throws(() => hostMemory(smaps, 131072), /0 read\/write mappings of exactly 131072 KiB/);
  const twice = smaps + vma('7f0030000000-7f0040000000', 'rw-s', 262144, 5);
  assert.throws(() => hostMemory(twice, 262144), /2 read\/write mappings/);
});

test('run-loop table: the virtio-iommu request rows (round trips higher, CPU per request lower), tsvmm and QEMU only', () => {
  const r: RunloopResults = {
    date: '2026-12-05T12:00:00Z',
    where: 'here',
    rounds: 2,
    phaseMs: 1000,
    errors: [],
    samples: {
      tsvmm: { viommu: [100, 140], viommuCpu: [10, 12] },
      qemu: { viommu: [150], viommuCpu: [8] },
      null: { pio: [1] },
    },
  };
  const md = renderRunloop(r);
  const row = (label: string) => md.split('\n').find((l) => l.startsWith(`| ${label}`))!;
  assert.match(
    row('virtio-iommu request round trips'),
    /\| 120 \(100–140\) \| 150 \(150–150\) \| – \| 0\.80× \| – \|$/,
  );
  assert.match(
    row('VMM CPU per virtio-iommu request'),
    /\| 11\.0 \(10\.0–12\.0\) \| 8\.0 \(8\.0–8\.0\) \| – \| 1\.38× \| – \|$/,
  );
});

test("a launch spec's viommu gives tsvmm's config a virtio-iommu (QEMU: -device virtio-iommu-pci)", () => {
  const argv = command({ vmm: 'tsvmm', memMiB: 16, cmdline: 'test=bench-viommu', bdf: '', viommu: true });
  const cfg = JSON.parse(readFileSync(argv[argv.indexOf('run') + 1]!, 'utf8')) as {
    iommu?: unknown;
    devices: unknown[];
  };
  assert.deepEqual(cfg.iommu, { type: 'virtio' });
  assert.deepEqual(cfg.devices, []);
  const plain = command({ vmm: 'tsvmm', memMiB: 16, cmdline: '', bdf: '' });
  assert.equal(
    (JSON.parse(readFileSync(plain[plain.indexOf('run') + 1]!, 'utf8')) as { iommu?: unknown }).iommu,
    undefined,
  );
});
