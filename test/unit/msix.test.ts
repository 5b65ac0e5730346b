import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AddressSpace, MemoryRegion } from '../../core/memory/index.js';
import { PciDevice } from '../../hw/pci.js';
import { MsixCap, type MsiMessage, type MsixListener, type MsixOptions } from '../../hw/msix.js';

const TABLE = 0x1000,
  PBA = 0x3000;
const fmt = (m: MsiMessage) => `${m.addressHi.toString(16)}:${m.addressLo.toString(16)}/${m.data.toString(16)}`;

function recorder(extra: Partial<MsixListener> = {}) {
  const log: string[] = [];
  const listener: MsixListener = {
    onControl: (en, fm) => log.push(`control ${en ? 'on' : 'off'}${fm ? ' masked' : ''}`),
    vectorUse: (v, m) => log.push(`use ${v} ${fmt(m)}`),
    vectorRelease: (v) => log.push(`release ${v}`),
    notify: (v, m) => log.push(`notify ${v} ${fmt(m)}`),
    ...extra,
  };
  return { log, listener, take: () => log.splice(0) };
}

function setup(opts: Partial<MsixOptions> = {}, extra: Partial<MsixListener> = {}) {
  const r = recorder(extra);
  const cap = new MsixCap(
    { vectors: 4, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x800, capOffset: 0x40, ...opts },
    r.listener,
  );
  const root = MemoryRegion.container('root', 0x10000);
  root.addSubregion(TABLE, cap.tableRegion);
  root.addSubregion(PBA, cap.pbaRegion);
  const as = new AddressSpace('mem', root);
  const ctl = (v: number) => cap.configWrite(2, 2, v);
  const entry = (v: number, word: number) => TABLE + v * 16 + word * 4;
  const program = (v: number, lo: number, hi: number, data: number) => {
    as.write(entry(v, 0), 4, lo);
    as.write(entry(v, 1), 4, hi);
    as.write(entry(v, 2), 4, data);
  };
  const mask = (v: number, on: boolean) => as.write(entry(v, 3), 4, on ? 1 : 0);
  const pba = () => Number(as.read(PBA, 4));
  return { cap, as, ctl, entry, program, mask, pba, ...r };
}

test('msix: capability layout, encoding and write mask', () => {
  const cap = new MsixCap({
    vectors: 5,
    tableBar: 2,
    tableOffset: 0x2000,
    pbaBar: 4,
    pbaOffset: 0x3800,
    capOffset: 0x70,
  });
  const d = new PciDevice('dev', { vendor: 0x1234, device: 0x11e8, classCode: 0xff0000 });
  d.config[0x71] = 0x50; // next pointer already in the chain
  d.wmask.fill(0xff, 0x70, 0x7c); // garbage to be overwritten
  cap.writeCapabilityTo(d.config, d.wmask);
  assert.deepEqual([...d.config.subarray(0x70, 0x7c)], [0x11, 0x50, 0x04, 0x00, 0x02, 0x20, 0, 0, 0x04, 0x38, 0, 0]);
  assert.deepEqual([...d.wmask.subarray(0x70, 0x7c)], [0, 0, 0, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0]);
  assert.equal(cap.nextPointer, 0x50);
  assert.equal(cap.configRead(0, 4), 0x00045011);
  assert.equal(cap.configRead(2, 2), 4);
  assert.equal(cap.configRead(4, 4), 0x2002);
  assert.equal(cap.configRead(8, 4), 0x3804);
  // bytes outside the capability read as 0 (for the caller to merge)
  assert.equal(cap.configRead(10, 4), 0x0000);
  assert.equal(cap.configRead(-2, 4), (0x5011 << 16) >>> 0);
  assert.equal(cap.tableRegion.size, 5 * 16);
  assert.equal(cap.pbaRegion.size, 8);
  const big = new MsixCap({ vectors: 2048, tableBar: 0, tableOffset: 0, pbaBar: 1, pbaOffset: 0, capOffset: 0xf4 });
  assert.equal(big.configRead(2, 2), 0x7ff);
  assert.equal(big.pbaRegion.size, 256);
  assert.equal(
    new MsixCap({ vectors: 65, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x800, capOffset: 0x40 }).pbaRegion
      .size,
    16,
  );
  cap.nextPointer = 0x90;
  assert.equal(d.config[0x71], 0x90);
});

