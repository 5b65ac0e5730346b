import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AddressSpace, MemoryRegion, type AccessConstraints, type IoOps } from '../../core/memory/index.js';

/** An io region that logs accesses and reads back a value derived from offset and size. */
function probe(name: string, size: number, valid?: AccessConstraints) {
  const log: string[] = [];
  const ops: IoOps = {
    read: (off, sz) => {
      log.push(`r ${off.toString(16)}/${sz}`);
      return sz === 8 ? 0x1122334455667788n : 0xa0 + off;
    },
    write: (off, sz, v) => {
      log.push(`w ${off.toString(16)}/${sz}=${typeof v === 'bigint' ? `${v.toString(16)}n` : v.toString(16)}`);
    },
  };
  const region = MemoryRegion.io(name, size, ops, valid ? { valid } : {});
  return { region, log, take: () => log.splice(0) };
}

function ramRegion(name: string, size: number, opts: { readonly?: boolean } = {}) {
  const bytes = new Uint8Array(size);
  return { bytes, region: MemoryRegion.ram(name, size, { hostAddr: 0x7f0000000000n, bytes }, opts) };
}

test('io dispatch: offset = offsetInRegion + (addr - section.addr), through nesting and aliases', () => {
  const root = MemoryRegion.container('root', 0x100000);
  const bus = MemoryRegion.container('bus', 0x10000);
  const p = probe('dev', 0x1000);
  bus.addSubregion(0x1000, p.region);
  root.addSubregion(0x10000, bus);
  root.addSubregion(0x40000, MemoryRegion.alias('win', p.region, 0x800, 0x100));
  const as = new AddressSpace('s', root);
  assert.equal(as.read(0x11004, 4), 0xa4);
  as.write(0x11ffc, 4, 0xdead);
  assert.equal(as.read(0x40010, 2), 0xa0 + 0x810);
  assert.deepEqual(p.take(), ['r 4/4', 'w ffc/4=dead', 'r 810/2']);
});

test('io dispatch: sizes 1/2/4/8 and values are passed through unmodified', () => {
  const root = MemoryRegion.container('root', 0x10000);
  const p = probe('dev', 0x100);
  root.addSubregion(0x100, p.region);
  const as = new AddressSpace('s', root);
  for (const sz of [1, 2, 4]) assert.equal(as.read(0x100, sz), 0xa0);
  assert.equal(as.read(0x108, 8), 0x1122334455667788n);
  as.write(0x101, 1, 0x1ff); // not masked: the device decides
  as.write(0x110, 8, 0xfedcba9876543210n);
  assert.deepEqual(p.take(), ['r 0/1', 'r 0/2', 'r 0/4', 'r 8/8', 'w 1/1=1ff', 'w 10/8=fedcba9876543210n']);
});

test('unassigned: reads all-ones of the access size, writes dropped, counted', () => {
  const root = MemoryRegion.container('root', 0x10000);
  const { bytes, region } = ramRegion('ram', 0x10);
  root.addSubregion(0x100, region);
  const as = new AddressSpace('s', root);
  assert.equal(as.read(0x2000, 1), 0xff);
  assert.equal(as.read(0x2000, 2), 0xffff);
  assert.equal(as.read(0x2000, 4), 0xffffffff);
  assert.equal(as.read(0x2000, 8), 0xffffffffffffffffn);
  as.write(0x2000, 4, 0x12345678);
  assert.equal(as.read(0x2000, 4), 0xffffffff);
  assert.equal(as.stats.unassigned, 6);
  assert.ok(bytes.every((b) => b === 0));
  assert.equal(as.read(0x1_0000, 4), 0xffffffff, 'past the root');
  for (const bad of [NaN, -1, Infinity]) {
    assert.equal(as.lookup(bad), undefined);
    assert.equal(as.read(bad, 4), 0xffffffff);
  }
});

