// RAM in the migration stream: the dirty bitmap (KVM's slot bitmaps merged at any alignment, the
// manual-protection clears KVM accepts), page-granular RAM sections (only the pages a pass sends;
// zero pages as a flag, not rewritten where the destination's page is zero already), and the
// worker thread's protocol (the same sections as the calling thread's encoder, back-pressure).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PageBitmap, clearDirtyRange, popcount, type DirtySlot } from '../../machine/migration/dirty-bitmap.js';
import {
  PAGE_SIZE,
  PAGES_PER_BLOCK,
  RAM_BLOCK,
  decodeRamSection,
  encodeRamSection,
  viewReader,
  zeroPagesJs,
} from '../../machine/migration/stream.js';
import { inlineRamEncoder, WorkerRamEncoder, type RamSection } from '../../machine/migration/ram-encoder.js';
import { saveMachine, loadMachine, type MachineParts } from '../../machine/migration/machine-state.js';
import { bytesSource, iterableSource } from '../../machine/migration/stream.js';

/** A deterministic pseudo-random source (xorshift32). */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

test('popcount counts the bits of any 32-bit word', () => {
  const r = rng(7);
  for (let i = 0; i < 1000; i++) {
    const v = r();
    assert.equal(popcount(v), v.toString(2).replace(/0/g, '').length);
  }
  assert.equal(popcount(0xffffffff), 32);
  assert.equal(popcount(-1), 32);
});

test("dirty bitmap: a slot's KVM bitmap lands at its page of guest RAM at any alignment; blocks and counts follow", () => {
  const r = rng(11);
  for (const first of [0, 1, 31, 32, 33, 64, 100, 255, 256, 1000]) {
    const pages = 700;
    const src = new Uint32Array(Math.ceil(pages / 64) * 2);
    const want = new Set<number>();
    for (let i = 0; i < 120; i++) {
      const p = r() % pages;
      src[p >>> 5]! |= 1 << (p & 31);
      want.add(first + p);
    }
    src[src.length - 1]! |= 0x80000000; // padding beyond the slot's pages: not a page
    const b = new PageBitmap(first + pages + 5);
    assert.equal(b.orAt(first, src, pages), want.size);
    const got = [...Array(b.pages).keys()].filter((p) => b.get(p));
    assert.deepEqual(
      got,
      [...want].sort((a, c) => a - c),
      `first ${first}`,
    );
    assert.equal(b.count(), want.size);
    const blocks = [...new Set(got.map((p) => Math.floor(p / 256)))];
    assert.deepEqual([...b.blocks(256)], blocks);
  }
  assert.throws(() => new PageBitmap(10).orAt(5, new Uint32Array(2), 6), /outside guest RAM/);
  const all = new PageBitmap(70).setAll();
  assert.equal(all.count(), 70, 'setAll sets no page beyond the last');
  assert.deepEqual(all.slice(64, 32), Uint32Array.of(0x3f));
  assert.equal(new PageBitmap(70).slice(0, 64), undefined, 'a slice with nothing set');
});

