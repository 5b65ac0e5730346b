import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  AddressSpace,
  MemoryRegion,
  memoryTransaction,
  inMemoryTransaction,
  type IoOps,
  type MemoryListener,
  type Section,
} from '../../core/memory/index.js';

const nopOps: IoOps = { read: () => 0, write: () => {} };
const io = (name: string, size: number) => MemoryRegion.io(name, size, nopOps);
const ram = (name: string, size: number) =>
  MemoryRegion.ram(name, size, { hostAddr: 0x7f0000000000n, bytes: new Uint8Array(size) });

const fmt = (s: Section) =>
  `${s.region.name}@${s.addr.toString(16)}+${s.size.toString(16)}${s.offsetInRegion ? `:${s.offsetInRegion.toString(16)}` : ''}${s.readonly ? ':ro' : ''}`;

/** Records every callback as text; `nops` off by default to keep expectations short. */
function recorder(name: string, priority = 0, nops = false) {
  const log: string[] = [];
  const l: MemoryListener = {
    name,
    priority,
    begin: () => {
      log.push('begin');
    },
    regionAdd: (s) => {
      log.push(`add ${fmt(s)}`);
    },
    regionDel: (s) => {
      log.push(`del ${fmt(s)}`);
    },
    ...(nops
      ? {
          regionNop: (s: Section) => {
            log.push(`nop ${fmt(s)}`);
          },
        }
      : {}),
    commit: () => {
      log.push('commit');
    },
  };
  return { l, log, take: () => log.splice(0) };
}

function space() {
  const root = MemoryRegion.container('root', 0x100000);
  const as = new AddressSpace('mem', root);
  return { root, as };
}

test('addListener replays the current view in address order; removeListener replays deletions', () => {
  const { root, as } = space();
  root.addSubregion(0x3000, io('c', 0x1000));
  root.addSubregion(0x1000, io('a', 0x1000));
  root.addSubregion(0x2000, io('b', 0x800));
  const r = recorder('r');
  as.addListener(r.l);
  assert.deepEqual(r.take(), ['begin', 'add a@1000+1000', 'add b@2000+800', 'add c@3000+1000', 'commit']);
  as.removeListener(r.l);
  assert.deepEqual(r.take(), ['begin', 'del a@1000+1000', 'del b@2000+800', 'del c@3000+1000', 'commit']);
  root.addSubregion(0x5000, io('d', 0x1000));
  assert.deepEqual(r.take(), [], 'a removed listener hears nothing');
});

test('a change reports only what changed; unchanged sections only as regionNop', () => {
  const { root, as } = space();
  root.addSubregion(0x1000, io('a', 0x1000));
  root.addSubregion(0x8000, io('z', 0x1000));
  const r = recorder('r', 0, true);
  as.addListener(r.l);
  r.take();
  const b = io('b', 0x1000);
  root.addSubregion(0x4000, b);
  assert.deepEqual(r.take(), ['begin', 'nop a@1000+1000', 'add b@4000+1000', 'nop z@8000+1000', 'commit']);
  root.removeSubregion(b);
  assert.deepEqual(r.take(), ['begin', 'del b@4000+1000', 'nop a@1000+1000', 'nop z@8000+1000', 'commit']);
});

test('a change with no visible effect makes no callbacks at all', () => {
  const { root, as } = space();
  root.addSubregion(0, ram('ram', 0x10000), 1);
  const r = recorder('r', 0, true);
  as.addListener(r.l);
  r.take();
  const hidden = io('hidden', 0x1000);
  root.addSubregion(0x1000, hidden, 0); // entirely under RAM
  hidden.setAddress(0x2000);
  root.removeSubregion(hidden);
  const off = io('off', 0x1000);
  off.setEnabled(false);
  root.addSubregion(0x20000, off);
  MemoryRegion.container('detached', 0x1000).addSubregion(0, io('x', 0x10));
  assert.deepEqual(r.take(), []);
});

