import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeSync } from 'node:fs';
import { PciDevice } from '../../hw/pci.js';
import { fakeBoard, MSI_CAP } from '../helpers/fake-vfio-pci.js';
import { MsiCap, msiCapSize, type MsiListener, type MsiMessage, type MsiOptions } from '../../hw/msi.js';

const fmt = (m: MsiMessage) => `${m.addressHi.toString(16)}:${m.addressLo.toString(16)}/${m.data.toString(16)}`;

function setup(opts: Partial<MsiOptions> = {}, extra: Partial<MsiListener> = {}) {
  const log: string[] = [];
  const listener: MsiListener = {
    onControl: (en, n) => log.push(`control ${en ? 'on' : 'off'} ${n}`),
    vectorUse: (v, m) => log.push(`use ${v} ${fmt(m)}`),
    vectorRelease: (v) => log.push(`release ${v}`),
    notify: (v, m) => log.push(`notify ${v} ${fmt(m)}`),
    ...extra,
  };
  const cap = new MsiCap({ capOffset: 0x50, vectors: 4, is64bit: true, perVectorMask: true, ...opts }, listener);
  return { cap, log, take: () => log.splice(0) };
}

test('msi: the four layouts', () => {
  const cases: [boolean, boolean, number, number[], number[]][] = [
    // 64-bit, mask, size, [ctrl RO bits], [data, mask, pending offsets]
    [false, false, 0x0a, [0x000], [0x08]],
    [false, true, 0x14, [0x100], [0x08, 0x0c, 0x10]],
    [true, false, 0x0e, [0x080], [0x0c]],
    [true, true, 0x18, [0x180], [0x0c, 0x10, 0x14]],
  ];
  for (const [is64bit, perVectorMask, size, [ro], offs] of cases) {
    const cap = new MsiCap({ capOffset: 0x60, vectors: 8, is64bit, perVectorMask });
    const what = `64=${is64bit} mask=${perVectorMask}`;
    assert.equal(cap.size, size, what);
    assert.equal(msiCapSize(is64bit, perVectorMask), size);
    assert.equal(cap.dataOffset, offs[0], what);
    assert.equal(cap.maskOffset, offs[1], what);
    assert.equal(cap.pendingOffset, offs[2], what);
    const d = new PciDevice('dev', { vendor: 1, device: 2, classCode: 0 });
    d.config[0x61] = 0x70;
    cap.writeCapabilityTo(d.config, d.wmask);
    assert.equal(d.config[0x60], 0x05);
    assert.equal(d.config[0x61], 0x70, 'next pointer kept');
    assert.equal(d.configRead(0x62, 2), ro! | (3 << 1), `${what}: MMC = log2(8)`);
    assert.equal(cap.configRead(0, 4), (((ro! | 6) << 16) | 0x7005) >>> 0);
    const wm = new DataView(d.wmask.buffer);
    assert.equal(wm.getUint16(0x62, true), 0x0071, `${what}: enable + MME writable`);
    assert.equal(wm.getUint32(0x64, true), 0xfffffffc);
    if (is64bit) assert.equal(wm.getUint32(0x68, true), 0xffffffff);
    assert.equal(wm.getUint16(0x60 + offs[0]!, true), 0xffff);
    if (perVectorMask) {
      assert.equal(wm.getUint32(0x60 + offs[1]!, true), 0xff, 'mask bits of the 8 capable vectors');
      assert.equal(wm.getUint32(0x60 + offs[2]!, true), 0, 'pending read-only');
    }
    // address hi only exists in the 64-bit layout: in the 32-bit one offset 8 is the data
    cap.configWrite(4, 4, 0xfee00003);
    cap.configWrite(8, 4, 0x12345678);
    assert.equal(cap.configRead(4, 4), 0xfee00000, 'address bits 1:0 read-only');
    if (is64bit) {
      assert.equal(cap.configRead(8, 4), 0x12345678);
      assert.equal(cap.message(0).addressHi, 0x12345678);
    } else {
      assert.equal(cap.configRead(8, 4), 0x5678, 'data is 16 bits; 0xa..0xb reserved');
      assert.equal(cap.message(0).addressHi, 0);
      assert.equal(cap.message(0).data, 0x5678);
    }
    assert.equal(cap.configRead(size, 4), 0, 'past the capability reads 0');
    assert.equal(d.configRead(0x64, 4), 0xfee00000, 'mirrored into config space');
  }
});