test("a device's DMA dirty report (bytes, LSB first) lands at its range's page of guest RAM; larger device pages mark every page they hold", () => {
  const r = rng(23);
  for (const [first, devPage] of [
    [0, 4096],
    [37, 4096],
    [64, 8192],
    [5, 2 ** 21],
  ] as const) {
    const pages = 1100;
    const per = devPage / 4096;
    const devPages = Math.ceil(pages / per);
    const report = new Uint8Array(Math.ceil(devPages / 64) * 8); // the kernel's u64-sized bitmap
    const want = new Set<number>();
    for (let i = 0; i < 40; i++) {
      const d = r() % devPages;
      report[d >>> 3]! |= 1 << (d & 7);
      for (let p = d * per; p < Math.min((d + 1) * per, pages); p++) want.add(first + p);
    }
    const b = new PageBitmap(first + pages + 3);
    assert.equal(b.orDeviceReport(first, pages, report, devPage), want.size, `set, page ${devPage}`);
    const got = [...Array(b.pages).keys()].filter((p) => b.get(p));
    assert.deepEqual(
      got,
      [...want].sort((a, c) => a - c),
      `first ${first}, device page ${devPage}`,
    );
  }
  // Bits beyond the range (the u64 padding) are no pages.
  const b = new PageBitmap(20);
  b.orDeviceReport(2, 10, Uint8Array.of(0x00, 0xfc, 0xff, 0xff, 0, 0, 0, 0), 4096);
  assert.equal(b.count(), 0, 'padding bits after page 10 of the range mark nothing');
  assert.throws(() => b.orDeviceReport(0, 10, new Uint8Array(8), 2048), /not a multiple/);
  assert.throws(() => b.orDeviceReport(0, 100, new Uint8Array(8), 4096), /fewer than 100 pages/);
  // A lost report: the whole range.
  const lost = new PageBitmap(100);
  lost.setRange(10, 50);
  assert.equal(lost.count(), 50);
  assert.ok(lost.get(10) && lost.get(59) && !lost.get(9) && !lost.get(60));
  assert.throws(() => lost.setRange(90, 11), /outside guest RAM/);
});

test('manual protection: each clear is 64-page aligned (or reaches the slot end), per slot, with only the bits asked for', () => {
  // Two slots: guest RAM pages [0, 160) and [160, 1000) (a low/high split that is not 64-aligned).
  const slots: DirtySlot[] = [
    { slot: 0, ramPage: 0, pages: 160 },
    { slot: 3, ramPage: 160, pages: 840 },
  ];
  const bits = new PageBitmap(1000);
  for (const p of [130, 159, 160, 161, 200, 383]) bits.set(p);
  const calls: { slot: number; first: number; n: number; pages: number[] }[] = [];
  const block = bits.slice(128, 256)!;
  clearDirtyRange(slots, 128, block, 256, (slot, first, n, w) => {
    const pages = [];
    for (let i = 0; i < n; i++) if (w[i >>> 5]! & (1 << (i & 31))) pages.push(i);
    assert.equal(w.length % 2, 0, 'whole u64 words');
    calls.push({ slot, first, n, pages });
  });
  // Slot 0: pages 128..159 → slot-relative first 128, n to the slot's end (32 pages).
  // Slot 3: RAM pages 160..383 → slot-relative 0..223, widened to 0..256.
  assert.deepEqual(calls, [
    { slot: 0, first: 128, n: 32, pages: [2, 31] },
    { slot: 3, first: 0, n: 256, pages: [0, 1, 40, 223] },
  ]);
  for (const c of calls) {
    const s = slots.find((x) => x.slot === c.slot)!;
    assert.ok(c.first % 64 === 0 && (c.n % 64 === 0 || c.first + c.n === s.pages), 'KVM would accept it');
  }
  // Nothing set in a slot's part: no call for it.
  calls.length = 0;
  const only = new PageBitmap(1000);
  only.set(300);
  clearDirtyRange(slots, 256, only.slice(256, 256)!, 256, (slot, first, n, w) =>
    calls.push({ slot, first, n, pages: [w[0]!] }),
  );
  assert.equal(calls.length, 1);
});

function pattern(pages: number, seed: number): Uint8Array {
  const r = rng(seed);
  const ram = new Uint8Array(pages * PAGE_SIZE);
  for (let p = 0; p < pages; p++)
    if (r() % 3 === 0) ram.fill(1 + (r() % 250), p * PAGE_SIZE + (r() % 4000), (p + 1) * PAGE_SIZE);
  return ram;
}

