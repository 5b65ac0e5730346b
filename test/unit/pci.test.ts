import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AddressSpace, MemoryRegion } from '../../core/memory/index.js';
import { PciBus, PciDevice, PCI_COMMAND } from '../../hw/pci.js';
import { assignBars, placeBars, barAddress } from '../../hw/pci-bars.js';
import { PciHostBridge } from '../../hw/pci-host.js';

function setup() {
  const mem = MemoryRegion.container('pci-mem', 2 ** 40);
  const io = MemoryRegion.container('io', 0x10000);
  const memAs = new AddressSpace('memory', mem);
  const ioAs = new AddressSpace('io', io);
  const bus = new PciBus(mem, io, 2 ** 40);
  const host = new PciHostBridge(bus);
  ioAs.root.addSubregion(0xcf8, host.conf1);
  const cfgAddr = (devfn: number, reg: number) => 0x80000000 | (devfn << 8) | (reg & 0xfc);
  const cfgRead = (devfn: number, reg: number, size = 4) => {
    ioAs.write(0xcf8, 4, cfgAddr(devfn, reg));
    return Number(ioAs.read(0xcfc + (reg & 3), size));
  };
  const cfgWrite = (devfn: number, reg: number, v: number, size = 4) => {
    ioAs.write(0xcf8, 4, cfgAddr(devfn, reg));
    ioAs.write(0xcfc + (reg & 3), size, v);
  };
  return { mem, io, memAs, ioAs, bus, host, cfgRead, cfgWrite };
}

function device(bus: PciBus) {
  const d = new PciDevice('testdev', { vendor: 0x1b36, device: 0x0005, classCode: 0x00ff00 });
  const hits: number[] = [];
  d.registerBar(
    0,
    'mem32',
    0x1000,
    MemoryRegion.io('bar0', 0x1000, {
      read: (o) => 0x1000 + o,
      write: (o) => {
        hits.push(o);
      },
    }),
  );
  d.registerBar(1, 'io', 0x100, MemoryRegion.io('bar1', 0x100, { read: (o) => 0x2000 + o, write: () => {} }));
  d.registerBar(2, 'mem64', 0x4000, MemoryRegion.io('bar2', 0x4000, { read: (o) => 0x3000 + o, write: () => {} }));
  bus.attach(d, 3);
  return { d, hits };
}

test('conf1: host bridge identity at 00:00.0, empty slots read all-ones', () => {
  const { cfgRead } = setup();
  assert.equal(cfgRead(0, 0), 0x0d578086);
  assert.equal(cfgRead(0, 8) >>> 8, 0x060000);
  assert.equal(cfgRead(5 << 3, 0), 0xffffffff);
  assert.equal(cfgRead(5 << 3, 0, 2), 0xffff);
});

test('conf1: sub-dword data accesses and the enable bit', () => {
  const { cfgRead, ioAs } = setup();
  assert.equal(cfgRead(0, 2, 2), 0x0d57);
  assert.equal(cfgRead(0, 3, 1), 0x0d);
  ioAs.write(0xcf8, 4, 0x00000000); // enable bit clear: no config cycle
  assert.equal(Number(ioAs.read(0xcfc, 4)), 0xffffffff);
  ioAs.write(0xcf8, 4, 0x80010000); // bus 1 does not exist
  assert.equal(Number(ioAs.read(0xcfc, 4)), 0xffffffff);
});

test('BAR sizing protocol: all-ones reads back the size mask and type bits', () => {
  const { bus, cfgRead, cfgWrite } = setup();
  device(bus);
  const df = 3 << 3;
  cfgWrite(df, 0x10, 0xffffffff);
  assert.equal(cfgRead(df, 0x10), 0xfffff000);
  cfgWrite(df, 0x14, 0xffffffff);
  assert.equal(cfgRead(df, 0x14), 0x0000ff01);
  cfgWrite(df, 0x18, 0xffffffff);
  cfgWrite(df, 0x1c, 0xffffffff);
  assert.equal(cfgRead(df, 0x18), 0xffffc004);
  assert.equal(cfgRead(df, 0x1c), 0xffffffff);
});

