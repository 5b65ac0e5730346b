import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AddressSpace, MemoryRegion, type IoOps, type Section } from '../../core/memory/index.js';

const nopOps: IoOps = { read: () => 0, write: () => {} };
const io = (name: string, size: number) => MemoryRegion.io(name, size, nopOps);
const ram = (name: string, size: number, opts: { readonly?: boolean } = {}) =>
  MemoryRegion.ram(name, size, { hostAddr: 0x7f0000000000n, bytes: new Uint8Array(Math.max(size, 64)) }, opts);

/** [addr, end, region name, offsetInRegion] per section (+ 'ro' when read-only). */
function flat(as: AddressSpace): (string | number)[][] {
  return as
    .flatView()
    .map((s) => [s.addr, s.addr + s.size, s.region.name, s.offsetInRegion, ...(s.readonly ? ['ro'] : [])]);
}

test('QEMU memory.rst overlap example: B (container, prio 2) over C (MMIO, prio 1)', () => {
  // docs/devel/memory.rst, "Overlapping regions and priority": A is a 0x8000 container, C an MMIO
  // region at 0 of size 0x6000 (priority 1), B a container at 0x2000 of size 0x4000 (priority 2)
  // holding D at 0 and E at 0x2000 (0x1000 each). Seen: [CCCC][DD][CC][EE][CC], then nothing.
  const A = MemoryRegion.container('A', 0x8000);
  const B = MemoryRegion.container('B', 0x4000);
  const C = io('C', 0x6000);
  B.addSubregion(0, io('D', 0x1000));
  B.addSubregion(0x2000, io('E', 0x1000));
  A.addSubregion(0x2000, B, 2);
  A.addSubregion(0, C, 1);
  const as = new AddressSpace('A', A);
  assert.deepEqual(flat(as), [
    [0x0000, 0x2000, 'C', 0x0000],
    [0x2000, 0x3000, 'D', 0],
    [0x3000, 0x4000, 'C', 0x3000],
    [0x4000, 0x5000, 'E', 0],
    [0x5000, 0x6000, 'C', 0x5000],
  ]);
  assert.equal(as.lookup(0x6000), undefined, 'A itself is a pure container: nothing past C');
  assert.equal(as.describe().split('\n')[2], '0000000000003000-0000000000003fff (io): C @0x3000');
});

test('QEMU example variant: B with its own MMIO shows itself in its holes', () => {
  // "If B had provided its own MMIO operations ... [CCCCCCCCCCCC][DDDDD][BBBBB][EEEEE][BBBBB]"
  const A = MemoryRegion.container('A', 0x8000);
  const B = io('B', 0x4000);
  B.addSubregion(0, io('D', 0x1000));
  B.addSubregion(0x2000, io('E', 0x1000));
  A.addSubregion(0x2000, B, 2);
  A.addSubregion(0, io('C', 0x6000), 1);
  assert.deepEqual(flat(new AddressSpace('A', A)), [
    [0x0000, 0x2000, 'C', 0],
    [0x2000, 0x3000, 'D', 0],
    [0x3000, 0x4000, 'B', 0x1000],
    [0x4000, 0x5000, 'E', 0],
    [0x5000, 0x6000, 'B', 0x3000],
  ]);
});

test('QEMU example with B below C: C hides all of B', () => {
  const A = MemoryRegion.container('A', 0x8000);
  const B = io('B', 0x4000);
  B.addSubregion(0, io('D', 0x1000));
  A.addSubregion(0x2000, B, 0);
  A.addSubregion(0, io('C', 0x6000), 1);
  assert.deepEqual(flat(new AddressSpace('A', A)), [[0, 0x6000, 'C', 0]]);
});

