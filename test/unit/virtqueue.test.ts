import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AddressSpaceMemory, FlatMemory } from '../../hw/virtio/guest-memory.js';
import { AddressSpace, MemoryRegion } from '../../core/memory/index.js';
import {
  emptyChain,
  SplitVirtqueue,
  VirtqueueError,
  vringNeedEvent,
  VIRTQ_DESC_F_INDIRECT as IND,
  VIRTQ_DESC_F_NEXT as NEXT,
  VIRTQ_DESC_F_WRITE as WRITE,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_USED_F_NO_NOTIFY,
} from '../../hw/virtio/virtqueue.js';

const SIZE = 8,
  DESC = 0x1000,
  AVAIL = 0x2000,
  USED = 0x3000,
  DATA = 0x8000,
  RAM = 0x20000;

function setup(opts: { eventIdx?: boolean; indirect?: boolean; size?: number } = {}) {
  const mem = new FlatMemory(new Uint8Array(RAM));
  const dv = new DataView(mem.bytes.buffer);
  const size = opts.size ?? SIZE;
  const vq = new SplitVirtqueue(mem, {
    size,
    desc: DESC,
    avail: AVAIL,
    used: USED,
    eventIdx: opts.eventIdx ?? false,
    indirect: opts.indirect ?? true,
  });
  let availIdx = 0;
  const desc = (table: number, i: number, addr: number, len: number, flags: number, next = 0) => {
    dv.setBigUint64(table + 16 * i, BigInt(addr), true);
    dv.setUint32(table + 16 * i + 8, len, true);
    dv.setUint16(table + 16 * i + 12, flags, true);
    dv.setUint16(table + 16 * i + 14, next, true);
  };
  const publish = (...heads: number[]) => {
    for (const h of heads) {
      dv.setUint16(AVAIL + 4 + 2 * (availIdx % size), h, true);
      availIdx = (availIdx + 1) & 0xffff;
    }
    dv.setUint16(AVAIL + 2, availIdx, true);
  };
  return { mem, dv, vq, desc, publish, size };
}

/** Guest memory of two RAM regions of `size` bytes back to back from 0 (a range across them is two pieces). */
function twoRegions(size: number) {
  const a = new Uint8Array(size),
    b = new Uint8Array(size);
  const root = MemoryRegion.container('root', 0x100000);
  root.addSubregion(0, MemoryRegion.ram('a', size, { hostAddr: 0n, bytes: a }));
  root.addSubregion(size, MemoryRegion.ram('b', size, { hostAddr: 0n, bytes: b }));
  return { a, b, mem: new AddressSpaceMemory(new AddressSpace('mem', root)) };
}

test('virtqueue: a chain of readable then writable buffers, returned through the used ring', () => {
  const { vq, desc, publish, dv } = setup();
  desc(DESC, 3, DATA, 10, NEXT, 5);
  desc(DESC, 5, DATA + 0x100, 20, NEXT, 1);
  desc(DESC, 1, DATA + 0x200, 30, WRITE);
  assert.equal(vq.pop(), undefined);
  publish(3);
  const c = vq.pop()!;
  assert.equal(c.head, 3);
  assert.deepEqual(c.readable, [
    { addr: DATA, len: 10 },
    { addr: DATA + 0x100, len: 20 },
  ]);
  assert.deepEqual(c.writable, [{ addr: DATA + 0x200, len: 30 }]);
  assert.equal(c.readableLen, 30);
  assert.equal(c.writableLen, 30);
  assert.equal(vq.pop(), undefined);
  vq.push(3, 7);
  assert.equal(dv.getUint16(USED + 2, true), 1);
  assert.equal(dv.getUint32(USED + 4, true), 3);
  assert.equal(dv.getUint32(USED + 8, true), 7);
});

test('virtqueue: readChain and writeChain cross buffer boundaries', () => {
  const { vq, desc, publish, mem } = setup();
  mem.bytes.set([1, 2, 3], DATA);
  mem.bytes.set([4, 5], DATA + 0x100);
  desc(DESC, 0, DATA, 3, NEXT, 1);
  desc(DESC, 1, DATA + 0x100, 2, NEXT, 2);
  desc(DESC, 2, DATA + 0x200, 2, WRITE | NEXT, 3);
  desc(DESC, 3, DATA + 0x300, 4, WRITE);
  publish(0);
  const c = vq.pop()!;
  assert.deepEqual([...vq.readChain(c)], [1, 2, 3, 4, 5]);
  assert.deepEqual([...vq.readChain(c, 4)], [1, 2, 3, 4]);
  assert.equal(vq.writeChain(c, Uint8Array.of(9, 8, 7, 6), 1), 4);
  assert.deepEqual([...mem.bytes.subarray(DATA + 0x200, DATA + 0x202)], [0, 9]);
  assert.deepEqual([...mem.bytes.subarray(DATA + 0x300, DATA + 0x304)], [8, 7, 6, 0]);
});