test('shadowing splits a section: del the old one, then add the pieces, all in address order', () => {
  const { root, as } = space();
  root.addSubregion(0, ram('ram', 0x10000));
  root.addSubregion(0x20000, io('far', 0x1000));
  const r = recorder('r');
  as.addListener(r.l);
  r.take();
  const bar = io('bar', 0x1000);
  root.addSubregion(0x4000, bar, 1);
  assert.deepEqual(r.take(), [
    'begin',
    'del ram@0+10000',
    'add ram@0+4000',
    'add bar@4000+1000',
    'add ram@5000+b000:5000',
    'commit',
  ]);
  bar.setAddress(0x30000);
  assert.deepEqual(r.take(), [
    'begin',
    'del ram@0+4000',
    'del bar@4000+1000',
    'del ram@5000+b000:5000',
    'add ram@0+10000',
    'add bar@30000+1000',
    'commit',
  ]);
});

test('attribute changes (readonly, alias offset, size) are a del + add of that section', () => {
  const { root, as } = space();
  const r0 = ram('ram', 0x10000);
  const win = MemoryRegion.alias('win', r0, 0x1000, 0x1000);
  root.addSubregion(0x40000, win);
  const r = recorder('r');
  as.addListener(r.l);
  r.take();
  win.setReadonly(true);
  assert.deepEqual(r.take(), ['begin', 'del ram@40000+1000:1000', 'add ram@40000+1000:1000:ro', 'commit']);
  win.setAliasOffset(0x2000);
  assert.deepEqual(r.take(), ['begin', 'del ram@40000+1000:1000:ro', 'add ram@40000+1000:2000:ro', 'commit']);
  win.setSize(0x800);
  assert.deepEqual(r.take(), ['begin', 'del ram@40000+1000:2000:ro', 'add ram@40000+800:2000:ro', 'commit']);
});

test('listener order: begin/add/nop/commit ascending priority, del descending (QEMU)', () => {
  const { root, as } = space();
  const order: string[] = [];
  const mk = (name: string, priority: number): MemoryListener => ({
    name,
    priority,
    begin: () => {
      order.push(`${name}.begin`);
    },
    regionAdd: (s) => {
      order.push(`${name}.add ${s.region.name}`);
    },
    regionDel: (s) => {
      order.push(`${name}.del ${s.region.name}`);
    },
    regionNop: (s) => {
      order.push(`${name}.nop ${s.region.name}`);
    },
    commit: () => {
      order.push(`${name}.commit`);
    },
  });
  const keep = io('keep', 0x1000);
  const old = io('old', 0x1000);
  root.addSubregion(0x1000, keep);
  root.addSubregion(0x3000, old);
  as.addListener(mk('p20', 20));
  as.addListener(mk('m5', -5));
  as.addListener(mk('p10a', 10));
  as.addListener(mk('p10b', 10)); // equal priority: after p10a (registration order)
  order.length = 0;
  memoryTransaction(() => {
    root.removeSubregion(old);
    root.addSubregion(0x2000, io('new', 0x1000));
  });
  assert.deepEqual(order, [
    'm5.begin',
    'p10a.begin',
    'p10b.begin',
    'p20.begin',
    'p20.del old',
    'p10b.del old',
    'p10a.del old',
    'm5.del old',
    'm5.nop keep',
    'p10a.nop keep',
    'p10b.nop keep',
    'p20.nop keep',
    'm5.add new',
    'p10a.add new',
    'p10b.add new',
    'p20.add new',
    'm5.commit',
    'p10a.commit',
    'p10b.commit',
    'p20.commit',
  ]);
});

test('transaction: many changes give one begin/commit with the net diff', () => {
  const { root, as } = space();
  const a = io('a', 0x1000);
  root.addSubregion(0x1000, a);
  const r = recorder('r');
  as.addListener(r.l);
  r.take();
  const bars = [io('b0', 0x100), io('b1', 0x100), io('b2', 0x100)];
  memoryTransaction(() => {
    bars.forEach((b, i) => root.addSubregion(0x10000 + i * 0x1000, b));
    bars[1]!.setAddress(0x20000);
    a.setAddress(0x5000);
    root.removeSubregion(bars[2]!);
    assert.ok(inMemoryTransaction());
    assert.equal(as.lookup(0x1000)!.region, a, 'the view is the old one until the end');
    assert.equal(as.lookup(0x10000), undefined);
  });
  assert.ok(!inMemoryTransaction());
  assert.deepEqual(r.take(), [
    'begin',
    'del a@1000+1000',
    'add a@5000+1000',
    'add b0@10000+100',
    'add b1@20000+100',
    'commit',
  ]);
});