test('msix: constructor rejects impossible layouts', () => {
  const ok: MsixOptions = { vectors: 4, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x800, capOffset: 0x40 };
  for (const bad of [
    { vectors: 0 },
    { vectors: 2049 },
    { vectors: 1.5 },
    { tableBar: 6 },
    { pbaBar: -1 },
    { tableOffset: 4 },
    { pbaOffset: 0x801 },
    { capOffset: 0x3c },
    { capOffset: 0x41 },
    { capOffset: 0xf8 },
  ]) {
    assert.throws(() => new MsixCap({ ...ok, ...bad }), RangeError, JSON.stringify(bad));
  }
});

test('msix: vectors reset masked with a zero message', () => {
  const { cap, as, entry } = setup();
  for (let v = 0; v < 4; v++) {
    assert.deepEqual(cap.vectorState(v), { addressLo: 0, addressHi: 0, data: 0, masked: true });
    assert.equal(as.read(entry(v, 3), 4), 1);
    assert.equal(cap.isMasked(v), true);
  }
  assert.equal(cap.enabled, false);
});

test('msix: Linux sequence — enable with function mask, unmask vector 0, clear function mask', () => {
  const { cap, ctl, program, mask, take } = setup();
  ctl(0xc000);
  assert.deepEqual(take(), ['control on masked']);
  assert.equal(cap.enabled, true);
  assert.equal(cap.functionMasked, true);
  program(0, 0xfee00000, 0, 0x4041);
  mask(0, false);
  assert.deepEqual(take(), [], 'function still masked: nothing in use');
  assert.equal(cap.isMasked(0), true);
  ctl(0x8000);
  assert.deepEqual(take(), ['control on', 'use 0 0:fee00000/4041']);
  assert.equal(cap.isMasked(0), false);
  ctl(0x8000);
  assert.deepEqual(take(), [], 'rewriting the same control reports nothing');
});

test('msix: enable and disable report every unmasked vector, ascending, after onControl', () => {
  const { cap, ctl, program, mask, take } = setup();
  for (const v of [3, 1]) {
    program(v, 0xfee00000 + v * 0x1000, 0, 0x30 + v);
    mask(v, false);
  }
  assert.deepEqual(take(), [], 'disabled: nothing in use');
  ctl(0x8000);
  assert.deepEqual(take(), ['control on', 'use 1 0:fee01000/31', 'use 3 0:fee03000/33']);
  ctl(0x0000);
  assert.deepEqual(take(), ['control off', 'release 1', 'release 3']);
  assert.equal(cap.isMasked(1), true);
  // function mask while enabled
  ctl(0x8000);
  take();
  ctl(0xc000);
  assert.deepEqual(take(), ['control on masked', 'release 1', 'release 3']);
  ctl(0x4000);
  assert.deepEqual(take(), ['control off masked'], 'disable while function-masked: nothing was in use');
  ctl(0x0000);
  assert.deepEqual(take(), [], 'function mask alone while disabled is not reported');
});

test('msix: message changes while in use are reported; while masked they wait for the next use', () => {
  const { as, ctl, entry, program, mask, take } = setup();
  program(2, 0xfee00000, 0, 0x20);
  mask(2, false);
  ctl(0x8000);
  assert.deepEqual(take(), ['control on', 'use 2 0:fee00000/20']);
  as.write(entry(2, 2), 4, 0x21);
  assert.deepEqual(take(), ['use 2 0:fee00000/21']);
  as.write(entry(2, 0), 4, 0xfee01000);
  as.write(entry(2, 1), 4, 0x1);
  assert.deepEqual(take(), ['use 2 0:fee01000/21', 'use 2 1:fee01000/21']);
  as.write(entry(2, 2), 4, 0x21);
  assert.deepEqual(take(), [], 'same value: no change');
  mask(2, true);
  assert.deepEqual(take(), ['release 2']);
  program(2, 0xfee02000, 0, 0x22);
  assert.deepEqual(take(), [], 'masked: message change not reported');
  mask(2, false);
  assert.deepEqual(take(), ['use 2 0:fee02000/22']);
});