test('priorities are signed; -1 loses to the default 0', () => {
  const root = MemoryRegion.container('root', 0x10000);
  root.addSubregion(0, io('low', 0x4000), -1);
  root.addSubregion(0x1000, io('mid', 0x1000));
  root.addSubregion(0x3000, io('neg5', 0x2000), -5);
  assert.deepEqual(flat(new AddressSpace('s', root)), [
    [0x0000, 0x1000, 'low', 0],
    [0x1000, 0x2000, 'mid', 0],
    [0x2000, 0x4000, 'low', 0x2000],
    [0x4000, 0x5000, 'neg5', 0x1000],
  ]);
});

test("priorities compare only between siblings: a child's high priority does not escape its container", () => {
  const root = MemoryRegion.container('root', 0x10000);
  const low = MemoryRegion.container('low', 0x4000);
  low.addSubregion(0, io('child-prio-100', 0x4000), 100);
  root.addSubregion(0, low, 0);
  root.addSubregion(0x1000, io('sibling-prio-1', 0x1000), 1);
  assert.deepEqual(flat(new AddressSpace('s', root)), [
    [0x0000, 0x1000, 'child-prio-100', 0],
    [0x1000, 0x2000, 'sibling-prio-1', 0],
    [0x2000, 0x4000, 'child-prio-100', 0x2000],
  ]);
});

test('equal priority overlap: the sibling added last wins (QEMU list order); re-adding changes the winner', () => {
  const root = MemoryRegion.container('root', 0x10000);
  const first = io('first', 0x2000);
  const second = io('second', 0x2000);
  root.addSubregion(0, first);
  root.addSubregion(0x1000, second);
  const as = new AddressSpace('s', root);
  assert.deepEqual(flat(as), [
    [0, 0x1000, 'first', 0],
    [0x1000, 0x3000, 'second', 0],
  ]);
  assert.deepEqual(
    root.subregions.map((r) => r.name),
    ['second', 'first'],
  );
  root.removeSubregion(first);
  root.addSubregion(0, first);
  assert.deepEqual(flat(as), [
    [0, 0x2000, 'first', 0],
    [0x2000, 0x3000, 'second', 0x1000],
  ]);
  // A higher priority still beats recency.
  root.addSubregion(0x1800, io('third', 0x100), -1);
  assert.equal(as.lookup(0x1800)!.region.name, 'first');
});

test('holes in a pure container fall through to lower-priority siblings of the container', () => {
  const root = MemoryRegion.container('root', 0x100000);
  const r = ram('ram', 0x10000);
  root.addSubregion(0, r, 0);
  const pci = MemoryRegion.container('pci', 0x10000);
  pci.addSubregion(0x4000, io('bar', 0x1000));
  root.addSubregion(0, pci, 1);
  assert.deepEqual(flat(new AddressSpace('s', root)), [
    [0x0000, 0x4000, 'ram', 0],
    [0x4000, 0x5000, 'bar', 0],
    [0x5000, 0x10000, 'ram', 0x5000],
  ]);
});

test('a non-container region with subregions shows them over itself; nested offsets add up', () => {
  const root = MemoryRegion.container('root', 0x100000);
  const bus = MemoryRegion.container('bus', 0x10000);
  const r = ram('ram', 0x8000);
  r.addSubregion(0x100, io('window', 0x100));
  bus.addSubregion(0x1000, r);
  root.addSubregion(0x20000, bus);
  assert.deepEqual(flat(new AddressSpace('s', root)), [
    [0x21000, 0x21100, 'ram', 0],
    [0x21100, 0x21200, 'window', 0],
    [0x21200, 0x29000, 'ram', 0x200],
  ]);
});

test('children are clipped to their parent; size-0 and disabled regions render nothing', () => {
  const root = MemoryRegion.container('root', 0x10000);
  const c = MemoryRegion.container('c', 0x1000);
  c.addSubregion(0x800, io('straddles', 0x1000));
  c.addSubregion(0x2000, io('outside', 0x100));
  root.addSubregion(0x1000, c);
  root.addSubregion(0x5000, io('empty', 0));
  const off = io('off', 0x100);
  off.setEnabled(false);
  root.addSubregion(0x6000, off);
  root.addSubregion(0xff00, io('past-root', 0x1000));
  const as = new AddressSpace('s', root);
  assert.deepEqual(flat(as), [
    [0x1800, 0x2000, 'straddles', 0],
    [0xff00, 0x10000, 'past-root', 0],
  ]);
  root.setEnabled(false);
  assert.deepEqual(flat(as), []);
});

