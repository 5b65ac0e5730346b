// The register file the APs answer published reads from (core/kvm/register-file.ts), and what the
// 16550 publishes into it (hw/serial-16550.ts): every published value is what a read returns then,
// and reading it changes nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { RegisterFile, readPublished } from '../../core/kvm/register-file.js';
import { Serial16550 } from '../../hw/serial-16550.js';
import { isTsvmmError } from '../../core/errors.js';
import { ChanKind, Entry, createChannel, entryIndex } from '../../core/kvm/exit-channel.js';

/** A vCPU's ring with one posted, unanswered byte write to `port` (sequence 0). */
function pendingWrite(port: number, kind = ChanKind.Pio): Int32Array {
  const ch = createChannel();
  const e = entryIndex(0);
  ch[e + Entry.Kind] = kind;
  ch[e + Entry.IsWrite] = 1;
  ch[e + Entry.Size] = 1;
  ch[e + Entry.AddrLo] = port;
  ch[e + Entry.Count] = 1;
  return ch;
}

test('a published byte register reads back its latest value; unpublished ports and other sizes ask the device', () => {
  const f = new RegisterFile();
  const w = f.window(0x3f8, 8);
  assert.equal(readPublished(f.view, 0x3ff, 1), -1, 'nothing published yet');
  w.publish([-1, 1, 2, 3, 4, 5, 6, 0xff]);
  assert.equal(readPublished(f.view, 0x3ff, 1), 0xff);
  assert.equal(readPublished(f.view, 0x3f9, 1), 1);
  assert.equal(readPublished(f.view, 0x3f8, 1), -1, '-1: a read the model must see');
  assert.equal(readPublished(f.view, 0x3ff, 2), -1, 'a 2-byte read is not the byte register');
  assert.equal(readPublished(f.view, 0x400, 1), -1, 'outside the window');
  w.publish([0, 1, 2, 3, 4, 5, 6, -1]);
  assert.equal(readPublished(f.view, 0x3f8, 1), 0, 'zero is a value');
  assert.equal(readPublished(f.view, 0x3ff, 1), -1, 'unpublished again');
});

test("behind the vCPU's own unanswered writes only if each changes nothing published", () => {
  const f = new RegisterFile();
  const w = f.window(0x3f8, 8);
  w.publish([-1, 1, 2, 3, 4, 5, 6, 7], 0b1);
  assert.equal(readPublished(f.view, 0x3fd, 1, pendingWrite(0x3f8), 0, 1), 5, 'a neutral write in flight');
  assert.equal(readPublished(f.view, 0x3fd, 1, pendingWrite(0x3ff), 0, 1), -1, 'a scratch write in flight');
  assert.equal(readPublished(f.view, 0x3fd, 1, pendingWrite(0x80), 0, 1), -1, 'a write to an unpublished port');
  assert.equal(readPublished(f.view, 0x3fd, 1, pendingWrite(0x3f8, ChanKind.Mmio), 0, 1), -1, 'an MMIO write');
  assert.equal(readPublished(f.view, 0x3fd, 1, pendingWrite(0x3f8), 0, 0), 5, 'nothing in flight');
  w.publish([-1, 1, 2, 3, 4, 5, 6, 7], 0);
  assert.equal(readPublished(f.view, 0x3fd, 1, pendingWrite(0x3f8), 0, 1), -1, 'no longer neutral');
});

test('windows: out of the port space or overlapping another is refused with a fix', () => {
  const f = new RegisterFile();
  f.window(0x3f8, 8);
  for (const [base, size] of [
    [0x3fc, 8],
    [0xfffc, 8],
    [-1, 1],
    [0x10, 0],
  ] as const) {
    assert.throws(
      () => f.window(base, size),
      (e: unknown) => isTsvmmError(e) && e.code === 'ERR_VM_SETUP' && !!e.fix,
      `${base}+${size}`,
    );
  }
  assert.equal(readPublished(f.view, 0x3fc + 4, 1), -1, 'a refused window took no port');
});

test("a vCPU thread never sees a published register's size from one state and its value from another", async () => {
  // The device thread flips port 0x3ff between unpublished (size 0, value 0) and 0x5a; a reader on
  // another thread must only ever get -1 or 0x5a (the sequence count makes it ask the device
  // thread when a change is in flight).
  const f = new RegisterFile();
  const w = f.window(0x3f8, 8);
  const done = new Int32Array(new SharedArrayBuffer(4));
  const src = `
    const { parentPort, workerData } = require('node:worker_threads');
    import(workerData.mod).then(({ readPublished }) => {
      const { view, done } = workerData;
      let bad = 0, hits = 0, n = 0;
      while (Atomics.load(done, 0) === 0 || n < 1000) {
        const v = readPublished(view, 0x3ff, 1);
        n++;
        if (v === 0x5a) hits++;
        else if (v !== -1) bad++;
      }
      parentPort.postMessage({ bad, hits, n });
    });`;
  const worker = new Worker(src, {
    eval: true,
    workerData: { mod: new URL('../../core/kvm/register-file.js', import.meta.url).href, view: f.view, done },
  });
  const result = new Promise<{ bad: number; hits: number; n: number }>((res, rej) => {
    worker.once('message', res);
    worker.once('error', rej);
  });
  const ones = [-1, -1, -1, -1, -1, -1, -1, 0x5a];
  const none = [-1, -1, -1, -1, -1, -1, -1, -1];
  const t0 = Date.now();
  for (let i = 0; Date.now() - t0 < 300; i++) w.publish(i & 1 ? ones : none);
  Atomics.store(done, 0, 1);
  const r = await result;
  await worker.terminate();
  assert.equal(r.bad, 0, `torn reads: ${r.bad} of ${r.n}`);
});