test('page-granular RAM sections: only the pages asked for travel and land; a zero page is written only where the page is not zero', () => {
  const pages = 100;
  const ram = pattern(pages, 3);
  const send = new PageBitmap(pages);
  for (const p of [0, 1, 2, 5, 31, 32, 33, 64, 99]) send.set(p);
  ram.fill(0, 31 * PAGE_SIZE, 33 * PAGE_SIZE); // pages 31 and 32 zero
  const e = encodeRamSection(
    0,
    pages,
    viewReader((o, l) => ram.subarray(o, o + l)),
    send.words,
  )!;
  assert.equal(e.pages, 9);
  assert.ok(e.zeroPages >= 2);
  const dest = new Uint8Array(pages * PAGE_SIZE).fill(0x5a);
  dest.fill(0, 32 * PAGE_SIZE, 33 * PAGE_SIZE); // page 32 is zero here already
  const writes: number[] = [];
  const view = (o: number, l: number) => dest.subarray(o, o + l);
  const r = decodeRamSection(e.payload, dest.length, view, 2, (o, l, z) => {
    writes.push(o);
    return zeroPagesJs(view(o, l), z);
  });
  assert.deepEqual(r, { offset: 0, pages: 9, span: 100 });
  for (let p = 0; p < pages; p++) {
    const got = dest.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE);
    if (send.get(p)) assert.deepEqual(got, ram.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE), `page ${p}`);
    else
      assert.ok(
        got.every((b) => b === 0x5a),
        `page ${p} was not sent and is untouched`,
      );
  }
  assert.equal(writes.length, 1, "the destination's zero pages were looked at once for the block");
  // Nothing to send: no section.
  assert.equal(encodeRamSection(0, pages, viewReader(view), new Uint32Array(4)), undefined);
  // A payload whose bitmaps and length disagree is refused by name.
  const bad = e.payload.slice();
  bad[12] ^= 0x08; // page 3 marked sent: one data page more than the bytes hold
  assert.throws(
    () => decodeRamSection(bad, dest.length, view, 2),
    /section 'ram': block at 0x0: \d+ bytes for \d+ data pages/,
  );
});

test('a version-1 RAM section (every page, a zero bitmap) still loads', () => {
  const pages = 16;
  const ram = pattern(pages, 5);
  ram.fill(0, 0, PAGE_SIZE);
  const zero = new Uint32Array(1);
  zeroPagesJs(ram, zero);
  const data = [...Array(pages).keys()].filter((p) => !(zero[0]! & (1 << p)));
  const payload = new Uint8Array(12 + 2 + data.length * PAGE_SIZE);
  const v = new DataView(payload.buffer);
  v.setBigUint64(0, BigInt(4 * PAGE_SIZE), true);
  v.setUint32(8, pages, true);
  payload[12] = zero[0]! & 0xff;
  payload[13] = zero[0]! >>> 8;
  data.forEach((p, i) => payload.set(ram.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE), 14 + i * PAGE_SIZE));
  const dest = new Uint8Array(20 * PAGE_SIZE).fill(7);
  decodeRamSection(payload, dest.length, (o, l) => dest.subarray(o, o + l), 1);
  assert.deepEqual(dest.subarray(4 * PAGE_SIZE), ram);
});

async function collect(it: AsyncIterable<RamSection>): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for await (const s of it) out.push(s.section!.slice());
  return out;
}

test('the RAM worker thread makes the sections the calling thread makes, pass after pass, and never runs more than its credits ahead', async () => {
  const pages = 3 * PAGES_PER_BLOCK + 17;
  const shared = new SharedArrayBuffer(pages * PAGE_SIZE);
  const ram = new Uint8Array(shared);
  ram.set(pattern(pages, 9));
  const view = (o: number, l: number) => ram.subarray(o, o + l);
  const enc = await WorkerRamEncoder.start({ shared }, 2);
  try {
    const r = rng(13);
    for (let pass = 0; pass < 3; pass++) {
      const bits = pass === 0 ? new PageBitmap(pages).setAll() : new PageBitmap(pages);
      if (pass) for (let i = 0; i < 50; i++) bits.set(r() % pages);
      const want = await collect(inlineRamEncoder(viewReader(view)).pass(bits));
      assert.deepEqual(await collect(enc.pass(bits)), want, `pass ${pass}`);
    }
    // Back-pressure: a pass of 4 blocks with nobody writing: the worker posts 2 (its credits) and waits.
    const it = enc.pass(new PageBitmap(pages).setAll())[Symbol.asyncIterator]();
    await it.next();
    await new Promise((res) => setTimeout(res, 200));
    assert.ok(enc.unwritten <= 2, `${enc.unwritten} sections ahead of the writer`);
    let n = 1;
    while (!(await it.next()).done) n++;
    assert.equal(n, 4);
  } finally {
    await enc.close();
  }
});