test('aliases: window offset, placement anywhere, target address ignored, alias of alias', () => {
  const root = MemoryRegion.container('root', 0x100000);
  const r = ram('ram', 0x10000);
  root.addSubregion(0x50000, r);
  const a = MemoryRegion.alias('a', r, 0x1000, 0x2000);
  root.addSubregion(0x80000, a);
  const aa = MemoryRegion.alias('aa', a, 0x800, 0x400); // ram offset 0x1800..0x1c00
  root.addSubregion(0x90000, aa);
  const as = new AddressSpace('s', root);
  assert.deepEqual(flat(as), [
    [0x50000, 0x60000, 'ram', 0],
    [0x80000, 0x82000, 'ram', 0x1000],
    [0x90000, 0x90400, 'ram', 0x1800],
  ]);
  a.setAliasOffset(0x3000);
  assert.deepEqual(as.lookup(0x90000)!.offsetInRegion, 0x3800, 'changing the inner alias moves the outer one too');
  assert.deepEqual(as.lookup(0x80000)!.offsetInRegion, 0x3000);
});

test('aliases: window beyond the target is clipped; shows target subregions; disabled target shows nothing', () => {
  const root = MemoryRegion.container('root', 0x100000);
  const dev = io('dev', 0x1000);
  dev.addSubregion(0x200, io('sub', 0x100));
  const a = MemoryRegion.alias('a', dev, 0x100, 0x2000);
  root.addSubregion(0x10000, a);
  const as = new AddressSpace('s', root);
  assert.deepEqual(flat(as), [
    [0x10000, 0x10100, 'dev', 0x100],
    [0x10100, 0x10200, 'sub', 0],
    [0x10200, 0x10f00, 'dev', 0x300],
  ]);
  dev.setEnabled(false);
  assert.deepEqual(flat(as), []);
});

test('read-only propagates from aliases and containers to the sections below them', () => {
  const root = MemoryRegion.container('root', 0x100000);
  const r = ram('ram', 0x4000);
  root.addSubregion(0, r);
  root.addSubregion(0x10000, MemoryRegion.alias('rom-view', r, 0, 0x1000, { readonly: true }));
  root.addSubregion(0x20000, ram('rom', 0x1000, { readonly: true }));
  const as = new AddressSpace('s', root);
  assert.deepEqual(flat(as), [
    [0, 0x4000, 'ram', 0],
    [0x10000, 0x11000, 'ram', 0, 'ro'],
    [0x20000, 0x21000, 'rom', 0, 'ro'],
  ]);
  root.setReadonly(true);
  assert.ok(as.flatView().every((s) => s.readonly));
});

test('adjacent pieces merge only when same region, contiguous offset and same readonly', () => {
  const root = MemoryRegion.container('root', 0x100000);
  const r = ram('ram', 0x10000);
  root.addSubregion(0x0000, MemoryRegion.alias('a0', r, 0x0000, 0x1000));
  root.addSubregion(0x1000, MemoryRegion.alias('a1', r, 0x1000, 0x1000)); // contiguous: merges
  root.addSubregion(0x2000, MemoryRegion.alias('a2', r, 0x8000, 0x1000)); // jump: separate
  root.addSubregion(0x3000, MemoryRegion.alias('a3', r, 0x9000, 0x1000, { readonly: true }));
  const as = new AddressSpace('s', root);
  assert.deepEqual(flat(as), [
    [0x0000, 0x2000, 'ram', 0],
    [0x2000, 0x3000, 'ram', 0x8000],
    [0x3000, 0x4000, 'ram', 0x9000, 'ro'],
  ]);
  // A region punched in two by a higher one merges back when the hole goes away.
  const hole = io('hole', 0x100);
  root.addSubregion(0x800, hole, 1);
  assert.equal(as.flatView().length, 5);
  hole.setEnabled(false);
  assert.deepEqual(flat(as)[0], [0x0000, 0x2000, 'ram', 0]);
});