test('transactions nest: only the outermost end notifies; the value of fn is returned', () => {
  const { root, as } = space();
  const r = recorder('r');
  as.addListener(r.l);
  r.take();
  const got = memoryTransaction(() => {
    root.addSubregion(0x1000, io('a', 0x100));
    const inner = memoryTransaction(() => {
      root.addSubregion(0x2000, io('b', 0x100));
      return 42;
    });
    assert.deepEqual(r.log, [], 'inner end does not commit');
    root.addSubregion(0x3000, io('c', 0x100));
    return inner + 1;
  });
  assert.equal(got, 43);
  assert.deepEqual(r.take(), ['begin', 'add a@1000+100', 'add b@2000+100', 'add c@3000+100', 'commit']);
});

test('a change undone inside a transaction produces no callbacks', () => {
  const { root, as } = space();
  const bar = io('bar', 0x1000);
  root.addSubregion(0xc0000, bar);
  const r = recorder('r', 0, true);
  as.addListener(r.l);
  r.take();
  const before = as.flatView();
  memoryTransaction(() => {
    bar.setAddress(0xd0000);
    bar.setEnabled(false);
    bar.setEnabled(true);
    bar.setAddress(0xc0000);
    const tmp = io('tmp', 0x10);
    root.addSubregion(0, tmp);
    root.removeSubregion(tmp);
  });
  assert.deepEqual(r.take(), []);
  assert.equal(as.flatView(), before, 'the very same view');
});

test('a throwing fn still commits its changes and its error wins', () => {
  const { root, as } = space();
  const r = recorder('r');
  as.addListener(r.l);
  r.take();
  assert.throws(
    () =>
      memoryTransaction(() => {
        root.addSubregion(0x1000, io('a', 0x100));
        throw new Error('device bug');
      }),
    /device bug/,
  );
  assert.ok(!inMemoryTransaction());
  assert.deepEqual(r.take(), ['begin', 'add a@1000+100', 'commit']);
});

test('section identity: regionDel gets the very object regionAdd got, across unrelated re-renders', () => {
  const { root, as } = space();
  const added = new Set<Section>();
  const bad: string[] = [];
  as.addListener({
    regionAdd: (s) => {
      added.add(s);
    },
    regionDel: (s) => {
      if (!added.delete(s)) bad.push(fmt(s));
    },
  });
  const a = io('a', 0x1000);
  root.addSubregion(0x1000, a);
  for (let i = 0; i < 10; i++) root.addSubregion(0x10000 * (i + 1), io(`x${i}`, 0x100));
  a.setAddress(0x2000);
  root.removeSubregion(a);
  assert.deepEqual(bad, []);
  assert.deepEqual(
    [...added].sort((x, y) => x.addr - y.addr),
    [...as.flatView()],
  );
  assert.ok(Object.isFrozen(as.flatView()[0]));
});

test('only address spaces that can see a region are re-rendered — including through aliases', () => {
  const sys = space();
  const other = space();
  const r1 = recorder('sys');
  const r2 = recorder('other');
  sys.as.addListener(r1.l);
  other.as.addListener(r2.l);
  r2.take();
  const card = io('card', 0x10000);
  sys.root.addSubregion(0x100000 - 0x10000, card);
  r1.take();
  assert.deepEqual(r2.take(), []);
  // The other space shows part of `card` through an alias: changes below card reach it.
  other.root.addSubregion(0x1000, MemoryRegion.alias('card-window', card, 0x8000, 0x1000));
  r2.take();
  card.addSubregion(0x8100, io('reg', 0x10));
  assert.deepEqual(r1.take(), [
    'begin',
    'del card@f0000+10000',
    'add card@f0000+8100',
    'add reg@f8100+10',
    'add card@f8110+7ef0:8110',
    'commit',
  ]);
  assert.deepEqual(r2.take(), [
    'begin',
    'del card@1000+1000:8000',
    'add card@1000+100:8000',
    'add reg@1100+10',
    'add card@1110+ef0:8110',
    'commit',
  ]);
  // Moving card within sys does not change what the alias shows: nothing for `other`.
  card.setAddress(0);
  assert.equal(r1.take().length > 0, true);
  assert.deepEqual(r2.take(), []);
});