test('virtqueue: an indirect table is the chain', () => {
  const { vq, desc, publish } = setup();
  const T = 0x5000;
  desc(T, 0, DATA, 4, NEXT, 2);
  desc(T, 2, DATA + 0x40, 8, WRITE);
  desc(DESC, 6, T, 48, IND);
  publish(6);
  const c = vq.pop()!;
  assert.equal(c.head, 6);
  assert.deepEqual(c.readable, [{ addr: DATA, len: 4 }]);
  assert.deepEqual(c.writable, [{ addr: DATA + 0x40, len: 8 }]);
});

test('virtqueue: indirect tables over the memory API, in one RAM section and across two, chain after chain', () => {
  // Two RAM regions back to back: 0..0x10000 and 0x10000..0x20000 (the same guest RAM as setup()'s).
  const { mem } = twoRegions(0x10000);
  const vq = new SplitVirtqueue(mem, {
    size: SIZE,
    desc: DESC,
    avail: AVAIL,
    used: USED,
    eventIdx: false,
    indirect: true,
  });
  let availIdx = 0;
  const desc = (table: number, i: number, addr: number, len: number, flags: number, next = 0) => {
    const d = new Uint8Array(16);
    const v = new DataView(d.buffer);
    v.setBigUint64(0, BigInt(addr), true);
    v.setUint32(8, len, true);
    v.setUint16(12, flags, true);
    v.setUint16(14, next, true);
    assert.ok(mem.write(table + 16 * i, d));
  };
  const publish = (h: number) => {
    const b = new Uint8Array(2);
    new DataView(b.buffer).setUint16(0, h, true);
    assert.ok(mem.write(AVAIL + 4 + 2 * (availIdx % SIZE), b));
    new DataView(b.buffer).setUint16(0, ++availIdx, true);
    assert.ok(mem.write(AVAIL + 2, b));
  };
  const chain = emptyChain();
  // In one section, then across the boundary (its second descriptor in the other region), then in one again.
  for (const [head, table] of [
    [0, 0x5000],
    [1, 0x10000 - 16],
    [2, 0x6000],
  ] as const) {
    desc(table, 0, DATA + head, 4, NEXT, 1);
    desc(table, 1, 0x18000 + head, 8, WRITE);
    desc(DESC, head, table, 32, IND);
    publish(head);
    assert.ok(vq.popInto(chain));
    assert.equal(chain.head, head);
    assert.deepEqual(chain.readable, [{ addr: DATA + head, len: 4 }], `table at 0x${table.toString(16)}`);
    assert.deepEqual(chain.writable, [{ addr: 0x18000 + head, len: 8 }]);
  }
  desc(DESC, 3, 0x10fff0, 32, IND);
  publish(3);
  assert.throws(() => vq.popInto(chain), /indirect table 0x10fff0\+0x20 is not guest RAM/);
});

test('virtqueue: event index, both ways', () => {
  assert.equal(vringNeedEvent(0, 1, 0), true);
  assert.equal(vringNeedEvent(5, 3, 2), false);
  assert.equal(vringNeedEvent(0xffff, 0, 0xfffe), true); // wraps
  const { vq, desc, publish, dv } = setup({ eventIdx: true });
  for (let i = 0; i < 4; i++) desc(DESC, i, DATA, 4, WRITE);
  // used_event = 1: the driver wants an interrupt once the used index passes 1.
  dv.setUint16(AVAIL + 4 + 2 * SIZE, 1, true);
  publish(0, 1, 2);
  vq.pop();
  vq.push(0, 0);
  assert.equal(vq.needsInterrupt(), true, 'the first interrupt is always given');
  vq.pop();
  vq.push(1, 0);
  assert.equal(vq.needsInterrupt(), true, 'used idx went 1 -> 2, passing used_event 1');
  vq.pop();
  vq.push(2, 0);
  assert.equal(vq.needsInterrupt(), false, 'used_event 1 already passed');
  // Device side: avail_event follows what the device took while it asks for notifications.
  assert.equal(dv.getUint16(USED + 4 + 8 * SIZE, true), 3);
  assert.equal(vq.setNotification(false), false);
  publish(3);
  vq.pop();
  assert.equal(dv.getUint16(USED + 4 + 8 * SIZE, true), 3, 'not moved while notifications are off');
  publish(0);
  assert.equal(vq.setNotification(true), true, 'a buffer arrived while they were off');
  assert.equal(dv.getUint16(USED + 4 + 8 * SIZE, true), 4);
});