test('RAM: little-endian reads and writes through backing.bytes, at the section offset', () => {
  const root = MemoryRegion.container('root', 0x100000);
  const { bytes, region } = ramRegion('ram', 0x2000);
  root.addSubregion(0x10000, region);
  root.addSubregion(0x50000, MemoryRegion.alias('hi', region, 0x1000, 0x1000));
  const as = new AddressSpace('s', root);
  as.write(0x10010, 4, 0x11223344);
  assert.deepEqual([...bytes.subarray(0x10, 0x14)], [0x44, 0x33, 0x22, 0x11]);
  assert.equal(as.read(0x10010, 2), 0x3344);
  assert.equal(as.read(0x10013, 1), 0x11);
  as.write(0x50008, 8, 0x0102030405060708n); // via the alias: ram offset 0x1008
  assert.deepEqual([...bytes.subarray(0x1008, 0x1010)], [8, 7, 6, 5, 4, 3, 2, 1]);
  assert.equal(as.read(0x11008, 8), 0x0102030405060708n, 'size 8 reads a bigint');
  assert.equal(as.read(0x11008, 4), 0x05060708, 'smaller sizes read a number');
  as.write(0x10020, 8, 0xffffffff + 2); // a number for size 8
  assert.equal(as.read(0x10020, 8), 0x100000001n);
  as.write(0x10030, 2, 0xabcdef); // truncated to the size
  as.write(0x10034, 4, 0x1_2345_6789n); // bigint for a small size
  as.write(0x10038, 4, -1); // negative numbers wrap
  assert.deepEqual([...bytes.subarray(0x30, 0x3c)], [0xef, 0xcd, 0, 0, 0x89, 0x67, 0x45, 0x23, 0xff, 0xff, 0xff, 0xff]);
});

test('read-only RAM drops writes; a read-only container does not stop io writes', () => {
  const root = MemoryRegion.container('root', 0x100000);
  const rom = ramRegion('rom', 0x1000, { readonly: true });
  rom.bytes[0] = 0x5a;
  root.addSubregion(0, rom.region);
  const ro = MemoryRegion.container('ro', 0x1000);
  const p = probe('dev', 0x100);
  ro.addSubregion(0, p.region);
  ro.setReadonly(true);
  root.addSubregion(0x8000, ro);
  const as = new AddressSpace('s', root);
  as.write(0, 1, 0xff);
  assert.equal(as.read(0, 1), 0x5a);
  as.write(0x8000, 4, 7);
  assert.deepEqual(p.take(), ['w 0/4=7']);
  rom.region.setReadonly(false);
  as.write(0, 1, 0x11);
  assert.equal(rom.bytes[0], 0x11);
});

test('ramDevice uses its bytes too; RAM without a bytes view reads all-ones', () => {
  const root = MemoryRegion.container('root', 0x100000);
  const devBytes = new Uint8Array(0x1000);
  const bar = MemoryRegion.ramDevice('bar', 0x1000, { hostAddr: 0x7f1000000000n, fd: 9, fdOffset: 0, bytes: devBytes });
  root.addSubregion(0x1000, bar);
  root.addSubregion(0x4000, MemoryRegion.ram('blind', 0x1000, { hostAddr: 0x7f2000000000n }));
  const as = new AddressSpace('s', root);
  as.write(0x1004, 4, 0xcafef00d);
  assert.equal(as.read(0x1004, 4), 0xcafef00d);
  assert.equal(devBytes[4], 0x0d);
  assert.equal(as.lookup(0x1000)!.region.kind, 'ramDevice');
  assert.equal(as.read(0x4000, 4), 0xffffffff);
  as.write(0x4000, 4, 0);
  assert.equal(as.stats.unassigned, 2);
});