test('BARs decode only with the command enables, and move when reprogrammed', () => {
  const { bus, memAs, ioAs, cfgWrite } = setup();
  const { hits } = device(bus);
  const df = 3 << 3;
  cfgWrite(df, 0x10, 0xc0000000);
  cfgWrite(df, 0x14, 0xc000);
  assert.equal(Number(memAs.read(0xc0000010, 4)), 0xffffffff, 'not decoded before COMMAND.MEM');
  cfgWrite(df, PCI_COMMAND, 0x3, 2);
  assert.equal(Number(memAs.read(0xc0000010, 4)), 0x1010);
  assert.equal(Number(ioAs.read(0xc004, 1)), 0x2004);
  cfgWrite(df, 0x10, 0xd0000000);
  assert.equal(Number(memAs.read(0xc0000010, 4)), 0xffffffff, 'old address no longer decodes');
  memAs.write(0xd0000020, 4, 1);
  assert.deepEqual(hits, [0x20]);
  cfgWrite(df, PCI_COMMAND, 0x1, 2);
  assert.equal(Number(memAs.read(0xd0000020, 4)), 0xffffffff);
});

test('64-bit BAR: high dword places it above 4 GiB; sizing leaves it unmapped', () => {
  const { bus, memAs, cfgWrite } = setup();
  const { d } = device(bus);
  const df = 3 << 3;
  cfgWrite(df, PCI_COMMAND, 0x2, 2);
  cfgWrite(df, 0x18, 0x00100000);
  cfgWrite(df, 0x1c, 0x1);
  assert.equal(d.bars[2]!.mappedAt, 2 ** 32 + 0x100000);
  assert.equal(Number(memAs.read(2 ** 32 + 0x100008, 4)), 0x3008);
  cfgWrite(df, 0x18, 0xffffffff);
  cfgWrite(df, 0x1c, 0xffffffff);
  assert.equal(d.bars[2]!.mappedAt, undefined, 'an address beyond the bus limit is not decoded');
});

test('hostile writes: read-only IDs, reserved bits and W1C status', () => {
  const { bus, cfgRead, cfgWrite } = setup();
  const { d } = device(bus);
  const df = 3 << 3;
  cfgWrite(df, 0x00, 0x12345678);
  assert.equal(cfgRead(df, 0), 0x00051b36);
  cfgWrite(df, 0x08, 0xffffffff);
  assert.equal(cfgRead(df, 8), 0x00ff0000);
  cfgWrite(df, PCI_COMMAND, 0xffff, 2);
  assert.equal(cfgRead(df, PCI_COMMAND, 2), 0x0547);
  d.config[0x07] = 0x81; // device reports errors
  cfgWrite(df, 0x06, 0x8000, 2); // W1C one of them
  assert.equal(cfgRead(df, 0x07, 1), 0x01);
  for (let reg = 0; reg < 256; reg += 4) cfgWrite(df, reg, 0xffffffff); // garbage everywhere
  assert.equal(cfgRead(df, 0), 0x00051b36);
  assert.equal(d.bars[0]!.mappedAt, undefined, 'all-ones BARs are mid-sizing, not decoded');
});

test('bus: slots are exclusive; detach unmaps the BARs', () => {
  const { bus, memAs, cfgWrite } = setup();
  const { d } = device(bus);
  const other = new PciDevice('other', { vendor: 1, device: 2, classCode: 0 });
  assert.throws(() => bus.attach(other, 3), /slot 3 is taken by testdev/);
  cfgWrite(3 << 3, 0x10, 0xc0000000);
  cfgWrite(3 << 3, PCI_COMMAND, 0x2, 2);
  assert.equal(Number(memAs.read(0xc0000000, 4)), 0x1000);
  bus.detach(d);
  assert.equal(Number(memAs.read(0xc0000000, 4)), 0xffffffff);
});