test('virtqueue: without event index, NO_INTERRUPT and NO_NOTIFY flags', () => {
  const { vq, desc, publish, dv } = setup();
  desc(DESC, 0, DATA, 4, WRITE);
  publish(0);
  vq.pop();
  vq.push(0, 0);
  assert.equal(vq.needsInterrupt(), true);
  dv.setUint16(AVAIL, VIRTQ_AVAIL_F_NO_INTERRUPT, true);
  assert.equal(vq.needsInterrupt(), false);
  vq.setNotification(false);
  assert.equal(dv.getUint16(USED, true), VIRTQ_USED_F_NO_NOTIFY);
  assert.equal(vq.setNotification(true), false);
  assert.equal(dv.getUint16(USED, true), 0);
});

test('virtqueue: the ring set-up is checked', () => {
  const mem = new FlatMemory(new Uint8Array(RAM));
  const mk = (o: Partial<{ size: number; desc: number; avail: number; used: number }>) => () =>
    new SplitVirtqueue(mem, { size: 8, desc: DESC, avail: AVAIL, used: USED, eventIdx: true, indirect: true, ...o });
  assert.throws(mk({ size: 6 }), VirtqueueError, 'not a power of two');
  assert.throws(mk({ size: 0 }), VirtqueueError);
  assert.throws(mk({ size: 65536 }), VirtqueueError);
  assert.throws(mk({ desc: DESC + 8 }), /misaligned/);
  assert.throws(mk({ avail: AVAIL + 1 }), /misaligned/);
  assert.throws(mk({ used: USED + 2 }), /misaligned/);
  assert.throws(mk({ used: RAM - 8 }), /not in guest RAM/);
  assert.throws(mk({ desc: RAM * 4 }), /not in guest RAM/);
  assert.doesNotThrow(mk({}));
});