test('msi: constructor validation', () => {
  const ok: MsiOptions = { capOffset: 0x50, vectors: 1, is64bit: false, perVectorMask: false };
  for (const bad of [
    { vectors: 3 },
    { vectors: 64 },
    { vectors: 0 },
    { capOffset: 0x52 },
    { capOffset: 0x20 },
    { capOffset: 0xf0, perVectorMask: true },
  ]) {
    assert.throws(() => new MsiCap({ ...ok, ...bad } as MsiOptions), RangeError, JSON.stringify(bad));
  }
  assert.doesNotThrow(() => new MsiCap({ ...ok, capOffset: 0xf4 }));
});

test('msi: multiple message enable is clamped to capable; vectors get the data low bits', () => {
  const { cap, take } = setup({ vectors: 4 });
  assert.equal(cap.configRead(2, 2) & 0x0e, 2 << 1);
  cap.configWrite(2, 2, 0x70); // MME = 7 (reserved), disabled
  assert.equal((cap.configRead(2, 2) >> 4) & 7, 2, 'clamped to log2(4)');
  assert.equal(cap.enabledVectors, 4);
  assert.deepEqual(take(), [], 'MME change while disabled is not reported');
  cap.configWrite(4, 4, 0xfee01000);
  cap.configWrite(8, 4, 0);
  cap.configWrite(0xc, 2, 0x4123);
  cap.configWrite(2, 2, 0x71);
  assert.deepEqual(take(), [
    'control on 4',
    'use 0 0:fee01000/4120',
    'use 1 0:fee01000/4121',
    'use 2 0:fee01000/4122',
    'use 3 0:fee01000/4123',
  ]);
  // fewer vectors while enabled
  cap.configWrite(2, 2, 0x11);
  assert.deepEqual(
    take(),
    ['control on 2', 'use 0 0:fee01000/4122', 'use 1 0:fee01000/4123', 'release 2', 'release 3'],
    'two vectors: only bit 0 of the data is the vector number now',
  );
  assert.equal(cap.message(1).data, 0x4123);
  cap.configWrite(2, 2, 0x01);
  assert.deepEqual(take(), ['control on 1', 'use 0 0:fee01000/4123', 'release 1']);
  assert.equal(cap.message(0).data, 0x4123, 'one vector: data unmodified');
  cap.configWrite(2, 2, 0x00);
  assert.deepEqual(take(), ['control off 1', 'release 0']);
  // other control bits are read-only
  cap.configWrite(2, 2, 0xffff);
  assert.equal(cap.configRead(2, 2), 0x0180 | (2 << 1) | (2 << 4) | 1);
  assert.deepEqual(take(), [
    'control on 4',
    'use 0 0:fee01000/4120',
    'use 1 0:fee01000/4121',
    'use 2 0:fee01000/4122',
    'use 3 0:fee01000/4123',
  ]);
});

test('msi: address/data writes while enabled report each changed in-use vector', () => {
  const { cap, take } = setup({ vectors: 2, perVectorMask: false, is64bit: false });
  cap.configWrite(4, 4, 0xfee00000);
  cap.configWrite(8, 2, 0x30);
  cap.configWrite(2, 2, 0x11);
  assert.deepEqual(take(), ['control on 2', 'use 0 0:fee00000/30', 'use 1 0:fee00000/31']);
  cap.configWrite(4, 4, 0xfee02000);
  assert.deepEqual(take(), ['use 0 0:fee02000/30', 'use 1 0:fee02000/31']);
  cap.configWrite(8, 2, 0x31); // low bit is the vector number: messages unchanged
  assert.deepEqual(take(), []);
  cap.configWrite(8, 2, 0x40);
  assert.deepEqual(take(), ['use 0 0:fee02000/40', 'use 1 0:fee02000/41']);
  cap.configWrite(0xc, 4, 0xffffffff); // no mask register here: ignored
  assert.deepEqual(take(), []);
  assert.equal(cap.maskBits, 0);
});

