import { test } from 'node:test';
import assert from 'node:assert/strict';
import { OrderedIntervals } from '../../core/memory/ordered-intervals.js';
import { IovaMap } from '../../core/memory/iova-map.js';
import { IntervalMap } from '../../hw/virtio/interval-map.js';

interface M {
  iova: number;
  size: number;
}

/** A small deterministic generator (the test's sequence is the same every run). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

test('OrderedIntervals: inserts, cursors and removals across chunk splits agree with a sorted array', () => {
  const o = new OrderedIntervals<M>((m, addr) => m.iova + m.size <= addr);
  const model: M[] = [];
  const rand = rng(7);
  let most = 0;
  const find = (addr: number) => model.findIndex((m) => m.iova + m.size > addr);
  for (let step = 0; step < 6000; step++) {
    const page = Math.floor(rand() * 2000);
    const iova = page * 0x1000;
    const k = find(iova);
    const here = k >= 0 ? model[k] : undefined;
    if (rand() < 0.7) {
      if (here && here.iova === iova) continue; // taken
      const m = { iova, size: 0x1000 };
      o.insertAt(o.lowerBound(iova), m);
      model.splice(k < 0 ? model.length : k, 0, m);
    } else if (k >= 0) {
      const n = rand() < 0.03 ? 1 + Math.floor(rand() * 300) : 1; // now and then a run over several chunks
      o.removeAt(o.lowerBound(model[k]!.iova), n);
      model.splice(k, n);
    }
    most = Math.max(most, model.length);
    if (step % 500 === 0 || step === 5999) {
      assert.equal(o.size, model.length);
      assert.deepEqual(o.values(), model);
      // lowerBound and the cursor walk agree with the array everywhere.
      for (const addr of [0, iova, iova + 1, 0x1000 * 2000, 0x1000 * 2500]) {
        const p = o.lowerBound(addr);
        const j = find(addr);
        assert.equal(o.at(p), j >= 0 ? model[j] : undefined, `lowerBound(0x${addr.toString(16)})`);
        let walked = 0;
        for (; o.at(p) !== undefined; o.next(p)) walked++;
        assert.equal(walked, j >= 0 ? model.length - j : 0);
      }
    }
  }
  assert.ok(most > 256, `enough intervals to split chunks (${most})`);
  assert.deepEqual(o.clear(), model);
  assert.equal(o.size, 0);
  assert.equal(o.at(o.lowerBound(0)), undefined);
});

test('IovaMap and IntervalMap: take and remove by position in a map of thousands', () => {
  const m = new IovaMap<M>();
  const iv = new IntervalMap<number>();
  // Linux hands out IOVAs top down: every insert lands at the front.
  for (let i = 4000; i > 0; i--) {
    assert.equal(m.add({ iova: i * 0x1000, size: 0x1000 }), undefined);
    iv.insert(i * 0x1000, i * 0x1000 + 0xfff, i);
  }
  assert.equal(m.size, 4000);
  assert.equal(m.add({ iova: 0x1800, size: 0x1000 })?.iova, 0x1000, 'an overlap is refused');
  // An unmap of 300 pages in the middle runs over chunk boundaries.
  const t = m.take(1000 * 0x1000, 300 * 0x1000);
  assert.ok(t.ok && t.taken.length === 300 && t.taken[0]!.iova === 1000 * 0x1000);
  assert.equal(m.size, 3700);
  assert.equal(m.at(1000 * 0x1000), undefined);
  assert.equal(m.at(1300 * 0x1000)?.iova, 1300 * 0x1000);
  assert.equal(m.firstOverlapping(999 * 0x1000, 0x3000)?.iova, 999 * 0x1000);
  const s = m.take(0x1800, 0x1000);
  assert.ok(!s.ok && s.straddling.iova === 0x1000, 'a range that would split a mapping takes nothing');
  const one = m.at(2000 * 0x1000)!;
  assert.ok(m.delete(one));
  assert.ok(!m.delete(one));
  assert.equal(m.size, 3699);
  assert.equal(m.clear().length, 3699);

  assert.equal(iv.intersecting(10 * 0x1000, 12 * 0x1000 + 5).length, 3);
  assert.ok(iv.overlaps(4000 * 0x1000 + 0xfff, 5000 * 0x1000));
  assert.ok(!iv.overlaps(4001 * 0x1000, 5000 * 0x1000));
  assert.ok(iv.remove(11 * 0x1000));
  assert.ok(!iv.remove(11 * 0x1000 + 1));
  assert.deepEqual(
    iv.intersecting(10 * 0x1000, 12 * 0x1000).map((x) => x.value),
    [10, 12],
  );
  assert.throws(() => iv.insert(12 * 0x1000 + 8, 12 * 0x1000 + 9, 0), /overlaps/);
  assert.equal(iv.size, 3999);
  // A run of 300 across chunk boundaries goes in one removal (an UNMAP of a scatter-gather list's range).
  const run = iv.intersecting(2000 * 0x1000, 2300 * 0x1000 - 1);
  assert.equal(run.length, 300);
  assert.ok(!iv.removeRun(2000 * 0x1000 + 1, 300), 'no interval starts there: nothing removed');
  assert.ok(iv.removeRun(run[0]!.start, run.length));
  assert.equal(iv.size, 3699);
  assert.deepEqual(
    iv.intersecting(1999 * 0x1000, 2300 * 0x1000).map((x) => x.value),
    [1999, 2300],
  );
  iv.removeRun(3999 * 0x1000, 5);
  assert.equal(iv.size, 3697, 'a run reaching past the end stops there');
  iv.clear();
  assert.equal(iv.size, 0);
});