test('a throwing listener: the others still run, the view is current, the error reaches the caller', () => {
  const { root, as } = space();
  const good = recorder('good', 10);
  let failAdds = true;
  const badLog: string[] = [];
  as.addListener({
    name: 'bad',
    priority: 0,
    regionAdd: (s) => {
      badLog.push(`add ${fmt(s)}`);
      if (failAdds) throw new Error(`no slot for ${s.region.name}`);
    },
    commit: () => {
      badLog.push('commit');
    },
  });
  as.addListener(good.l);
  good.take();
  badLog.length = 0;
  const a = io('a', 0x100);
  const b = io('b', 0x100);
  assert.throws(
    () =>
      memoryTransaction(() => {
        root.addSubregion(0x1000, a);
        root.addSubregion(0x2000, b);
      }),
    (e: unknown) => e instanceof AggregateError && e.errors.length === 2 && /no slot for a/.test(String(e.errors[0])),
  );
  assert.deepEqual(badLog, ['add a@1000+100', 'add b@2000+100', 'commit']);
  assert.deepEqual(good.take(), ['begin', 'add a@1000+100', 'add b@2000+100', 'commit']);
  assert.equal(as.lookup(0x1000)!.region, a, 'the new view is current');
  assert.ok(!inMemoryTransaction(), 'the transaction machinery is not left half-open');
  // One error: rethrown as is. Afterwards the space keeps working from the new view.
  assert.throws(() => root.addSubregion(0x3000, io('c', 0x100)), /no slot for c/);
  assert.deepEqual(good.take(), ['begin', 'add c@3000+100', 'commit']);
  failAdds = false;
  root.removeSubregion(a);
  assert.deepEqual(good.take(), ['begin', 'del a@1000+100', 'commit']);
});

test('changes made by a listener callback are applied in a following round', () => {
  const { root, as } = space();
  const shadow = io('shadow', 0x100);
  const r = recorder('r', 10);
  as.addListener({
    regionAdd: (s) => {
      if (s.region.name === 'trigger') root.addSubregion(0x9000, shadow);
    },
  });
  as.addListener(r.l);
  r.take();
  root.addSubregion(0x1000, io('trigger', 0x100));
  assert.deepEqual(r.take(), ['begin', 'add trigger@1000+100', 'commit', 'begin', 'add shadow@9000+100', 'commit']);
  assert.equal(as.lookup(0x9000)!.region, shadow);
});

test('addListener inside a transaction replays the committed view, then gets the diff', () => {
  const { root, as } = space();
  root.addSubregion(0x1000, io('a', 0x100));
  const r = recorder('r');
  memoryTransaction(() => {
    root.addSubregion(0x2000, io('b', 0x100));
    as.addListener(r.l);
    assert.deepEqual(r.take(), ['begin', 'add a@1000+100', 'commit']);
  });
  assert.deepEqual(r.take(), ['begin', 'add b@2000+100', 'commit']);
});

test('listener registration errors and destroy()', () => {
  const { root, as } = space();
  const r = recorder('r');
  as.addListener(r.l);
  assert.throws(() => as.addListener(r.l), /already/);
  assert.throws(() => as.removeListener({ name: 'stranger' }), /stranger.*not on/);
  r.take();
  as.destroy();
  root.addSubregion(0, io('a', 0x10));
  assert.deepEqual(r.take(), []);
  // The root can serve a new address space.
  const as2 = new AddressSpace('again', root);
  assert.equal(as2.lookup(0)!.region.name, 'a');
});