test('msix: interrupt while vector-masked sets the PBA bit and is delivered on unmask', () => {
  const polls: string[] = [];
  const { cap, as, ctl, program, mask, pba, take } = setup({}, { pbaPoll: (a, b) => polls.push(`${a}-${b}`) });
  program(1, 0xfee00000, 0, 0x41);
  mask(1, false);
  ctl(0x8000);
  take();
  mask(1, true);
  assert.deepEqual(take(), ['release 1']);
  cap.setPending(1);
  assert.deepEqual(take(), [], 'masked: latched, not delivered');
  assert.equal(cap.isPending(1), true);
  assert.equal(pba(), 0b10);
  assert.equal(as.read(PBA, 8), 0b10n);
  assert.deepEqual(polls, ['0-4', '0-4']);
  mask(1, false);
  assert.deepEqual(take(), ['use 1 0:fee00000/41', 'notify 1 0:fee00000/41']);
  assert.equal(cap.isPending(1), false);
  assert.equal(pba(), 0);
});

test('msix: pending vectors are delivered when the function mask is cleared', () => {
  const { cap, ctl, program, mask, pba, take } = setup();
  for (let v = 0; v < 4; v++) {
    program(v, 0xfee00000, 0, 0x50 + v);
    mask(v, v === 2);
  }
  ctl(0xc000);
  take();
  cap.setPending(0);
  cap.setPending(2);
  cap.setPending(3);
  assert.equal(pba(), 0b1101);
  assert.deepEqual(take(), []);
  ctl(0x8000);
  assert.deepEqual(take(), [
    'control on',
    'use 0 0:fee00000/50',
    'notify 0 0:fee00000/50',
    'use 1 0:fee00000/51',
    'use 3 0:fee00000/53',
    'notify 3 0:fee00000/53',
  ]);
  assert.equal(pba(), 0b0100, 'vector 2 is still masked: its bit stays');
  mask(2, false);
  assert.deepEqual(take(), ['use 2 0:fee00000/52', 'notify 2 0:fee00000/52']);
  assert.equal(pba(), 0);
});

test('msix: setPending on an in-use vector delivers at once; while disabled it is latched; bad vectors throw', () => {
  const { cap, ctl, program, mask, pba, take } = setup();
  program(0, 0xfee00000, 0, 0x60);
  mask(0, false);
  cap.setPending(0);
  assert.deepEqual(take(), []);
  assert.equal(pba(), 1, 'MSI-X disabled: latched');
  ctl(0x8000);
  assert.deepEqual(take(), ['control on', 'use 0 0:fee00000/60', 'notify 0 0:fee00000/60']);
  cap.setPending(0);
  assert.deepEqual(take(), ['notify 0 0:fee00000/60']);
  assert.equal(pba(), 0);
  for (const v of [4, -1, 0.5, NaN]) assert.throws(() => cap.setPending(v), RangeError);
  assert.throws(() => cap.message(4), RangeError);
  assert.throws(() => cap.isMasked(99), RangeError);
});

test('msix: without a notify callback pending bits stay set', () => {
  const { cap, ctl, mask, pba } = setup({}, { notify: undefined });
  ctl(0x8000);
  mask(0, false);
  cap.setPending(0);
  assert.equal(pba(), 1);
  assert.equal(cap.isPending(0), true);
  cap.clearPending(0);
  assert.equal(pba(), 0);
});

test('msix: 8-byte table accesses are two dwords, one update', () => {
  const { cap, as, ctl, entry, take } = setup();
  ctl(0x8000);
  take();
  as.write(entry(1, 0), 8, 0x00000002_fee03000n);
  as.write(entry(1, 2), 8, 0x00000000_00000071n); // data 0x71 and control 0 (unmask) at once
  assert.deepEqual(take(), ['use 1 2:fee03000/71'], 'one use with the final message');
  assert.equal(as.read(entry(1, 0), 8), 0x00000002_fee03000n);
  assert.equal(as.read(entry(1, 2), 8), 0x71n);
  as.write(entry(1, 0), 8, 0x00000003_fee04000n);
  assert.deepEqual(take(), ['use 1 3:fee04000/71'], 'address lo+hi while in use: one report');
  as.write(entry(1, 2), 8, 0xffffffff_00000072n);
  assert.deepEqual(take(), ['release 1'], 'masked by the same access that changed data');
  assert.deepEqual(cap.vectorState(1), { addressLo: 0xfee04000, addressHi: 3, data: 0x72, masked: true });
  // misaligned 8-byte access: invalid, dropped
  const before = as.stats.invalid;
  as.write(entry(1, 1), 8, 0n);
  assert.equal(as.stats.invalid, before + 1);
  assert.deepEqual(cap.vectorState(1), { addressLo: 0xfee04000, addressHi: 3, data: 0x72, masked: true });
  // direct calls (a model forwarding from a trapped BAR) get the same checks
  const ops = cap.tableRegion.ops!;
  assert.equal(ops.read(16, 8), 0x3_fee04000n);
  ops.write(20, 8, 0n);
  assert.equal(cap.vectorState(1).addressHi, 3);
  ops.write(16, 8, 0x5_00000010); // a number for an 8-byte write still splits
  assert.deepEqual(cap.message(1), { addressLo: 0x10, addressHi: 5, data: 0x72 });
});

