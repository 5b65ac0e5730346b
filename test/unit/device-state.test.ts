// Each device model's save and load (core/state.ts's interface): driven into a state the guest
// can make through its registers, saved, loaded into a fresh instance (what a destination does),
// saved again: the same bytes, the same guest-visible registers. And a section that is short,
// long or of another device is refused by name.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryRegion } from '../../core/memory/index.js';
import { StateError, StateReader, StateWriter, loadFromBytes, saveToBytes, type Migratable } from '../../core/state.js';
import { Serial16550 } from '../../hw/serial-16550.js';
import { I8042 } from '../../hw/i8042.js';
import { AcpiSleepControl } from '../../hw/acpi-pm.js';
import { GenericEventDevice, GED_EVENT_PCI_HOTPLUG } from '../../hw/ged.js';
import { AcpiPciHotplug } from '../../hw/pci-hotplug.js';
import { PciHostBridge } from '../../hw/pci-host.js';
import { PciBus, PciDevice } from '../../hw/pci.js';
import { MsixCap } from '../../hw/msix.js';
import { MsiCap } from '../../hw/msi.js';

const io = (r: MemoryRegion) => r.ops!;

/** save → load into `fresh` → save: identical bytes; returns them. */
function roundTrip(a: Migratable, fresh: Migratable): Uint8Array {
  const bytes = saveToBytes(a);
  loadFromBytes(fresh, bytes);
  assert.deepEqual(saveToBytes(fresh), bytes, `${a.stateId}: save → load → save differs`);
  // Short or long by a byte: refused, naming the section.
  if (bytes.length)
    assert.throws(
      () => loadFromBytes(fresh, bytes.subarray(0, bytes.length - 1)),
      (e: unknown) => {
        return e instanceof StateError && e.message.includes(`section '${a.stateId}'`) && /truncated/.test(e.message);
      },
    );
  assert.throws(
    () => loadFromBytes(fresh, Uint8Array.from([...bytes, 0])),
    /unexpected bytes at the end/,
    `${a.stateId}: a longer section`,
  );
  return bytes;
}

test('serial: registers, divisor latch, receive FIFO and the interrupt line survive', () => {
  const levels: boolean[][] = [[], []];
  const mk = (i: number) => new Serial16550({ output: () => {}, irq: { setLevel: (l) => void levels[i]!.push(l) } });
  const a = mk(0);
  const r = io(a.region);
  r.write(3, 1, 0x83); // DLAB
  r.write(0, 1, 0x01);
  r.write(1, 1, 0x00);
  r.write(3, 1, 0x03); // 8N1
  r.write(7, 1, 0x5a); // scratch
  r.write(2, 1, 0x01); // FIFO on
  r.write(4, 1, 0x0b);
  r.write(1, 1, 0x01); // RX data interrupt
  a.input(Uint8Array.from([0x41, 0x42, 0x43]));
  assert.equal(r.read(0, 1), 0x41); // one byte read: two left
  const b = mk(1);
  const bytes = roundTrip(a, b);
  assert.ok(bytes.length > 8);
  const rb = io(b.region);
  for (const off of [1, 2, 3, 4, 5, 6, 7]) assert.equal(rb.read(off, 1), r.read(off, 1), `register ${off}`);
  assert.equal(rb.read(0, 1), 0x42, 'the FIFO goes on where it was');
  assert.equal(rb.read(0, 1), 0x43);
  assert.equal(levels[1]![0], true, 'the destination drives the line it had (RX data pending)');
  rb.write(3, 1, 0x83);
  assert.equal(rb.read(0, 1), 0x01, 'divisor latch');
});

test('GED and the hot-plug registers: pending events and slots survive, the line follows', () => {
  const lines: boolean[] = [];
  const a = new GenericEventDevice({ setLevel: () => {} });
  a.notify(GED_EVENT_PCI_HOTPLUG);
  const b = new GenericEventDevice({ setLevel: (l) => void lines.push(l) });
  roundTrip(a, b);
  assert.deepEqual(lines.slice(-1), [true]);
  assert.equal(io(b.region).read(0, 4), GED_EVENT_PCI_HOTPLUG);

  const h = new AcpiPciHotplug(
    () => {},
    () => {},
  );
  h.plugged(3);
  h.requestUnplug(5);
  const h2 = new AcpiPciHotplug(
    () => {},
    () => {},
  );
  roundTrip(h, h2);
  assert.equal(io(h2.region).read(0, 4), 1 << 3);
  assert.equal(io(h2.region).read(4, 4), 1 << 5);
});

test('i8042 and the ACPI sleep registers have no state: empty sections that still load and check', () => {
  assert.equal(roundTrip(new I8042({ onReset: () => {} }), new I8042({ onReset: () => {} })).length, 0);
  assert.equal(
    roundTrip(new AcpiSleepControl({ onPowerOff: () => {} }), new AcpiSleepControl({ onPowerOff: () => {} })).length,
    0,
  );
});