/** Each malformed case: what the driver wrote, and what the error must say. */
const MALFORMED: {
  name: string;
  opts?: { indirect?: boolean };
  build: (s: ReturnType<typeof setup>) => void;
  re: RegExp;
}[] = [
  { name: 'head beyond the queue', build: (s) => s.publish(SIZE), re: /≥ queue size/ },
  {
    name: 'next beyond the queue',
    build: (s) => {
      s.desc(DESC, 0, DATA, 4, NEXT, SIZE + 3);
      s.publish(0);
    },
    re: /next 11/,
  },
  {
    name: 'a loop',
    build: (s) => {
      s.desc(DESC, 0, DATA, 4, NEXT, 1);
      s.desc(DESC, 1, DATA, 4, NEXT, 0);
      s.publish(0);
    },
    re: /longer than the queue size/,
  },
  {
    name: 'a self loop in an indirect table',
    build: (s) => {
      s.desc(0x5000, 0, DATA, 4, NEXT, 0);
      s.desc(DESC, 0, 0x5000, 16, IND);
      s.publish(0);
    },
    re: /longer than the queue size/,
  },
  {
    name: 'readable after writable',
    build: (s) => {
      s.desc(DESC, 0, DATA, 4, WRITE | NEXT, 1);
      s.desc(DESC, 1, DATA, 4, 0);
      s.publish(0);
    },
    re: /readable buffer after a device-writable/,
  },
  {
    name: 'a buffer beyond RAM',
    build: (s) => {
      s.desc(DESC, 0, RAM - 2, 4, 0);
      s.publish(0);
    },
    re: /not guest RAM/,
  },
  {
    name: 'a buffer at an address beyond 2^53',
    build: (s) => {
      s.dv.setBigUint64(DESC, 0xfffffffffffff000n, true);
      s.dv.setUint32(DESC + 8, 0x2000, true);
      s.publish(0);
    },
    re: /beyond guest RAM/,
  },
  {
    name: 'a length that runs past RAM',
    build: (s) => {
      s.desc(DESC, 0, DATA, 0xffffffff, 0);
      s.publish(0);
    },
    re: /not guest RAM/,
  },
  {
    name: 'indirect without the feature',
    opts: { indirect: false },
    build: (s) => {
      s.desc(DESC, 0, 0x5000, 16, IND);
      s.publish(0);
    },
    re: /without VIRTIO_F_INDIRECT_DESC/,
  },
  {
    name: 'indirect in indirect',
    build: (s) => {
      s.desc(0x5000, 0, 0x6000, 16, IND);
      s.desc(DESC, 0, 0x5000, 16, IND);
      s.publish(0);
    },
    re: /inside an indirect table/,
  },
  {
    name: 'indirect with NEXT',
    build: (s) => {
      s.desc(DESC, 0, 0x5000, 16, IND | NEXT, 1);
      s.publish(0);
    },
    re: /whole chain/,
  },
  {
    name: 'indirect after a direct descriptor',
    build: (s) => {
      s.desc(DESC, 0, DATA, 4, NEXT, 1);
      s.desc(DESC, 1, 0x5000, 16, IND);
      s.publish(0);
    },
    re: /whole chain/,
  },
  {
    name: 'an empty indirect table',
    build: (s) => {
      s.desc(DESC, 0, 0x5000, 0, IND);
      s.publish(0);
    },
    re: /multiple of 16/,
  },
  {
    name: 'an indirect table of 20 bytes',
    build: (s) => {
      s.desc(DESC, 0, 0x5000, 20, IND);
      s.publish(0);
    },
    re: /multiple of 16/,
  },
  {
    name: 'an indirect table beyond RAM',
    build: (s) => {
      s.desc(DESC, 0, RAM - 16, 32, IND);
      s.publish(0);
    },
    re: /indirect table .* not guest RAM/,
  },
  {
    name: 'next beyond an indirect table',
    build: (s) => {
      s.desc(0x5000, 0, DATA, 4, NEXT, 2);
      s.desc(DESC, 0, 0x5000, 32, IND);
      s.publish(0);
    },
    re: /indirect table size 2/,
  },
  {
    name: 'avail idx far ahead',
    build: (s) => s.dv.setUint16(AVAIL + 2, SIZE + 1, true),
    re: /moved 9 entries ahead/,
  },
];

for (const m of MALFORMED) {
  test(`virtqueue: malformed: ${m.name}`, () => {
    const s = setup(m.opts);
    m.build(s);
    assert.throws(
      () => s.vq.pop(),
      (e: Error) => e instanceof VirtqueueError && m.re.test(e.message),
    );
  });
}

test('guest memory: negative, unsafe, wrapping and out-of-RAM ranges are refused whole', () => {
  const m = new FlatMemory(new Uint8Array(0x1000), 0x10000);
  const b = new Uint8Array(8);
  assert.equal(m.read(0x10000, b), true);
  assert.equal(m.read(0xfff8, b), false, 'below RAM');
  assert.equal(m.read(0x10ffc, b), false, 'runs past the end');
  assert.equal(m.read(-8, b), false);
  assert.equal(m.check(2 ** 53 - 4, 8, false), false, 'wraps past 2^53');
  assert.equal(m.check(0x10000, Number.NaN, false), false);
  assert.equal(m.write(0x10ffc, b.fill(7)), false);
  assert.equal(m.bytes[0xffc], 0, 'a refused write writes nothing');
});