test('msix: hostile table, PBA and Message Control accesses leave the state consistent', () => {
  const { cap, as, ctl, entry, program, mask, pba, take } = setup();
  program(0, 0xfee00000, 0, 0x80);
  mask(0, false);
  ctl(0x8000);
  take();
  const ops = cap.tableRegion.ops!;
  // sub-dword and unaligned table accesses: reads all-ones, writes dropped
  as.write(entry(0, 2), 1, 0xff);
  as.write(entry(0, 2), 2, 0xffff);
  ops.write(8, 2, 0xffff);
  ops.write(9, 4, 0xffffffff);
  ops.write(0x40, 4, 0x1234); // beyond the table (4 vectors = 0x40 bytes)
  ops.write(-4, 4, 0x1234);
  assert.equal(ops.read(8, 2), 0xffff);
  assert.equal(ops.read(9, 4), 0xffffffff);
  assert.equal(ops.read(0x40, 4), 0xffffffff);
  assert.equal(ops.read(0x40, 8), 0xffffffffffffffffn);
  assert.equal(as.read(entry(0, 2), 2), 0xffff, 'invalid via the address space too');
  assert.equal(as.read(TABLE + 0x40, 4), 0xffffffff, 'beyond the region: unassigned');
  assert.deepEqual(cap.vectorState(0), { addressLo: 0xfee00000, addressHi: 0, data: 0x80, masked: false });
  assert.deepEqual(take(), []);
  // reserved vector control bits read as 0, only bit 0 counts
  as.write(entry(0, 3), 4, 0xfffffffe);
  assert.equal(as.read(entry(0, 3), 4), 0);
  assert.deepEqual(take(), []);
  as.write(entry(0, 3), 4, 0xffffffff);
  assert.equal(as.read(entry(0, 3), 4), 1);
  assert.deepEqual(take(), ['release 0']);
  // PBA is read-only
  cap.setPending(0);
  as.write(PBA, 4, 0);
  as.write(PBA, 8, 0xffffffffffffffffn);
  cap.pbaRegion.ops!.write(0, 4, 0xffffffff);
  assert.equal(pba(), 1);
  assert.equal(as.read(PBA + 4, 4), 0, 'bits past the vectors read 0');
  assert.equal(as.read(PBA, 2), 0xffff, 'sub-dword PBA read is invalid');
  // Message Control: table size, reserved bits, BIR/offsets are read-only
  cap.configWrite(0, 4, 0xffffffff);
  assert.equal(cap.configRead(2, 2), 0xc003);
  assert.deepEqual(take(), ['control on masked']);
  cap.configWrite(4, 4, 0xffffffff);
  cap.configWrite(8, 4, 0x12345678);
  cap.configWrite(0, 2, 0xffff);
  assert.equal(cap.configRead(0, 4), 0xc0030011);
  assert.equal(cap.configRead(4, 4), 0);
  assert.equal(cap.configRead(8, 4), 0x800);
  cap.configWrite(2, 1, 0x00); // low byte only: enable bit not touched
  assert.equal(cap.enabled, true);
  cap.configWrite(3, 1, 0x3f); // reserved bits 13:11 and table-size bits: ignored; clears 15/14
  assert.equal(cap.configRead(2, 2), 0x0003);
  assert.deepEqual(take(), ['control off']);
  cap.configWrite(12, 4, 0xffffffff); // past the capability: ignored
  assert.throws(() => cap.configWrite(2, 3, 0), RangeError);
  assert.equal(cap.isPending(0), true, 'PBA survives a disable');
});