test("local answers are counted per vCPU and folded into the port's statistics once", () => {
  const f = new RegisterFile();
  f.window(0x3f8, 8);
  const c1 = f.countsFor(1),
    c2 = f.countsFor(2);
  c1[f.view.portSlot[0x3ff]!]! += 3;
  c2[f.view.portSlot[0x3fd]!]! += 2;
  const seen = new Map<number, number>();
  const add = (port: number, n: number): void => void seen.set(port, (seen.get(port) ?? 0) + n);
  f.fold(add);
  f.fold(add);
  assert.deepEqual(
    [...seen].sort((a, b) => a[0] - b[0]),
    [
      [0x3fd, 2],
      [0x3ff, 3],
    ],
  );
});

function publishedUart() {
  const f = new RegisterFile();
  const irq: { level: boolean; lsr: number; iir: number }[] = [];
  const s = new Serial16550({
    output: () => {},
    registers: f.window(0x3f8, 8),
    // What a vCPU thread would read at the moment the interrupt is raised.
    irq: {
      setLevel: (level) =>
        irq.push({ level, lsr: readPublished(f.view, 0x3fd, 1), iir: readPublished(f.view, 0x3fa, 1) }),
    },
  });
  const ops = s.region.ops!;
  const r = (o: number): number => Number(ops.read(o, 1));
  const w = (o: number, v: number): void => ops.write(o, 1, v);
  return { f, s, irq, r, w, local: (o: number) => readPublished(f.view, 0x3f8 + o, 1) };
}

test('16550: every published register reads as published and reading it changes nothing', () => {
  const u = publishedUart();
  // A walk through the states the published set depends on: DLAB, loopback, IER, FIFO, input.
  const steps: [number, number][] = [
    [7, 0x42],
    [3, 0x80],
    [0, 0x01],
    [1, 0x00],
    [3, 0x03],
    [1, 0x0f],
    [2, 0x01],
    [4, 0x1b],
    [0, 0x61],
    [4, 0x0b],
    [1, 0x01],
    [0, 0x62],
    [2, 0x07],
  ];
  for (const [off, v] of steps) {
    u.w(off, v);
    if (off === 4) u.s.input(new Uint8Array([0x33]));
    for (let k = 0; k < 8; k++) {
      const p = u.local(k);
      if (p < 0) continue;
      const before = [0, 1, 2, 3, 4, 5, 6, 7].map(u.local);
      assert.equal(u.r(k), p, `offset ${k} after writing 0x${v.toString(16)} at ${off}`);
      assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7].map(u.local), before, `reading offset ${k} changed nothing`);
    }
  }
});

test('16550: a THR write marked neutral changes no published value (the polled console), and only then', () => {
  const u = publishedUart();
  const ring = pendingWrite(0x3f8);
  const all = () => [0, 1, 2, 3, 4, 5, 6, 7].map(u.local);
  const states: [string, () => void, boolean][] = [
    ['after reset', () => {}, true],
    ['IER.THRI on', () => u.w(1, 0x02), false],
    ['IER.THRI off, RDI on', () => u.w(1, 0x01), true],
    ['DLAB on (THR is DLL)', () => u.w(3, 0x83), false],
    ['DLAB off', () => u.w(3, 0x03), true],
    ['loopback (THR feeds RBR)', () => u.w(4, 0x10), false],
    ['loopback off', () => u.w(4, 0x0b), true],
  ];
  for (const [what, enter, neutral] of states) {
    enter();
    const marked = readPublished(u.f.view, 0x3fd, 1, ring, 0, 1) !== -1;
    assert.equal(marked, neutral, what);
    const before = all();
    u.w(0, 0x41);
    if (marked) assert.deepEqual(all(), before, `${what}: a THR write changed a published value`);
  }
});

test('16550: RBR and a pending THRI identification are never answered locally; DLL/DLM only behind DLAB', () => {
  const u = publishedUart();
  assert.equal(u.local(0), -1, 'RBR pops the FIFO');
  u.w(3, 0x80);
  u.w(0, 0x0c);
  u.w(1, 0x00);
  assert.equal(u.local(0), 0x0c, 'DLL behind DLAB');
  assert.equal(u.local(1), 0x00, 'DLM behind DLAB');
  u.w(3, 0x03);
  assert.equal(u.local(0), -1);
  u.w(1, 0x02); // THRI enabled with an empty THR: pending
  assert.equal(u.local(1), 0x02, 'IER');
  assert.equal(u.local(2), -1, 'reading IIR would clear THRI');
  assert.equal(u.r(2) & 0x0f, 0x02);
  assert.equal(u.local(2), 0x01, 'no interrupt pending: IIR is a plain read');
});

test('16550: input is published (LSR.DR, IIR) before the interrupt that announces it', () => {
  const u = publishedUart();
  u.w(1, 0x01);
  assert.equal(u.local(5)! & 1, 0);
  u.s.input(new Uint8Array([0x41]));
  assert.deepEqual(u.irq, [{ level: true, lsr: 0x61, iir: 0x04 }]);
  assert.equal(u.r(0), 0x41);
  assert.equal(u.local(5), 0x60, 'the pop is published before its answer');
});