test('saveMachine: a page rewritten while the guest runs goes again alone (not its block); the destination gets every page', async () => {
  const size = 2 * RAM_BLOCK;
  const ram = pattern(size / PAGE_SIZE, 21);
  const parts = (mem: Uint8Array): MachineParts => ({
    description: { memory: size },
    parts: [],
    last: [],
    ram: { size, view: (o, l) => mem.subarray(o, o + l) },
  });
  let syncs = 0;
  const chunks: Uint8Array[] = [];
  const passes: number[] = [];
  const p = await saveMachine(
    parts(ram),
    { write: (b) => void chunks.push(b.slice()) },
    {
      stop: async () => {},
      onPass: (n) => passes.push(n),
      downtimeLimitMs: 0,
      live: {
        start: () => {},
        stop: () => {},
        manual: () => undefined,
        // The guest rewrites page 300 once after the first pass, then nothing.
        sync: (into) => {
          if (syncs++ === 0) {
            ram.fill(0xee, 300 * PAGE_SIZE, 301 * PAGE_SIZE);
            into.set(300);
          }
        },
      },
    },
  );
  assert.deepEqual(passes, [1, 2, 3]);
  const firstPass = size / PAGE_SIZE;
  assert.equal(p.normalPages + p.zeroPages, firstPass + 1, 'the first pass, then the one page rewritten');
  assert.equal(p.precopyBytes! + p.downtimeBytes!, p.bytes);
  const dest = new Uint8Array(size);
  await loadMachine(parts(dest), bytesSource(Buffer.concat(chunks)));
  assert.deepEqual(dest, ram);
});

test("a stream read in pieces of any size (a socket's): RAM goes from the pieces into guest RAM; a changed byte is still refused", async () => {
  const size = 3 * RAM_BLOCK;
  const ram = pattern(size / PAGE_SIZE, 31);
  const parts = (mem: Uint8Array): MachineParts => ({
    description: { memory: size },
    parts: [],
    last: [],
    ram: { size, view: (o, l) => mem.subarray(o, o + l) },
  });
  const chunks: Uint8Array[] = [];
  await saveMachine(parts(ram), { write: (b) => void chunks.push(b.slice()) }, { stop: async () => {} });
  const stream = Buffer.concat(chunks);
  const pieces = (bytes: Uint8Array, seed: number) => {
    const r = rng(seed);
    const out: Uint8Array[] = [];
    for (let o = 0; o < bytes.length; ) {
      const n = 1 + (r() % 70000);
      out.push(bytes.subarray(o, o + n));
      o += n;
    }
    return (async function* () {
      yield* out;
    })();
  };
  for (const seed of [1, 2, 3]) {
    const dest = new Uint8Array(size).fill(0x77);
    await loadMachine(parts(dest), iterableSource(pieces(stream, seed)));
    assert.ok(Buffer.from(dest).equals(Buffer.from(ram)), `pieces of seed ${seed}`);
  }
  const bad = stream.slice();
  bad[bad.length >> 1] ^= 1;
  await assert.rejects(
    loadMachine(parts(new Uint8Array(size)), iterableSource(pieces(bad, 4))),
    /section 'ram': checksum mismatch/,
  );
  await assert.rejects(
    loadMachine(parts(new Uint8Array(size)), iterableSource(pieces(stream.subarray(0, stream.length >> 1), 5))),
    /section 'ram': truncated/,
  );
});