test('msix: reset reports a disable, then masks and zeroes everything', () => {
  const { cap, as, ctl, entry, program, mask, pba, take } = setup();
  program(0, 0xfee00000, 0, 0x90);
  mask(0, false);
  mask(1, false);
  ctl(0x8000);
  mask(1, true);
  cap.setPending(1);
  take();
  cap.reset();
  assert.deepEqual(take(), ['control off', 'release 0']);
  assert.equal(cap.enabled, false);
  assert.equal(cap.configRead(2, 2), 3);
  assert.equal(pba(), 0);
  for (let v = 0; v < 4; v++)
    assert.deepEqual(cap.vectorState(v), { addressLo: 0, addressHi: 0, data: 0, masked: true });
  assert.equal(as.read(entry(0, 3), 4), 1);
  // usable again, and reported afresh
  mask(0, false);
  ctl(0x8000);
  assert.deepEqual(take(), ['control on', 'use 0 0:0/0']);
});

test('msix: generic PciDevice.configWrite and MsixCap.configWrite agree; state is mirrored into config', () => {
  const r = recorder();
  const cap = new MsixCap(
    { vectors: 8, tableBar: 1, tableOffset: 0, pbaBar: 1, pbaOffset: 0x800, capOffset: 0x50 },
    r.listener,
  );
  const d = new PciDevice('dev', { vendor: 0x1234, device: 0x5678, classCode: 0 });
  cap.writeCapabilityTo(d.config, d.wmask);
  // the model's way: generic write (wmask) then the state machine
  d.configWrite(0x50, 4, 0xffffffff);
  cap.configWrite(0, 4, 0xffffffff);
  assert.equal(d.configRead(0x52, 2), 0xc007);
  assert.equal(cap.configRead(2, 2), 0xc007);
  assert.deepEqual(r.take(), ['control on masked']);
  // the state machine alone keeps the config bytes in sync
  cap.configWrite(2, 2, 0x8000);
  assert.equal(d.configRead(0x52, 2), 0x8007);
  assert.equal(d.configRead(0x50, 1), 0x11);
  cap.reset();
  assert.equal(d.configRead(0x52, 2), 0x0007);
  assert.deepEqual(r.take(), ['control on', 'control off']);
});

test('msix: a throwing callback does not stop the others; the listener view stays consistent', () => {
  let fail = true;
  const uses: number[] = [];
  const { cap, ctl, mask, take } = setup(
    {},
    {
      vectorUse: (v) => {
        uses.push(v);
        if (fail && v !== 2) throw new Error(`boom ${v}`);
      },
    },
  );
  mask(0, false);
  mask(1, false);
  mask(2, false);
  assert.throws(
    () => ctl(0x8000),
    (e: unknown) => e instanceof AggregateError && e.errors.length === 2,
  );
  assert.deepEqual(uses, [0, 1, 2], 'every vector reported despite the throws');
  assert.equal(cap.enabled, true);
  assert.deepEqual(take(), ['control on']);
  mask(2, true);
  assert.deepEqual(take(), ['release 2']);
  assert.doesNotThrow(() => mask(0, true), 'earlier errors are not rethrown twice');
  assert.deepEqual(take(), ['release 0']);
  fail = false;
  ctl(0x0000);
  assert.deepEqual(take(), ['control off', 'release 1'], 'vector 1 counts as in use despite its throw');
});

test('msix: callbacks may call back into the cap (release drains into setPending, use masks again)', () => {
  const log: string[] = [];
  let cap!: MsixCap;
  let remask = false;
  cap = new MsixCap(
    { vectors: 2, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x800, capOffset: 0x40 },
    {
      onControl: (en, fm) => log.push(`control ${en} ${fm}`),
      vectorUse: (v) => {
        log.push(`use ${v}`);
        if (remask) {
          remask = false;
          cap.tableRegion.ops!.write(v * 16 + 12, 4, 1);
        }
      },
      vectorRelease: (v) => {
        log.push(`release ${v}`);
        cap.setPending(v);
      },
      notify: (v) => log.push(`notify ${v}`),
    },
  );
  const ops = cap.tableRegion.ops!;
  ops.write(12, 4, 0);
  cap.configWrite(2, 2, 0x8000);
  ops.write(12, 4, 1);
  assert.deepEqual(log.splice(0), ['control true false', 'use 0', 'release 0']);
  assert.equal(cap.isPending(0), true);
  remask = true;
  ops.write(12, 4, 0); // use → masks again inside the callback → release → setPending
  assert.deepEqual(log.splice(0), ['use 0', 'release 0']);
  assert.equal(cap.isPending(0), true, 'still pending: the notify waits for a real unmask');
  ops.write(12, 4, 0);
  assert.deepEqual(log.splice(0), ['use 0', 'notify 0']);
  assert.equal(cap.isPending(0), false);
});
