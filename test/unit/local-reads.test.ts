// The native answer to a read of a published register (native/local-reads.cc, the step vCPU run
// calls take after each KVM_RUN) on a kvm_run page the test writes: it answers exactly the reads
// readPublished answers with nothing posted, with the same value, counts each once, and leaves
// every other exit to JS untouched. No KVM needed: the step reads the page, not the vCPU.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../core/native.js';
import { RegisterFile, nativeLocalReads, readPublished } from '../../core/kvm/register-file.js';
import { Slot, createChannel } from '../../core/kvm/exit-channel.js';

const DATA = 4096;

function rig() {
  const n = native();
  const L = n.kvmRunLayout;
  const page = new ArrayBuffer(2 * 4096);
  const view = new DataView(page);
  const f = new RegisterFile();
  const w = f.window(0x3f8, 8);
  const counts = f.countsFor(0);
  const ch = createChannel();
  const h = nativeLocalReads(f.view, counts, page, ch);
  /** Writes an exit into the page; returns whether the native step answered it, and the data word after. */
  const exit = (e: { port: number; size?: number; write?: boolean; count?: number; reason?: number }) => {
    const c = n.constants;
    view.setUint32(L.exitReason, e.reason ?? c.KVM_EXIT_IO, true);
    view.setUint8(L.ioDirection, e.write ? c.KVM_EXIT_IO_OUT : c.KVM_EXIT_IO_IN);
    view.setUint8(L.ioSize, e.size ?? 1);
    view.setUint16(L.ioPort, e.port, true);
    view.setUint32(L.ioCount, e.count ?? 1, true);
    view.setBigUint64(L.ioDataOffset, BigInt(DATA), true);
    view.setUint32(DATA, 0xdeadbeef, true);
    const answered = n.localReadsAnswer(h);
    return { answered, data: view.getUint32(DATA, true) };
  };
  return { f, w, counts, ch, exit };
}

test('native local reads answer what readPublished answers, with its value, and nothing else', () => {
  const { f, w, counts, ch, exit } = rig();
  w.publish([-1, 0x11, 0x22, 0x33, 0, 0x60, -1, 0xa5]);
  let answered = 0;
  for (let port = 0x3f0; port < 0x408; port++) {
    for (const size of [1, 2, 4]) {
      const want = readPublished(f.view, port, size);
      const got = exit({ port, size });
      assert.equal(got.answered, want >= 0, `port 0x${port.toString(16)} size ${size}`);
      if (want >= 0) {
        answered++;
        assert.equal(got.data & 0xff, want, `value at 0x${port.toString(16)}`);
        assert.equal(got.data >>> 8, 0xdeadbe, 'only the access size is stored');
      } else assert.equal(got.data, 0xdeadbeef, 'a refused read leaves the page alone');
    }
  }
  assert.equal(answered, 6, 'the six published byte registers');
  assert.equal(ch[Slot.Exits], 6, 'each answer counts as an exit of the vCPU');
  assert.equal(counts[f.view.portSlot[0x3ff]!], 1, "the scratch register's own count");
  const seen = new Map<number, number>();
  f.fold((port, k) => seen.set(port, k));
  assert.deepEqual(
    [...seen.keys()].sort((a, b) => a - b),
    [0x3f9, 0x3fa, 0x3fb, 0x3fc, 0x3fd, 0x3ff],
  );
});

test('native local reads leave writes, strings, MMIO, a change in flight and a posted request to JS', () => {
  const { f, w, ch, exit } = rig();
  w.publish([1, 2, 3, 4, 5, 6, 7, 8], 0xff);
  assert.equal(exit({ port: 0x3ff }).answered, true, 'the baseline read');
  assert.equal(exit({ port: 0x3ff, write: true }).answered, false, 'a write');
  assert.equal(exit({ port: 0x3ff, count: 2 }).answered, false, 'a REP INSB');
  assert.equal(exit({ port: 0x3ff, reason: native().constants.KVM_EXIT_MMIO }).answered, false, 'an MMIO exit');
  const words = f.view.words;
  Atomics.add(words, 0, 1); // odd: a publication in progress
  assert.equal(exit({ port: 0x3ff }).answered, false, 'a change in flight');
  Atomics.add(words, 0, 1);
  assert.equal(exit({ port: 0x3ff }).answered, true, 'the change done');
  // Even a write marked neutral waits: the native step never looks at the ring (JS does).
  Atomics.store(ch, Slot.Head, 1);
  assert.equal(exit({ port: 0x3ff }).answered, false, 'a posted request unanswered');
  Atomics.store(ch, Slot.Tail, 1);
  assert.equal(exit({ port: 0x3ff }).answered, true, 'answered');
  assert.equal(ch[Slot.Exits], 3);
});

test('native local reads refuse buffers that do not fit the register file', () => {
  const n = native();
  const f = new RegisterFile();
  const ch = createChannel();
  assert.throws(() =>
    n.localReadsCreate(new ArrayBuffer(64), f.view.words, f.view.portSlot, f.countsFor(0), ch, 2, 4, 5),
  );
  assert.throws(() =>
    n.localReadsCreate(new ArrayBuffer(8192), f.view.words, new Uint8Array(16), f.countsFor(0), ch, 2, 4, 5),
  );
  assert.throws(() =>
    n.localReadsCreate(new ArrayBuffer(8192), f.view.words, f.view.portSlot, f.countsFor(0), ch, 2, 4, 1e6),
  );
});