test('a BAR placed over guest RAM is shadowed by the RAM (as in QEMU), and reappears when moved away', () => {
  // The machine's layout: RAM at priority 0 in system memory, the PCI space under it at -1.
  const system = MemoryRegion.container('system', 2 ** 40);
  const ramBytes = new Uint8Array(0x200000).fill(0x5a);
  system.addSubregion(0, MemoryRegion.ram('ram', 0x200000, { hostAddr: 0n, bytes: ramBytes }));
  const pciMem = MemoryRegion.container('pci-mem', 2 ** 40);
  system.addSubregion(0, pciMem, -1);
  const as = new AddressSpace('memory', system);
  const io = MemoryRegion.container('io', 0x10000);
  const bus = new PciBus(pciMem, io, 2 ** 40);
  const { d } = device(bus);
  d.configWrite(0x10, 4, 0x180000); // BAR0 inside RAM (above the legacy first MiB, where no BAR decodes)
  d.configWrite(PCI_COMMAND, 2, 0x2);
  assert.equal(d.bars[0]!.mappedAt, 0x180000);
  assert.equal(Number(as.read(0x180010, 4)), 0x5a5a5a5a, 'RAM wins');
  d.configWrite(0x10, 4, 0xc0000000);
  assert.equal(Number(as.read(0xc0000010, 4)), 0x1010);
  assert.equal(Number(as.read(0x180010, 4)), 0x5a5a5a5a);
});

test('hot-plug BAR placement: the new device fits around existing BARs, which do not move', () => {
  const { bus } = setup();
  const { d } = device(bus);
  const mmio = { base: 0xc000_0000, end: 0xc001_0000 },
    io = { base: 0xc000, end: 0xc400 };
  assignBars(bus, mmio, io);
  const before = d.bars.map((b) => (b ? barAddress(d, b) : 0));
  assert.deepEqual(before.filter(Boolean), [0xc000_4000, 0xc000, 0xc000_0000]);
  const n = new PciDevice('hot', { vendor: 0x1234, device: 0x11e8, classCode: 0x00ff00 });
  n.registerBar(0, 'mem32', 0x4000, MemoryRegion.io('h0', 0x4000, { read: () => 0, write: () => {} }));
  n.registerBar(1, 'mem32', 0x1000, MemoryRegion.io('h1', 0x1000, { read: () => 0, write: () => {} }));
  n.registerBar(2, 'io', 0x100, MemoryRegion.io('h2', 0x100, { read: () => 0, write: () => {} }));
  bus.attach(n, 4);
  placeBars(bus, n, mmio, io);
  assert.deepEqual(
    d.bars.map((b) => (b ? barAddress(d, b) : 0)),
    before,
    'existing BARs stay put',
  );
  // d has 0xc0000000-0xc0004000 (BAR2) and 0xc0004000-0xc0005000 (BAR0): 0x4000 bytes fit
  // first at 0xc0008000; 0x1000 bytes in the gap at 0xc0005000.
  assert.equal(barAddress(n, n.bars[0]!), 0xc000_8000);
  assert.equal(barAddress(n, n.bars[1]!), 0xc000_5000, 'the small BAR takes the gap below');
  assert.equal(barAddress(n, n.bars[2]!), 0xc100);
  const big = new PciDevice('big', { vendor: 1, device: 2, classCode: 0 });
  big.registerBar(0, 'mem32', 0x10000, MemoryRegion.io('b0', 0x10000, { read: () => 0, write: () => {} }));
  bus.attach(big, 5);
  assert.throws(() => placeBars(bus, big, mmio, io), /no room for big BAR0 \(0x10000 bytes\) in the PCI MMIO window/);
});