test('guest memory over the memory API: RAM sections only, across section and chunk boundaries', () => {
  const a = new Uint8Array(0x1000),
    b = new Uint8Array(0x2000);
  const chunks = { size: 0x1000, get: (i: number) => b.subarray(i * 0x1000, (i + 1) * 0x1000) };
  const root = MemoryRegion.container('root', 0x100000);
  root.addSubregion(0, MemoryRegion.ram('a', 0x1000, { hostAddr: 0n, bytes: a }));
  root.addSubregion(0x1000, MemoryRegion.ram('b', 0x2000, { hostAddr: 0n, chunks }));
  root.addSubregion(
    0x3000,
    MemoryRegion.ram('rom', 0x1000, { hostAddr: 0n, bytes: new Uint8Array(0x1000) }, { readonly: true }),
  );
  root.addSubregion(0x4000, MemoryRegion.io('mmio', 0x1000, { read: () => 0, write: () => {} }));
  const m = new AddressSpaceMemory(new AddressSpace('mem', root));
  assert.equal(m.write(0xffe, Uint8Array.of(1, 2, 3, 4)), true);
  assert.deepEqual([...a.subarray(0xffe)], [1, 2]);
  assert.deepEqual([...b.subarray(0, 2)], [3, 4]);
  assert.equal(m.write(0x1ffe, Uint8Array.of(5, 6, 7, 8)), true, 'across two chunks of one region');
  assert.deepEqual([...b.subarray(0xffe, 0x1002)], [5, 6, 7, 8]);
  const r = new Uint8Array(4);
  assert.equal(m.read(0xffe, r), true);
  assert.deepEqual([...r], [1, 2, 3, 4]);
  assert.equal(m.check(0x3000, 4, false), true, 'ROM reads');
  assert.equal(m.write(0x2ffe, Uint8Array.of(9, 9, 9, 9)), false, 'ROM does not take writes');
  assert.equal(b[0x1ffe], 0, 'nothing of a refused write lands');
  assert.equal(m.check(0x4000, 4, false), false, 'MMIO is not RAM');
  assert.equal(m.check(0x5000, 4, false), false, 'unassigned');
  // Wholly inside one section (the copy without a walk): small and large, RAM and ROM.
  assert.equal(m.write(0x10, Uint8Array.of(0xaa, 0xbb)), true);
  assert.deepEqual([...a.subarray(0x10, 0x12)], [0xaa, 0xbb]);
  const big = Uint8Array.from({ length: 40 }, (_, i) => i + 1);
  assert.equal(m.write(0x100, big), true);
  const back = new Uint8Array(40);
  assert.equal(m.read(0x100, back), true);
  assert.deepEqual([...back], [...big]);
  assert.equal(m.write(0x3010, Uint8Array.of(1)), false, 'ROM inside one section does not take writes either');
  assert.equal(m.read(0x3010, new Uint8Array(1)), true);
  assert.equal(m.read(0xfff, new Uint8Array(0x2002)), true, 'a read across the last byte of a region walks on');
  assert.equal(m.read(0x2fff, new Uint8Array(0x1001)), true, 'RAM into ROM reads');
  assert.equal(m.read(0x3fff, new Uint8Array(2)), false, 'ROM into MMIO does not');
  // spanInto fills the caller's span for one flat piece, and leaves it alone otherwise.
  const sp = { view: new DataView(new ArrayBuffer(0)), offset: -1 };
  assert.equal(m.spanInto(0x10, 2, false, sp), true);
  assert.equal(sp.view.buffer, a.buffer);
  assert.equal(sp.view.getUint8(sp.offset + 1), 0xbb);
  const before = { ...sp };
  assert.equal(m.spanInto(0xffe, 4, false, sp), false, 'across two regions: not one piece');
  assert.equal(m.spanInto(0x1000, 4, false, sp), false, 'a chunked backing is not one flat piece');
  assert.equal(m.spanInto(0x3000, 4, true, sp), false, 'ROM is no writable span');
  assert.equal(m.spanInto(0x4000, 4, false, sp), false, 'MMIO');
  assert.deepEqual(sp, before, 'a refused span leaves the caller’s as it was');
  assert.equal(m.spanInto(0x3000, 4, false, sp), true, 'ROM is a readable span');
  assert.notEqual(sp.view.buffer, a.buffer, 'of the ROM’s own backing');
});

