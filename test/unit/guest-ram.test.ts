// Guest RAM of any size (core/ram.ts, native mmapAddr/mapView): no abort past V8's 4 GiB limit,
// views that die with the mapping, the host checks of each backing, parallel prefault, the
// memory API over RAM in chunks, and the `memory` config forms.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native, PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE } from '../../core/native.js';
import { GuestRam, RamBackingError, planRam, thpMode, RAM_VIEW_CHUNK } from '../../core/ram.js';
import { checkConfig, ConfigError, type MemoryConfig } from '../../machine/config/config.js';
import { AddressSpace, MemoryRegion } from '../../core/memory/index.js';

const GiB = 2 ** 30;
const dir = mkdtempSync(join(tmpdir(), 'tsvmm-ram-'));
writeFileSync(join(dir, 'k.bin'), 'x'); // a one-byte flat image: validate checks images too
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const anon = (size: number, more: Partial<MemoryConfig> = {}): MemoryConfig => ({
  size,
  backing: 'anonymous',
  prealloc: false,
  ...more,
});
const memTotal = () => Number(/^MemTotal:\s+(\d+)/m.exec(readFileSync('/proc/meminfo', 'utf8'))![1]) * 1024;

test('native: a mapping over 4 GiB is refused as one ArrayBuffer and served as views with mmapAddr', () => {
  const n = native();
  assert.throws(
    () => n.mmap(0, 4097 * 2 ** 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
    (e: Error) => e instanceof RangeError && /at most 4 GiB/.test(e.message),
  );
  const addr = n.mmapAddr(0, 6 * GiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  const a = new Uint8Array(n.mapView(addr + BigInt(5 * GiB), GiB));
  const b = new Uint8Array(n.mapView(addr + BigInt(5 * GiB + 4096), 4096));
  a[4096 + 7] = 0x5c;
  assert.equal(b[7], 0x5c, 'two views of one mapping see the same memory');
  assert.throws(() => n.mapView(addr + BigInt(6 * GiB - 4096), 8192), /not inside a live mapping/);
  assert.throws(() => n.mapView(addr, 2 ** 32 + 1), RangeError);
  n.munmapAddr(addr);
  assert.equal(a.length, 0, 'views are detached when the mapping goes');
  assert.equal(b.length, 0);
  assert.throws(() => n.mapView(addr, 4096), /not inside a live mapping/);
  assert.throws(() => n.munmapAddr(addr), /no live mapping/);
  const whole = n.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  assert.throws(() => n.munmapAddr(whole.addr), /no live mapping/, 'an mmap() mapping belongs to its buffer');
  assert.throws(() => n.mapView(whole.addr, 4096), /not inside a live mapping/);
  n.munmap(whole.buffer);
});

test('GuestRam: 5 GiB of anonymous RAM, viewed in chunks; close detaches every view', (t) => {
  if (memTotal() < 5.5 * GiB) return t.skip('host has less than 5.5 GiB of RAM');
  const ram = GuestRam.create(anon(5 * GiB), 'unit', { resident: false });
  try {
    assert.equal(ram.fd, undefined);
    const top = ram.view(5 * GiB - 4096, 4096);
    top[4095] = 0xa5;
    assert.equal(ram.view(4 * GiB, GiB)[GiB - 1], 0xa5);
    const across = ram.view(GiB - 8, 16); // straddles two chunks: its own view
    across.fill(7);
    assert.equal(ram.view(GiB, 8)[7], 7);
    const chunks = ram.chunks(3 * GiB, 2 * GiB);
    assert.equal(chunks.size, RAM_VIEW_CHUNK);
    assert.equal(chunks.get(1)[GiB - 1], 0xa5);
    assert.throws(() => ram.view(5 * GiB - 4096, 8192), RangeError);
    ram.close();
    assert.equal(top.length, 0);
    assert.throws(() => ram.view(0, 1), /unmapped/);
  } finally {
    ram.close();
  }
});

test('GuestRam: memfd RAM has an fd; prefault on two threads makes it resident', () => {
  const size = 256 * 2 ** 20;
  const ram = GuestRam.create({ size, backing: 'memfd', prealloc: true }, 'unit', { resident: true });
  try {
    assert.ok(ram.fd !== undefined && ram.fd > 2);
    const before = shmemKb();
    let told = 0;
    assert.equal(ram.prefault({ threads: 2, progress: () => told++ }), true);
    assert.ok(
      shmemKb() - before >= (size / 1024) * 0.95,
      `Shmem grew by ${shmemKb() - before} kB for ${size / 1024} kB`,
    );
    assert.ok(told <= 1);
  } finally {
    ram.close();
  }
});
function shmemKb(): number {
  return Number(/^Shmem:\s+(\d+)/m.exec(readFileSync('/proc/meminfo', 'utf8'))![1]);
}

test('planRam: what the host cannot give is a one-line RamBackingError and its fix', () => {
  // The problem's line, then the fix (the CLI prints them so: tsvmm: <message> / tsvmm: fix: <fix>).
  const oneLine = (fn: () => unknown, re: RegExp) =>
    assert.throws(fn, (e: Error) => {
      assert.ok(e instanceof RamBackingError && e instanceof ConfigError, String(e));
      assert.ok(!e.message.includes('\n') && e.fix && !e.fix.includes('\n'), e.message);
      assert.match(`${e.message}\nfix: ${e.fix}`, re);
      return true;
    });
  oneLine(
    () => planRam(anon(Math.ceil((memTotal() * 4) / GiB) * GiB), { resident: false }),
    /more than this host has.*\nfix: give the VM less memory$/,
  );
  oneLine(
    () =>
      planRam(
        { size: GiB, backing: 'hugetlbfs', path: join(dir, 'no-such-mount'), prealloc: false },
        { resident: false },
      ),
    /does not exist\nfix: mount one \(mkdir -p .* mount -t hugetlbfs/,
  );
  oneLine(
    () => planRam({ size: GiB, backing: 'hugetlbfs', path: dir, prealloc: false }, { resident: false }),
    /is not a hugetlbfs mount/,
  );
  const free2M = existsSync('/sys/kernel/mm/hugepages/hugepages-2048kB')
    ? Number(readFileSync('/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages', 'utf8'))
    : 0;
  const want = (free2M + 1) * 2 ** 21;
  oneLine(
    () => planRam(anon(want, { hugepages: '2M' }), { resident: false }),
    /huge pages[^]*(echo \d+ > \/sys\/kernel\/mm\/hugepages\/hugepages-2048kB\/nr_hugepages|no 2M huge pages)/,
  );
  if (thpMode('shmem_enabled') === 'never' || thpMode('shmem_enabled') === 'deny') {
    oneLine(
      () => planRam({ size: GiB, backing: 'memfd', hugepages: 'thp', prealloc: false }, { resident: false }),
      /shmem_enabled is (never|deny)\nfix: echo advise >/,
    );
  } else {
    assert.equal(
      planRam({ size: GiB, backing: 'memfd', hugepages: 'thp', prealloc: false }, { resident: false }).thp,
      true,
    );
  }
  // Nothing was left behind by the refusals (no file in the directory named as a mount).
  assert.deepEqual(readFileSync('/proc/self/maps', 'utf8').includes('tsvmm-unit'), false);
});

test('memory API: a RAM region in chunks reads and writes across a chunk boundary', () => {
  const chunk = 0x1000;
  const parts = [new Uint8Array(chunk), new Uint8Array(chunk), new Uint8Array(0x800)];
  const root = MemoryRegion.container('root', 0x10000);
  root.addSubregion(
    0x4000,
    MemoryRegion.ram('big', 0x2800, { hostAddr: 0x7f0000000000n, chunks: { size: chunk, get: (i) => parts[i]! } }),
  );
  const as = new AddressSpace('s', root);
  as.write(0x4000 + chunk - 2, 4, 0xaabbccdd);
  assert.deepEqual([...parts[0]!.subarray(chunk - 2)], [0xdd, 0xcc]);
  assert.deepEqual([...parts[1]!.subarray(0, 2)], [0xbb, 0xaa]);
  assert.equal(as.read(0x4000 + chunk - 2, 4), 0xaabbccdd);
  as.write(0x4000 + 2 * chunk + 0x7f8, 8, 0x0102030405060708n);
  assert.equal(as.read(0x4000 + 2 * chunk + 0x7f8, 8), 0x0102030405060708n);
  assert.equal(parts[2]![0x7ff], 1);
  assert.equal(as.stats.unassigned, 0);
  assert.throws(
    () => MemoryRegion.ram('bad', 0x1000, { hostAddr: 0n, chunks: { size: 0, get: () => new Uint8Array(0) } }),
    /positive chunk size/,
  );
});

test('config: memory as a size or an object with its backing; what tsvmm cannot address is refused', () => {
  const cfg = (memory: unknown) => checkConfig({ memory, kernel: { path: 'k.bin', format: 'flat' } }, 't.json', dir);
  const problems = (memory: unknown) => {
    try {
      cfg(memory);
    } catch (e) {
      assert.ok(e instanceof ConfigError);
      return e.problems.join('\n');
    }
    return assert.fail(`accepted ${JSON.stringify(memory)}`);
  };
  assert.deepEqual(cfg('4097M').memory, { size: 4097 * 2 ** 20, backing: 'anonymous', prealloc: false });
  assert.equal(cfg('1T').memoryBytes, 2 ** 40);
  assert.equal(cfg(6144).memoryBytes, 6 * GiB);
  assert.deepEqual(cfg({ size: '6G', backing: 'hugetlbfs', hugepages: '1G', path: 'hp', prealloc: true }).memory, {
    size: 6 * GiB,
    backing: 'hugetlbfs',
    hugepages: '1G',
    path: join(dir, 'hp'),
    prealloc: true,
  });
  assert.equal(cfg({ size: 512, backing: 'memfd' }).memory.backing, 'memfd');
  assert.match(problems('2T'), /\/memory: "2T" is more than tsvmm can give a guest \(at most 1 TiB: "1T"/);
  assert.match(problems('10000G'), /at most 1 TiB/);
  assert.match(problems({ size: '3M', hugepages: '2M' }), /\/memory\/size: "3M" is not a multiple of the 2M huge page/);
  assert.match(
    problems({ size: '1G', backing: 'memfd', path: '/dev/hugepages' }),
    /\/memory\/path: applies to backing "hugetlbfs" only/,
  );
  assert.match(problems({ size: '1G', backing: 'hugetlbfs', hugepages: 'thp' }), /"thp" does not apply to hugetlbfs/);
  assert.match(problems({ size: '1G', backing: 'tmpfs' }), /\/memory/);
  assert.match(problems({ backing: 'memfd' }), /\/memory/);
});