test('accesses crossing a section boundary are split into aligned pieces and reassembled', () => {
  const root = MemoryRegion.container('root', 0x100000);
  const { bytes, region } = ramRegion('ram', 0x1000);
  for (let i = 0; i < 0x1000; i++) bytes[i] = i & 0xff;
  root.addSubregion(0, region);
  const p = probe('dev', 0x100);
  root.addSubregion(0x1000, p.region);
  const as = new AddressSpace('s', root);
  // ram bytes fe ff | dev 2-byte read at 0 returns 0xa0
  assert.equal(as.read(0xffe, 4), (0x00a0 << 16) | 0xfffe);
  assert.deepEqual(p.take(), ['r 0/2']);
  // 8 bytes from 0xffc: ram 4 bytes, then dev 4 bytes at 0
  assert.equal(as.read(0xffc, 8), (0xa0n << 32n) | 0xfffefdfcn);
  assert.deepEqual(p.take(), ['r 0/4']);
  // Into a hole: the missing bytes read as 0xff.
  assert.equal(as.read(0x10fe, 4), 0xffff00a0 + 0xfe);
  assert.deepEqual(p.take(), ['r fe/2']);
  // Starting in a hole, ending in a region.
  assert.equal(as.read(0xfff, 2), 0xa0ff);
  const unassignedBefore = as.stats.unassigned;
  region.setEnabled(false);
  assert.equal(as.read(0xfff, 2), (0xa0 << 8) | 0xff);
  assert.equal(as.stats.unassigned, unassignedBefore + 1);
  region.setEnabled(true);
  p.take();
  // Writes split the same way, little-endian.
  as.write(0xffe, 4, 0x44332211);
  assert.deepEqual([bytes[0xffe], bytes[0xfff]], [0x11, 0x22]);
  assert.deepEqual(p.take(), ['w 0/2=4433']);
  as.write(0xffb, 8, 0x8877665544332211n); // 1 + 4 bytes of ram (odd start: 1, 4 pieces), then 2 + 1 of dev
  assert.deepEqual([...bytes.subarray(0xffb, 0x1000)], [0x11, 0x22, 0x33, 0x44, 0x55]);
  assert.deepEqual(p.take(), ['w 0/2=7766', 'w 2/1=88']);
});

test('io valid: over-size accesses split to maxAccessSize; under-size or unaligned are invalid', () => {
  const root = MemoryRegion.container('root', 0x10000);
  const p = probe('regs', 0x100, { minAccessSize: 4, maxAccessSize: 4 });
  root.addSubregion(0x100, p.region);
  const as = new AddressSpace('s', root);
  assert.equal(as.read(0x108, 8), (0xacn << 32n) | 0xa8n);
  assert.deepEqual(p.take(), ['r 8/4', 'r c/4']);
  as.write(0x110, 8, 0x1111111122222222n);
  assert.deepEqual(p.take(), ['w 10/4=22222222', 'w 14/4=11111111']);
  assert.equal(as.read(0x100, 1), 0xff);
  assert.equal(as.read(0x102, 2), 0xffff);
  as.write(0x101, 4, 1); // unaligned
  assert.deepEqual(p.take(), []);
  assert.equal(as.stats.invalid, 3);
  const loose = probe('loose', 0x100, { unaligned: true });
  root.addSubregion(0x1000, loose.region);
  assert.equal(as.read(0x1001, 4), 0xa1);
  assert.deepEqual(loose.take(), ['r 1/4']);
  const any = probe('any', 0x100); // no `valid`: everything goes through
  root.addSubregion(0x2000, any.region);
  as.read(0x2003, 8);
  assert.deepEqual(any.take(), ['r 3/8']);
});

test('bad access sizes are refused', () => {
  const as = new AddressSpace('s', MemoryRegion.container('root', 0x100));
  for (const sz of [0, 3, 5, 16, 1.5]) {
    assert.throws(() => as.read(0, sz), RangeError);
    assert.throws(() => as.write(0, sz, 0), RangeError);
  }
});