function bus(): PciBus {
  return new PciBus(MemoryRegion.container('mem', 2 ** 40), MemoryRegion.container('io', 0x10000), 2 ** 40);
}

test('PCI: config space (command, BARs) comes back and the BARs decode where the guest put them', () => {
  const mk = () => {
    const d = new PciDevice('dev', { vendor: 0x1234, device: 0x11e8, classCode: 0xff0000 });
    d.registerBar(0, 'mem32', 0x1000, MemoryRegion.io('bar0', 0x1000, { read: () => 0, write: () => {} }));
    bus().attach(d, 3);
    return d;
  };
  const a = mk();
  a.configWrite(0x10, 4, 0xfe000000);
  a.configWrite(0x04, 2, 0x0006);
  a.configWrite(0x3c, 1, 11);
  assert.equal(a.bars[0]!.mappedAt, 0xfe000000);
  const b = mk();
  assert.equal(b.bars[0]!.mappedAt, undefined);
  roundTrip(a, b);
  assert.equal(b.stateId, 'pci/00:03.0');
  assert.equal(b.bars[0]!.mappedAt, 0xfe000000, 'BAR decodes at the saved address');
  assert.equal(b.configRead(0x3c, 1), 11);
  // Another device in that slot: refused, with both ids.
  const other = new PciDevice('dev', { vendor: 0x8086, device: 0x1234, classCode: 0xff0000 });
  bus().attach(other, 3);
  assert.throws(() => loadFromBytes(other, saveToBytes(a)), /different device here \(ids 1234:11e8 .*8086:1234/);

  // The host bridge keeps its conf1 address latch with its config space.
  const h = new PciHostBridge(bus());
  io(h.conf1).write(0, 4, 0x80001810);
  const h2 = new PciHostBridge(bus());
  roundTrip(h, h2);
  assert.equal(io(h2.conf1).read(0, 4), 0x80001810);
});

/** A Migratable around a capability (a device model saves it inside its own section). */
const wrap = (id: string, cap: { saveState(w: StateWriter): void; loadState(r: StateReader): void }): Migratable => ({
  stateId: id,
  stateVersion: 1,
  saveState: (w) => cap.saveState(w),
  loadState: (r) => cap.loadState(r),
});

test('MSI-X: table, per-vector masks, function mask and pending bits; the listener hears the vectors in use', () => {
  const opts = { vectors: 4, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x800, capOffset: 0x40 };
  const a = new MsixCap(opts);
  const t = io(a.tableRegion);
  t.write(16, 4, 0xfee01000);
  t.write(24, 4, 0x41);
  t.write(28, 4, 0); // vector 1 unmasked
  t.write(48, 4, 0xfee02000);
  t.write(56, 4, 0x42); // vector 3 stays masked
  a.configWrite(2, 2, 0x8000); // enable
  a.setPending(3);
  const used: number[] = [];
  const b = new MsixCap(opts, { vectorUse: (v) => void used.push(v) });
  roundTrip(wrap('msix', a), wrap('msix', b));
  assert.equal(b.enabled, true);
  assert.deepEqual(b.vectorState(1), { addressLo: 0xfee01000, addressHi: 0, data: 0x41, masked: false });
  assert.equal(b.isPending(3), true);
  assert.equal(b.isPending(1), false);
  assert.deepEqual(used, [1], 'the unmasked vector is set up again on the destination');
  const c = new MsixCap({ ...opts, vectors: 8 });
  assert.throws(() => loadFromBytes(wrap('msix', c), saveToBytes(wrap('msix', a))), /4 vectors in the stream, 8 here/);
});

test('MSI: control, address, data, mask and pending bits', () => {
  const opts = { capOffset: 0x50, vectors: 4, is64bit: true, perVectorMask: true } as const;
  const a = new MsiCap(opts);
  a.configWrite(4, 4, 0xfee00000);
  a.configWrite(12, 2, 0x30);
  a.configWrite(16, 4, 0x2); // vector 1 masked
  a.configWrite(2, 2, 0x21); // enable, 4 vectors
  a.setPending(1);
  const b = new MsiCap(opts);
  roundTrip(wrap('msi', a), wrap('msi', b));
  assert.equal(b.enabled, true);
  assert.equal(b.enabledVectors, 4);
  assert.equal(b.maskBits, 0x2);
  assert.equal(b.pendingBits, 0x2);
  assert.deepEqual(b.message(0), a.message(0));
  const c = new MsiCap({ ...opts, is64bit: false });
  assert.throws(() => loadFromBytes(wrap('msi', c), saveToBytes(wrap('msi', a))), /section 'msi'/);
});