test('expansion ROM BAR: sized like a 32-bit BAR, decoded only with its enable bit and memory decoding, read-only; firmware places it disabled', () => {
  const { bus, memAs, cfgRead, cfgWrite } = setup();
  const d = new PciDevice('romdev', { vendor: 0x1b36, device: 0x0005, classCode: 0x00ff00 });
  const image = Uint8Array.from({ length: 0x1000 }, (_, i) => (i * 7 + 1) & 0xff);
  image[0] = 0x55;
  image[1] = 0xaa;
  d.registerRom(
    0x1000,
    MemoryRegion.io('rom', 0x1000, {
      read: (o, s) => {
        let v = 0;
        for (let i = s - 1; i >= 0; i--) v = v * 256 + image[o + i]!;
        return v;
      },
      write: () => {},
    }),
  );
  d.registerBar(0, 'mem32', 0x1000, MemoryRegion.io('bar0', 0x1000, { read: () => 0, write: () => {} }));
  bus.attach(d, 4);
  const devfn = 4 << 3;
  cfgWrite(devfn, 0x30, 0xffffffff);
  assert.equal(cfgRead(devfn, 0x30) >>> 0, 0xfffff001, 'size mask (4 KiB) and the writable enable bit');
  cfgWrite(devfn, 0x30, 0);
  assert.equal(cfgRead(devfn, 0x28), 0, 'the CardBus CIS pointer is not the ROM');
  assignBars(bus, { base: 0xc000_0000, end: 0xc010_0000 }, { base: 0xc000, end: 0x10000 });
  const at = cfgRead(devfn, 0x30) >>> 0;
  assert.ok(
    at >= 0xc000_0000 && at < 0xc010_0000 && (at & 0xfff) === 0,
    `placed in the window, aligned, disabled (0x${at.toString(16)})`,
  );
  const bar0 = cfgRead(devfn, 0x10) >>> 0;
  assert.ok(at + 0x1000 <= bar0 || bar0 + 0x1000 <= at, 'apart from BAR0');
  cfgWrite(devfn, PCI_COMMAND, 2, 2);
  assert.equal(Number(memAs.read(at, 2)), 0xffff, 'enable bit clear: nothing decodes');
  cfgWrite(devfn, 0x30, at | 1);
  assert.equal(Number(memAs.read(at, 2)), 0xaa55, 'ROM signature');
  assert.equal(Number(memAs.read(at + 0x100, 4)), Number(new DataView(image.buffer).getUint32(0x100, true)));
  cfgWrite(devfn, PCI_COMMAND, 0, 2);
  assert.equal(Number(memAs.read(at, 2)), 0xffff, 'memory decoding off: nothing decodes');
  cfgWrite(devfn, PCI_COMMAND, 2, 2);
  assert.equal(Number(memAs.read(at, 1)), 0x55);
  assert.equal(barAddress(d, d.bars[6]!), at);
  assert.throws(
    () => d.registerRom(0x400, MemoryRegion.io('small', 0x400, { read: () => 0, write: () => {} })),
    /power of two ≥ 2 KiB/,
  );
});

test('a multi-function slot: function 0 says so in its header type once another function is there; a function needs function 0', () => {
  const bus = new PciBus(MemoryRegion.container('m', 2 ** 40), MemoryRegion.container('io', 0x10000), 2 ** 40);
  const f0 = new PciDevice('f0', { vendor: 0x1234, device: 0x11e8, classCode: 0xff0000 });
  const f1 = new PciDevice('f1', { vendor: 0x1b36, device: 0x0005, classCode: 0xff0000 });
  assert.throws(() => bus.attach(f1, 3, 1), /slot 3 has no function 0/);
  bus.attach(f0, 3);
  assert.equal(bus.configRead(3 << 3, 0x0e, 1), 0, 'single-function');
  bus.attach(f1, 3, 1);
  assert.equal(f1.devfn, (3 << 3) | 1);
  assert.equal(bus.configRead(3 << 3, 0x0e, 1), 0x80);
  assert.equal((bus.configRead(3 << 3, 0x0c, 4) >>> 16) & 0xff, 0x80, 'in a dword read too');
  assert.equal(bus.configRead((3 << 3) | 1, 0x0e, 1), 0, 'function 1 keeps its own header');
  assert.equal(f0.configRead(0x0e, 1), 0, "the device's own register is untouched");
  assert.equal(bus.configRead((3 << 3) | 1, 0, 2), 0x1b36);
  assert.throws(
    () => bus.attach(new PciDevice('x', { vendor: 1, device: 1, classCode: 0 }), 3, 1),
    /3\.1 is taken by f1/,
  );
  assert.equal(bus.firstFreeSlot(), 0);
  bus.detach(f1);
  assert.equal(bus.configRead(3 << 3, 0x0e, 1), 0, 'single-function again');
});