test('msi: per-vector mask, pending bit while masked, delivery on unmask', () => {
  const { cap, take } = setup({ vectors: 4 });
  const mask = 0x10,
    pending = 0x14;
  cap.configWrite(4, 4, 0xfee00000);
  cap.configWrite(0xc, 2, 0x60);
  cap.configWrite(mask, 4, 0b0010);
  cap.configWrite(2, 2, 0x21);
  assert.deepEqual(take(), ['control on 4', 'use 0 0:fee00000/60', 'use 2 0:fee00000/62', 'use 3 0:fee00000/63']);
  cap.setPending(1);
  assert.deepEqual(take(), []);
  assert.equal(cap.configRead(pending, 4), 0b0010);
  cap.configWrite(pending, 4, 0); // pending bits are read-only
  assert.equal(cap.configRead(pending, 4), 0b0010);
  cap.configWrite(mask, 4, 0b1000);
  assert.deepEqual(take(), ['use 1 0:fee00000/61', 'notify 1 0:fee00000/61', 'release 3']);
  assert.equal(cap.configRead(pending, 4), 0);
  cap.setPending(0);
  assert.deepEqual(take(), ['notify 0 0:fee00000/60'], 'in use: delivered at once');
  cap.setPending(3);
  cap.setPending(3);
  cap.configWrite(mask, 1, 0);
  assert.deepEqual(take(), ['use 3 0:fee00000/63', 'notify 3 0:fee00000/63'], 'one delivery for a latched bit');
  // mask bits beyond the capable vectors are read-only 0
  cap.configWrite(mask, 4, 0xffffffff);
  assert.equal(cap.configRead(mask, 4), 0xf);
  assert.equal(cap.maskBits, 0xf);
  assert.deepEqual(take(), ['release 0', 'release 1', 'release 2', 'release 3']);
  for (const v of [4, -1, 0.5]) assert.throws(() => cap.setPending(v), RangeError);
});

test('msi: pending while disabled, beyond the enabled vectors, and without per-vector masking', () => {
  const masked = setup({ vectors: 4 });
  masked.cap.setPending(3); // disabled: latched (per-vector masking present)
  assert.equal(masked.cap.isPending(3), true);
  masked.cap.configWrite(2, 2, 0x21);
  assert.deepEqual(masked.take(), [
    'control on 4',
    'use 0 0:0/0',
    'use 1 0:0/1',
    'use 2 0:0/2',
    'use 3 0:0/3',
    'notify 3 0:0/3',
  ]);
  masked.cap.configWrite(2, 2, 0x11);
  masked.take();
  masked.cap.setPending(3); // enabled, but the function has only 2 vectors: dropped
  assert.equal(masked.cap.isPending(3), false);
  assert.deepEqual(masked.take(), []);

  const shrunk = setup({ vectors: 4 });
  shrunk.cap.setPending(1);
  shrunk.cap.setPending(3);
  shrunk.cap.configWrite(0x10, 4, 0xf); // all masked: nothing deliverable yet
  shrunk.cap.configWrite(2, 2, 0x11); // enable 2 vectors: bit 3 can never be delivered
  assert.equal(shrunk.cap.configRead(0x14, 4), 0b0010, 'pending bits of vectors ≥ nvectors discarded');
  assert.deepEqual(shrunk.take(), ['control on 2']);

  const plain = setup({ vectors: 1, perVectorMask: false });
  plain.cap.setPending(0); // disabled, nowhere to latch: dropped
  assert.equal(plain.cap.isPending(0), false);
  plain.cap.configWrite(2, 2, 1);
  assert.deepEqual(plain.take(), ['control on 1', 'use 0 0:0/0']);
  plain.cap.setPending(0);
  assert.deepEqual(plain.take(), ['notify 0 0:0/0']);
  assert.equal(plain.cap.pendingBits, 0);
  assert.throws(() => plain.cap.setPending(1), RangeError);
});

test('msi: 32 vectors use the full mask and pending registers', () => {
  const { cap, take } = setup({ vectors: 32 });
  cap.configWrite(2, 2, 0x51);
  assert.equal(cap.enabledVectors, 32);
  assert.equal(take().length, 33);
  cap.configWrite(0x10, 4, 0xffffffff);
  assert.equal(cap.configRead(0x10, 4), 0xffffffff);
  assert.equal(take().length, 32);
  cap.setPending(31);
  assert.equal(cap.configRead(0x14, 4), 0x80000000);
  cap.configWrite(0x13, 1, 0x7f);
  assert.deepEqual(take(), ['use 31 0:0/1f', 'notify 31 0:0/1f']);
  assert.equal(cap.configRead(0x14, 4), 0);
});

test('msi: reset reports a disable and zeroes everything but the read-only bits', () => {
  const d = new PciDevice('dev', { vendor: 1, device: 2, classCode: 0 });
  const { cap, take } = setup({ vectors: 2 });
  cap.writeCapabilityTo(d.config, d.wmask);
  cap.configWrite(4, 4, 0xfee00000);
  cap.configWrite(0x10, 4, 2);
  cap.configWrite(2, 2, 0x11);
  cap.setPending(1);
  take();
  cap.reset();
  assert.deepEqual(take(), ['control off 1', 'release 0']);
  assert.equal(cap.configRead(2, 2), 0x0182);
  for (let o = 4; o < cap.size; o += 4) assert.equal(cap.configRead(o, 4), 0, `+${o}`);
  assert.deepEqual([...d.config.subarray(0x50 + 4, 0x50 + cap.size)], new Array(cap.size - 4).fill(0));
  assert.equal(d.configRead(0x52, 2), 0x0182);
});