test('guest memory: the section an access found last is not used after the memory map changed', () => {
  const a = Uint8Array.from({ length: 0x2000 }, () => 0xa1),
    b = Uint8Array.from({ length: 0x2000 }, () => 0xb2);
  const root = MemoryRegion.container('root', 0x100000);
  const ra = MemoryRegion.ram('a', 0x2000, { hostAddr: 0n, bytes: a });
  root.addSubregion(0x10000, ra);
  const m = new AddressSpaceMemory(new AddressSpace('mem', root));
  const r = new Uint8Array(16);
  assert.equal(m.read(0x10100, r), true);
  assert.equal(r[0], 0xa1);
  assert.equal(m.write(0x10200, Uint8Array.of(7)), true, 'the same section again');
  assert.equal(a[0x200], 7);
  assert.equal(m.read(0x11ff8, r), false, 'past the section end from a section found before');
  // A BAR placed over part of the RAM: that part is MMIO now.
  const bar = MemoryRegion.io('bar', 0x1000, { read: () => 0, write: () => {} });
  root.addSubregion(0x10000, bar, 1);
  assert.equal(m.read(0x10100, r), false, 'MMIO over the RAM is not RAM');
  assert.equal(m.write(0x10200, Uint8Array.of(9)), false);
  assert.equal(a[0x200], 7, 'the hidden RAM untouched');
  assert.equal(m.read(0x11100, r), true, 'the RAM beside it still is');
  root.removeSubregion(bar);
  // The RAM replaced by other RAM at the same address, then by ROM.
  root.removeSubregion(ra);
  const rb = MemoryRegion.ram('b', 0x2000, { hostAddr: 0n, bytes: b });
  root.addSubregion(0x10000, rb);
  assert.equal(m.read(0x10100, r), true);
  assert.equal(r[0], 0xb2, 'the new RAM is read, not the old');
  root.removeSubregion(rb);
  root.addSubregion(0x10000, MemoryRegion.ram('rom', 0x2000, { hostAddr: 0n, bytes: b }, { readonly: true }));
  assert.equal(m.write(0x10100, Uint8Array.of(1)), false, 'ROM takes no writes');
  assert.equal(m.check(0x10100, 4, false), true);
});

test("guest memory: read and write take an offset and a length in the caller's buffer (both backings), checked against it", () => {
  const root = MemoryRegion.container('root', 0x10000);
  const a = new Uint8Array(0x1000),
    b = new Uint8Array(0x1000);
  root.addSubregion(0, MemoryRegion.ram('a', 0x1000, { hostAddr: 0n, bytes: a }));
  root.addSubregion(0x1000, MemoryRegion.ram('b', 0x1000, { hostAddr: 0n, bytes: b }));
  for (const m of [new AddressSpaceMemory(new AddressSpace('mem', root)), new FlatMemory(new Uint8Array(0x2000))]) {
    const src = Uint8Array.from({ length: 100 }, (_, i) => i);
    // A small copy (the loop) and a large one (set), each within one section and across two.
    assert.equal(m.write(0x10, src, 3, 4), true);
    assert.equal(m.write(0xfc0, src, 10, 90), true, 'across the sections');
    const dst = new Uint8Array(100).fill(0xee);
    assert.equal(m.read(0x10, dst, 50, 4), true);
    assert.deepEqual([...dst.subarray(48, 56)], [0xee, 0xee, 3, 4, 5, 6, 0xee, 0xee]);
    assert.equal(m.read(0xfc0, dst, 5, 90), true);
    assert.deepEqual([...dst.subarray(5, 95)], [...src.subarray(10, 100)]);
    assert.equal(dst[4], 0xee, 'nothing before the offset');
    assert.equal(m.read(0, dst, 90, 20), false, "beyond the end of the caller's buffer");
    assert.equal(m.read(0, dst, -1, 2), false);
    assert.equal(m.write(0, src, 99, 2), false);
    assert.equal(m.write(0, src, 0, Number.NaN), false);
  }
});

test("virtqueue: readChainInto fills a caller's scratch across buffers and returns the count, at most its length", () => {
  const { vq, desc, publish, mem } = setup();
  mem.bytes.set([1, 2, 3], DATA);
  mem.bytes.set([4, 5], DATA + 0x100);
  desc(DESC, 0, DATA, 3, NEXT, 1);
  desc(DESC, 1, DATA + 0x100, 2, NEXT, 2);
  desc(DESC, 2, DATA + 0x200, 4, WRITE);
  publish(0);
  const c = vq.pop()!;
  const scratch = new Uint8Array(8).fill(0xee);
  assert.equal(vq.readChainInto(c, scratch), 5);
  assert.deepEqual([...scratch], [1, 2, 3, 4, 5, 0xee, 0xee, 0xee]);
  assert.equal(vq.readChainInto(c, scratch.fill(0), 4), 4, 'at most max');
  assert.deepEqual([...scratch.subarray(0, 5)], [1, 2, 3, 4, 0]);
  assert.equal(vq.readChainInto(c, new Uint8Array(2)), 2, 'at most the scratch');
});