test('moving and enabling subregions re-renders (a guest moving a BAR)', () => {
  const root = MemoryRegion.container('root', 0x100000);
  root.addSubregion(0, ram('ram', 0x10000));
  const bar = io('bar', 0x1000);
  root.addSubregion(0x20000, bar, 1);
  const as = new AddressSpace('s', root);
  assert.equal(as.lookup(0x20000)!.region, bar);
  bar.setAddress(0x4000); // over RAM, higher priority: shadows it
  assert.deepEqual(flat(as), [
    [0, 0x4000, 'ram', 0],
    [0x4000, 0x5000, 'bar', 0],
    [0x5000, 0x10000, 'ram', 0x5000],
  ]);
  assert.equal(as.lookup(0x20000), undefined);
  bar.setEnabled(false);
  assert.deepEqual(flat(as), [[0, 0x10000, 'ram', 0]]);
  bar.setAddress(0x30000); // moving while disabled changes nothing visible...
  assert.deepEqual(flat(as), [[0, 0x10000, 'ram', 0]]);
  bar.setEnabled(true); // ...until enabled
  assert.equal(as.lookup(0x30000)!.region, bar);
  bar.setSize(0x2000);
  assert.equal(as.lookup(0x31fff)!.region, bar);
  root.removeSubregion(bar);
  assert.equal(as.lookup(0x30000), undefined);
  assert.equal(bar.parent, null);
});

test('alias cycles do not hang: the cyclic part renders nothing', () => {
  const root = MemoryRegion.container('root', 0x10000);
  root.addSubregion(0, io('dev', 0x100));
  const loop = MemoryRegion.alias('loop', root, 0, 0x1000);
  root.addSubregion(0x1000, loop);
  const as = new AddressSpace('s', root);
  assert.deepEqual(flat(as), [
    [0, 0x100, 'dev', 0],
    [0x1000, 0x1100, 'dev', 0],
  ]);
});

test('lookup is exact at section edges and agrees with a linear scan', () => {
  const root = MemoryRegion.container('root', 0x1000000);
  for (let i = 0; i < 200; i++) root.addSubregion(i * 0x3000 + (i % 7) * 0x10, io(`r${i}`, 0x1000 + (i % 3) * 0x800));
  const as = new AddressSpace('s', root);
  const v = as.flatView();
  const linear = (a: number) => v.find((s) => a >= s.addr && a < s.addr + s.size);
  for (const s of v) {
    for (const a of [s.addr - 1, s.addr, s.addr + s.size - 1, s.addr + s.size])
      assert.equal(as.lookup(a), linear(a), `0x${a.toString(16)}`);
  }
  let seed = 1;
  for (let i = 0; i < 2000; i++) {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    const a = seed % 0x280000;
    assert.equal(as.lookup(a), linear(a));
  }
  assert.equal(as.lookup(-1), undefined);
  assert.equal(as.lookup(2 ** 60), undefined);
});

// --- A brute-force reference: QEMU's rules evaluated for one address at a time ------------------

interface Owner {
  region: MemoryRegion;
  off: number;
  ro: boolean;
}

/** `inAlias`: aliases being expanded; re-entering one (a cycle) shows nothing, as documented. */
function ownerAt(
  mr: MemoryRegion,
  base: number,
  x: number,
  ro: boolean,
  inAlias: MemoryRegion[] = [],
): Owner | undefined {
  if (!mr.enabled) return undefined;
  base += mr.addr;
  ro ||= mr.readonly;
  if (x < base || x >= base + mr.size) return undefined;
  if (mr.aliasTarget) {
    if (inAlias.includes(mr)) return undefined;
    return ownerAt(mr.aliasTarget, base - mr.aliasTarget.addr - mr.aliasOffset, x, ro, [...inAlias, mr]);
  }
  for (const s of mr.subregions) {
    const o = ownerAt(s, base, x, ro, inAlias);
    if (o) return o;
  }
  return mr.terminates ? { region: mr, off: x - base, ro } : undefined;
}