test('msi: generic PciDevice.configWrite and MsiCap.configWrite agree', () => {
  const d = new PciDevice('dev', { vendor: 1, device: 2, classCode: 0 });
  const { cap, take } = setup({ vectors: 8, is64bit: false, perVectorMask: true });
  cap.writeCapabilityTo(d.config, d.wmask);
  for (const [off, size, v] of [
    [0x54, 4, 0xfee0100f],
    [0x58, 4, 0xffff1234],
    [0x5c, 4, 0xffffffff],
    [0x60, 4, 0xffffffff],
    [0x50, 4, 0xffffffff],
  ] as const) {
    d.configWrite(off, size, v);
    cap.configWrite(off - 0x50, size, v);
  }
  for (let o = 0; o < cap.size; o += 2) assert.equal(d.configRead(0x50 + o, 2), cap.configRead(o, 2), `+${o}`);
  assert.equal(cap.configRead(2, 2), 0x0100 | (3 << 1) | (3 << 4) | 1);
  assert.equal(cap.maskBits, 0xff);
  assert.deepEqual(take(), ['control on 8']);
});

test('msi: a masked vector whose interrupt waits in its source reads pending (pendingPoll before a Pending Bits read), and is delivered on unmask', () => {
  // The source (an irqfd's eventfd behind a masked vector) holds the signal, as the KVM
  // interrupt group does: pending() consumes it.
  const waiting = new Set<number>();
  const polls: string[] = [];
  const { cap, take } = setup(
    { vectors: 4 },
    {
      pendingPoll: (first, end) => {
        polls.push(`${first}-${end}`);
        for (let v = first; v < end; v++) if (cap.isMasked(v) && waiting.delete(v)) cap.setPending(v);
      },
    },
  );
  const mask = 0x10,
    pending = 0x14;
  cap.configWrite(4, 4, 0xfee00000);
  cap.configWrite(0xc, 2, 0x60);
  cap.configWrite(mask, 4, 0b0100);
  cap.configWrite(2, 2, 0x21);
  take();
  waiting.add(2);
  assert.equal(cap.configRead(mask, 4), 0b0100);
  assert.deepEqual(polls, [], 'a read that misses Pending Bits does not poll');
  assert.equal(cap.configRead(pending, 4), 0b0100, 'the waiting interrupt of masked vector 2 reads pending');
  assert.deepEqual(polls, ['0-4']);
  assert.equal(cap.configRead(pending + 1, 1), 0, 'a byte read polls only the vectors it covers (none here)');
  assert.deepEqual(polls, ['0-4']);
  cap.configWrite(mask, 4, 0);
  assert.deepEqual(take(), ['use 2 0:fee00000/62', 'notify 2 0:fee00000/62'], 'delivered once, on unmask');
  assert.equal(cap.configRead(pending, 4), 0);
});

test('vfio-pci MSI: a signal VFIO raised for a masked vector reads in Pending Bits through config space; unmasking takes it', () => {
  const b = fakeBoard({ msi64: true, msiMask: true });
  const mask = MSI_CAP + 0x10,
    pending = MSI_CAP + 0x14;
  b.cfgWrite(MSI_CAP + 4, 4, 0xfee00000);
  b.cfgWrite(MSI_CAP + 8, 4, 0);
  b.cfgWrite(MSI_CAP + 0x0c, 2, 0x41);
  b.cfgWrite(MSI_CAP + 2, 2, 0x1); // enable, vector 0 unmasked: its eventfd is set up
  const efd = b.dev.msiGroup!.notifier(0)!;
  b.cfgWrite(mask, 4, 1);
  assert.equal(b.cfgRead(pending, 4), 0, 'nothing waits yet');
  writeSync(efd, Buffer.from([1, 0, 0, 0, 0, 0, 0, 0])); // the device interrupts while masked
  assert.equal(b.cfgRead(pending, 4), 1, 'the waiting interrupt reads pending');
  assert.equal(b.cfgRead(pending, 4), 1, 'and stays pending until unmasked');
  b.cfgWrite(mask, 4, 0);
  assert.equal(b.cfgRead(pending, 4), 0, 'delivered on unmask');
  assert.ok(
    [...b.kvm.irqfds].some((x) => x.startsWith(`${efd}:`)),
    'the vector is routed again',
  );
  b.dev.destroy();
});