test('bad input: unsafe integers, negative sizes and offsets', () => {
  const ops: IoOps = { read: () => 0, write: () => {} };
  for (const bad of [-1, 1.5, NaN, Infinity, 2 ** 53]) {
    assert.throws(() => MemoryRegion.container('c', bad), /memory region c: size must be a non-negative safe integer/);
    assert.throws(() => MemoryRegion.io('i', bad, ops), RangeError);
    assert.throws(() => MemoryRegion.ram('r', bad, { hostAddr: 0n }), RangeError);
  }
  const root = MemoryRegion.container('root', 0x1000);
  const child = MemoryRegion.container('child', 0x10);
  assert.throws(
    () => root.addSubregion(-1, child),
    /root: offset of child must be a non-negative safe integer, got -1/,
  );
  assert.throws(() => root.addSubregion(2 ** 53, child), RangeError);
  assert.throws(() => root.addSubregion(0, child, 0.5), /priority of child must be a safe integer/);
  assert.equal(child.parent, null, 'a refused add leaves the child alone');
  root.addSubregion(0x10, child);
  assert.throws(() => child.setAddress(-0x10), RangeError);
  assert.throws(() => child.setSize(NaN), RangeError);
  assert.equal(child.addr, 0x10);
  assert.equal(child.size, 0x10);
  assert.throws(() => MemoryRegion.alias('a', root, -4, 0x10), /alias offset/);
  assert.throws(() => MemoryRegion.alias('a', root, 0, 0x10).setAliasOffset(2 ** 60), RangeError);
  assert.throws(() => root.setAliasOffset(0), /only for alias regions, this is a container/);
});

test('bad input: double parenting, removing a non-child, cycles, alias subregions', () => {
  const a = MemoryRegion.container('a', 0x1000);
  const b = MemoryRegion.container('b', 0x1000);
  const x = MemoryRegion.container('x', 0x10);
  a.addSubregion(0, x);
  assert.throws(() => b.addSubregion(0, x), /x is already a subregion of a/);
  assert.throws(() => a.addSubregion(0x100, x), /already a subregion/);
  assert.equal(x.parent, a);
  assert.equal(a.subregions.length, 1);
  assert.throws(() => b.removeSubregion(x), /x: not a subregion of b/);
  assert.equal(x.parent, a);
  assert.throws(() => a.addSubregion(0, a), /itself/);
  assert.throws(() => x.addSubregion(0, a), /descendant/);
  const al = MemoryRegion.alias('al', a, 0, 0x10);
  assert.throws(() => al.addSubregion(0, MemoryRegion.container('y', 1)), /alias cannot have subregions/);
  a.removeSubregion(x);
  b.addSubregion(0, x); // free again: fine
  assert.equal(x.parent, b);
});

test('bad input: RAM backing and io constraints', () => {
  assert.throws(
    () => MemoryRegion.ram('r', 0x1000, { hostAddr: 0x1000 as unknown as bigint }),
    /hostAddr must be a bigint/,
  );
  assert.throws(
    () => MemoryRegion.ram('r', 0x1000, { hostAddr: 0n, bytes: new Uint8Array(0x800) }),
    /smaller than the region/,
  );
  const ok = MemoryRegion.ram('r', 0x800, { hostAddr: 0n, bytes: new Uint8Array(0x800) });
  assert.throws(() => ok.setSize(0x1000), /smaller than the region/);
  const ops: IoOps = { read: () => 0, write: () => {} };
  assert.throws(() => MemoryRegion.io('i', 4, ops, { valid: { minAccessSize: 8, maxAccessSize: 4 } }), /min <= max/);
  assert.throws(() => MemoryRegion.io('i', 4, ops, { valid: { maxAccessSize: 3 as 4 } }), RangeError);
  assert.throws(() => MemoryRegion.io('i', 4, {} as IoOps), /read and write/);
  assert.throws(() => new AddressSpace('s', {} as MemoryRegion), TypeError);
});