function rng(seed: number) {
  return (n: number) => {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    return seed % n;
  };
}

function checkAgainstReference(as: AddressSpace, span: number, label: string): void {
  const v = as.flatView();
  for (let i = 1; i < v.length; i++) {
    const p = v[i - 1]!,
      s = v[i]!;
    assert.ok(p.addr + p.size <= s.addr, `${label}: sorted and non-overlapping`);
    const mergeable =
      p.addr + p.size === s.addr &&
      p.region === s.region &&
      p.readonly === s.readonly &&
      p.offsetInRegion + p.size === s.offsetInRegion;
    assert.ok(!mergeable, `${label}: adjacent contiguous sections were not merged at 0x${s.addr.toString(16)}`);
  }
  for (const s of v) assert.ok(s.size > 0, `${label}: empty section`);
  for (let x = 0; x < span; x++) {
    const want = ownerAt(as.root, 0, x, false);
    const got: Section | undefined = as.lookup(x);
    if (!want) {
      assert.equal(got, undefined, `${label}: 0x${x.toString(16)} should be unassigned`);
      continue;
    }
    assert.ok(got, `${label}: 0x${x.toString(16)} should be ${want.region.name}`);
    assert.equal(got.region, want.region, `${label}: owner of 0x${x.toString(16)}`);
    assert.equal(got.offsetInRegion + (x - got.addr), want.off, `${label}: offset at 0x${x.toString(16)}`);
    assert.equal(got.readonly, want.ro, `${label}: readonly at 0x${x.toString(16)}`);
  }
}

test("random trees render exactly like QEMU's rules evaluated per address", () => {
  for (let seed = 1; seed <= 150; seed++) {
    const r = rng(seed);
    const root = MemoryRegion.container('root', 96);
    const all: MemoryRegion[] = [root];
    const leaves: MemoryRegion[] = [];
    const n = 3 + r(14);
    for (let i = 0; i < n; i++) {
      const size = r(5) === 0 ? 0 : 1 + r(40);
      let m: MemoryRegion;
      switch (r(6)) {
        case 0:
        case 1:
          m = MemoryRegion.container(`c${i}`, size);
          break;
        case 2:
          m = ram(`ram${i}`, size, { readonly: r(4) === 0 });
          break;
        case 3:
          m = leaves.length
            ? MemoryRegion.alias(`al${i}`, leaves[r(leaves.length)]!, r(10), size, { readonly: r(5) === 0 })
            : io(`io${i}`, size);
          break;
        default:
          m = io(`io${i}`, size);
      }
      if (m.terminates) leaves.push(m);
      if (r(8) === 0) m.setEnabled(false);
      const parents = all.filter((p) => p.kind !== 'alias');
      parents[r(parents.length)]!.addSubregion(r(70), m, r(5) - 2);
      all.push(m);
    }
    const as = new AddressSpace('s', root);
    checkAgainstReference(as, 110, `seed ${seed}`);
    // Then mutate and check again: the incremental path must agree too.
    for (let k = 0; k < 5; k++) {
      const m = all[1 + r(all.length - 1)]!;
      switch (r(4)) {
        case 0:
          m.setAddress(r(70));
          break;
        case 1:
          m.setEnabled(!m.enabled);
          break;
        case 2:
          m.setSize(r(40));
          break;
        default:
          if (m.kind === 'alias') m.setAliasOffset(r(20));
          else m.setReadonly(!m.readonly);
      }
      checkAgainstReference(as, 110, `seed ${seed} step ${k}`);
    }
  }
});