test("virtqueue: popInto fills a caller's chain, reusing its buffer objects, and a shorter chain after a longer one leaves no stale buffer", () => {
  const { vq, desc, publish, mem } = setup();
  mem.bytes.set([1, 2, 3, 4, 5], DATA);
  desc(DESC, 0, DATA, 2, NEXT, 1);
  desc(DESC, 1, DATA + 2, 3, NEXT, 2);
  desc(DESC, 2, DATA + 0x100, 4, WRITE | NEXT, 3);
  desc(DESC, 3, DATA + 0x200, 4, WRITE);
  desc(DESC, 4, DATA + 3, 1, NEXT, 5);
  desc(DESC, 5, DATA + 0x300, 2, WRITE);
  publish(0, 4);
  const c = emptyChain();
  assert.equal(vq.popInto(c), true);
  assert.deepEqual(c, {
    head: 0,
    readable: [
      { addr: DATA, len: 2 },
      { addr: DATA + 2, len: 3 },
    ],
    writable: [
      { addr: DATA + 0x100, len: 4 },
      { addr: DATA + 0x200, len: 4 },
    ],
    readableLen: 5,
    writableLen: 8,
  });
  const first = c.readable[0];
  assert.equal(vq.popInto(c), true);
  assert.deepEqual(c, {
    head: 4,
    readable: [{ addr: DATA + 3, len: 1 }],
    writable: [{ addr: DATA + 0x300, len: 2 }],
    readableLen: 1,
    writableLen: 2,
  });
  assert.equal(c.readable[0], first, 'the buffer object was reused');
  assert.deepEqual([...vq.readChain(c)], [4]);
  assert.equal(vq.popInto(c), false, 'the ring is empty');
});

test('virtqueue over the memory API: the rings kept at hand follow the memory map; a ring across two RAM sections works too', () => {
  const a = new Uint8Array(0x10000),
    b = new Uint8Array(0x10000);
  const root = MemoryRegion.container('root', 0x100000);
  const ra = MemoryRegion.ram('a', 0x10000, { hostAddr: 0n, bytes: a });
  root.addSubregion(0, ra);
  const space = new AddressSpace('mem', root);
  const m = new AddressSpaceMemory(space);
  const cfg = { size: SIZE, desc: DESC, avail: AVAIL, used: USED, eventIdx: false, indirect: false };
  const vq = new SplitVirtqueue(m, cfg);
  const put = (bytes: Uint8Array, head: number, idx: number) => {
    const dv = new DataView(bytes.buffer);
    dv.setBigUint64(DESC + 16 * head, BigInt(DATA), true);
    dv.setUint32(DESC + 16 * head + 8, 4, true);
    dv.setUint16(DESC + 16 * head + 12, WRITE, true);
    dv.setUint16(AVAIL + 4 + 2 * ((idx - 1) % SIZE), head, true);
    dv.setUint16(AVAIL + 2, idx, true);
  };
  put(a, 3, 1);
  assert.equal(vq.pop()?.head, 3);
  vq.push(3, 4);
  assert.equal(new DataView(a.buffer).getUint16(USED + 2, true), 1, 'used idx in the first RAM');
  // The guest's RAM is replaced by other RAM at the same address (the map changes): the queue
  // reads and writes the new memory, not the old view.
  const gen = space.generation;
  root.removeSubregion(ra);
  root.addSubregion(0, MemoryRegion.ram('b', 0x10000, { hostAddr: 0n, bytes: b }));
  assert.notEqual(space.generation, gen);
  put(b, 5, 2);
  assert.equal(vq.pop()?.head, 5);
  vq.push(5, 4);
  assert.equal(new DataView(b.buffer).getUint16(USED + 2, true), 2, 'used idx in the new RAM');
  assert.equal(new DataView(a.buffer).getUint16(USED + 2, true), 1, 'the old RAM untouched');

  // A descriptor table that crosses from one RAM section into the next goes through GuestMemory.
  const { a: c, b: d, mem: m2 } = twoRegions(0x1000);
  const vq2 = new SplitVirtqueue(m2, { ...cfg, desc: 0xfc0, avail: 0x100, used: 0x200 }); // 8 × 16 bytes from 0xfc0
  const dvc = new DataView(c.buffer),
    dvd = new DataView(d.buffer);
  // Descriptor 6 is at 0x1020: in the second section.
  dvd.setBigUint64(0x20, BigInt(0x800), true);
  dvd.setUint32(0x28, 4, true);
  dvd.setUint16(0x2c, WRITE, true);
  dvc.setUint16(0x104, 6, true);
  dvc.setUint16(0x102, 1, true);
  const ch = vq2.pop();
  assert.equal(ch?.head, 6);
  assert.deepEqual(ch?.writable, [{ addr: 0x800, len: 4 }]);
});
