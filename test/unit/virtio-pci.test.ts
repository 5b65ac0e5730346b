import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { VirtioContext, VirtioDevice } from '../../hw/virtio/device.js';
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_VERSION_1,
  VIRTIO_STATUS_ACKNOWLEDGE as ACK,
  VIRTIO_STATUS_DEVICE_NEEDS_RESET,
  VIRTIO_STATUS_DRIVER as DRV,
  VIRTIO_STATUS_DRIVER_OK as DOK,
  VIRTIO_STATUS_FEATURES_OK as FOK,
} from '../../hw/virtio/device.js';
import {
  CAP_PCI_CFG,
  COMMON,
  DEVICE_OFF,
  ISR_OFF,
  NOTIFY_OFF,
  PIO_NOTIFY_BAR,
  VIRTIO_BAR,
  VIRTIO_MSI_NO_VECTOR,
  type VirtioNotifyBinder,
} from '../../hw/virtio/pci.js';
import { PciBus, PCI_COMMAND, PCI_COMMAND_INTX_DISABLE, PCI_COMMAND_IO, PCI_COMMAND_MEMORY } from '../../hw/pci.js';
import { MemoryRegion } from '../../core/memory/index.js';
import { VirtioTestDriver, queueBase } from '../helpers/virtio-driver.js';

const DEV_FEATURE = 1n << 5n;

/** A device that answers each request by copying its readable bytes, reversed, into its writable ones. */
class EchoDevice implements VirtioDevice {
  readonly deviceId = 0x3f;
  readonly features = DEV_FEATURE;
  readonly queueSizes = [16, 8];
  readonly configSize = 8;
  readonly cfg = new Uint8Array(8).fill(0xa5);
  ctx: VirtioContext | undefined;
  resets = 0;
  readConfig(off: number, size: number): number {
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + this.cfg[off + i]!;
    return v;
  }
  writeConfig(off: number, size: number, value: number): void {
    for (let i = 0; i < size; i++) this.cfg[off + i] = (value >>> (8 * i)) & 0xff;
  }
  activate(ctx: VirtioContext): void {
    this.ctx = ctx;
  }
  queueNotify(q: number): void {
    const vq = this.ctx!.queues[q]!;
    let pushed = false;
    for (let c = vq.pop(); c; c = vq.pop(), pushed = true) vq.push(c.head, vq.writeChain(c, vq.readChain(c).reverse()));
    if (pushed) this.ctx!.interruptQueue(q);
  }
  reset(): void {
    this.resets++;
    this.ctx = undefined;
  }
}

const ALL = ACK | DRV | FOK | DOK;
const F = VIRTIO_F_VERSION_1 | DEV_FEATURE;

function setup() {
  const echo = new EchoDevice();
  const d = new VirtioTestDriver(echo);
  return { echo, d };
}

/** Walks the capability list: each vendor capability's type, BAR, offset and length. */
function vendorCaps(d: VirtioTestDriver) {
  const c = d.dev.config;
  const v = new DataView(c.buffer);
  const out: { at: number; type: number; bar: number; offset: number; length: number; len: number }[] = [];
  const ids: number[] = [];
  for (let p = c[0x34]!; p; p = c[p + 1]!) {
    ids.push(c[p]!);
    if (c[p] === 0x09)
      out.push({
        at: p,
        type: c[p + 3]!,
        bar: c[p + 4]!,
        offset: v.getUint32(p + 8, true),
        length: v.getUint32(p + 12, true),
        len: c[p + 2]!,
      });
  }
  return { caps: out, ids };
}

test('virtio-pci: IDs and the capabilities a modern driver looks for', () => {
  const { d } = setup();
  assert.equal(d.dev.configRead(0, 2), 0x1af4);
  assert.equal(d.dev.configRead(2, 2), 0x1040 + 0x3f);
  assert.equal(d.dev.configRead(8, 1), 1, 'revision 1: modern only');
  assert.equal(d.dev.configRead(0x2c, 2), 0x1af4);
  assert.ok(d.dev.configRead(0x2e, 2) >= 0x40);
  assert.equal(d.dev.configRead(0x3d, 1), 1, 'INTA#');
  const { caps, ids } = vendorCaps(d);
  assert.deepEqual(ids, [0x11, 9, 9, 9, 9, 9], 'MSI-X, then the five virtio capabilities');
  const byType = new Map(caps.map((c) => [c.type, c]));
  for (const t of [1, 2, 3, 4]) assert.equal(byType.get(t)!.bar, VIRTIO_BAR);
  assert.equal(byType.get(1)!.length, 0x40);
  assert.equal(byType.get(3)!.offset, ISR_OFF);
  assert.equal(byType.get(4)!.offset, DEVICE_OFF);
  assert.equal(byType.get(4)!.length, 8);
  const n = byType.get(2)!;
  assert.equal(n.len, 20);
  assert.equal(n.offset, NOTIFY_OFF);
  assert.equal(d.dev.configRead(n.at + 16, 4), 4, 'notify_off_multiplier');
  assert.equal(byType.get(5)!.len, 20, 'the PCI config access capability');
  assert.equal(d.dev.bar.type, 'mem64');
});

test('virtio-pci: feature negotiation refuses what was not offered, and legacy drivers', () => {
  const { d } = setup();
  assert.equal(d.deviceFeatures(), DEV_FEATURE | VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC);
  d.common('deviceFeatureSelect', 4, 2);
  assert.equal(d.common('deviceFeature', 4), 0);
  assert.equal(d.negotiate(DEV_FEATURE), false, 'no VERSION_1');
  assert.equal(d.negotiate(VIRTIO_F_VERSION_1 | (1n << 40n)), false, 'bit 40 was not offered');
  assert.equal(d.negotiate(VIRTIO_F_VERSION_1 | (1n << 7n)), false, 'bit 7 was not offered');
  assert.equal(d.negotiate(F), true);
  // Settled once FEATURES_OK is set.
  d.setDriverFeatures(VIRTIO_F_VERSION_1);
  assert.equal(d.dev.negotiated, F);
  d.common('driverFeatureSelect', 4, 0);
  assert.equal(d.common('driverFeature', 4), Number(DEV_FEATURE));
});

test('virtio-pci: queue registers, enable, and reset by writing 0', () => {
  const { d, echo } = setup();
  assert.equal(d.common('numQueues', 2), 2);
  d.common('queueSelect', 2, 1);
  assert.equal(d.common('queueSize', 2), 8);
  d.common('queueSize', 2, 6);
  assert.equal(d.common('queueSize', 2), 8, 'not a power of two: ignored');
  d.common('queueSize', 2, 32);
  assert.equal(d.common('queueSize', 2), 8, 'larger than the maximum: ignored');
  d.common('queueSize', 2, 4);
  assert.equal(d.common('queueSize', 2), 4);
  d.common('queueSelect', 2, 2);
  assert.equal(d.common('queueSize', 2), 0, 'no queue 2');
  d.common('queueSelect', 2, 0);
  d.common('queueMsixVector', 2, 2);
  assert.equal(d.common('queueMsixVector', 2), 2);
  d.common('queueMsixVector', 2, 3);
  assert.equal(d.common('queueMsixVector', 2), VIRTIO_MSI_NO_VECTOR, '3 vectors in the table: 3 cannot be mapped');
  d.common('configMsixVector', 2, 0);
  assert.equal(d.common('configMsixVector', 2), 0);
  assert.equal(d.common('queueNotifyOff', 2), 0);

  assert.ok(d.init(F, 2));
  assert.equal(d.status(), ALL);
  d.common('queueSelect', 2, 0);
  assert.equal(d.common('queueEnable', 2), 1);
  assert.equal(d.common('queueDesc', 4), queueBase(0));
  // Ring addresses of an enabled queue do not change.
  d.common('queueDesc', 4, 0x1234000);
  assert.equal(d.common('queueDesc', 4), queueBase(0));
  d.common('queueEnable', 2, 0);
  assert.equal(d.common('queueEnable', 2), 1, 'disabling needs VIRTIO_F_RING_RESET');

  const resets = echo.resets;
  d.status(0);
  assert.equal(echo.resets, resets + 1);
  assert.equal(d.status(), 0);
  for (const q of [0, 1]) {
    d.common('queueSelect', 2, q);
    assert.equal(d.common('queueEnable', 2), 0);
    assert.equal(d.common('queueDesc', 4), 0);
    assert.equal(d.common('queueMsixVector', 2), VIRTIO_MSI_NO_VECTOR);
  }
  d.common('queueSelect', 2, 1);
  assert.equal(d.common('queueSize', 2), 8, 'the size is the maximum again');
  assert.equal(d.common('configMsixVector', 2), VIRTIO_MSI_NO_VECTOR);
  assert.equal(d.dev.negotiated, 0n);
});

test('virtio-pci: requests flow, with INTx and the ISR when MSI-X is off', () => {
  const { d } = setup();
  assert.ok(d.init(F | VIRTIO_F_INDIRECT_DESC, 2));
  const { addrs } = d.submit(0, [{ data: Uint8Array.of(1, 2, 3) }, { writeLen: 3 }]);
  assert.deepEqual(d.takeUsed(0), [{ id: 0, len: 3 }]);
  const out = new Uint8Array(3);
  d.mem.read(addrs[1]!, out);
  assert.deepEqual([...out], [3, 2, 1]);
  assert.equal(d.irq.level, true);
  assert.equal(d.dev.configRead(6, 1) & 0x08, 0x08, 'PCI status: interrupt');
  // INTx disable in the command register masks the line but not the ISR.
  d.dev.configWrite(PCI_COMMAND, 2, PCI_COMMAND_INTX_DISABLE);
  assert.equal(d.irq.level, false);
  d.dev.configWrite(PCI_COMMAND, 2, 0);
  assert.equal(d.irq.level, true);
  assert.equal(d.isr(), 1);
  assert.equal(d.irq.level, false, 'reading the ISR clears it');
  assert.equal(d.isr(), 0);
  // Indirect chains go through the transport too.
  d.submit(0, [{ data: Uint8Array.of(7, 8) }, { writeLen: 2 }], { indirect: true });
  assert.deepEqual(d.takeUsed(0), [{ id: 2, len: 2 }], 'head 2: the first chain took descriptors 0 and 1');
});

test('virtio-pci: MSI-X vectors per queue, masked ones wait in the PBA', () => {
  const { d } = setup();
  assert.ok(d.negotiate(F));
  d.setupQueue(0, undefined, 1);
  d.setupQueue(1, undefined, VIRTIO_MSI_NO_VECTOR);
  d.common('configMsixVector', 2, 0);
  d.status(ALL);
  const msix = d.dev.msix;
  d.dev.configWrite(0x40 + 2, 2, 0x8000); // MSI-X enable
  // Vector 1: address, data, unmasked.
  const table = msix.tableRegion.ops!;
  table.write(16, 4, 0xfee00000);
  table.write(24, 4, 0x41);
  table.write(28, 4, 0);
  d.submit(0, [{ writeLen: 0 }]);
  assert.deepEqual(d.irq.msi, [1]);
  assert.equal(d.irq.level, false, 'no INTx with MSI-X on');
  d.submit(1, [{ writeLen: 0 }]);
  assert.deepEqual(d.irq.msi, [1], 'NO_VECTOR: no interrupt');
  table.write(28, 4, 1); // mask vector 1
  d.submit(0, [{ writeLen: 0 }]);
  assert.deepEqual(d.irq.msi, [1]);
  assert.equal(msix.isPending(1), true);
  table.write(28, 4, 0);
  assert.deepEqual(d.irq.msi, [1, 1], 'delivered on unmask');
});

test('virtio-pci: event index suppresses interrupts as the driver asks', () => {
  const { d } = setup();
  assert.ok(d.init(F | VIRTIO_F_EVENT_IDX, 2));
  const r = d.ring(0);
  d.w16(r.usedEvent, 5); // interrupt me once the used index passes 5
  d.submit(0, [{ writeLen: 0 }]);
  assert.equal(d.irq.level, true, 'the first completion always interrupts');
  d.isr();
  d.submit(0, [{ writeLen: 0 }]);
  assert.equal(d.irq.level, false, 'used idx 2 has not passed 5');
  assert.equal(d.r16(r.availEvent), 2, 'the device asks for a notification past what it took');
});

test('virtio-pci: a broken ring sets DEVICE_NEEDS_RESET, interrupts the config vector, and stops the device', () => {
  const { d } = setup();
  assert.ok(d.init(F, 2));
  d.writeDesc(d.ring(0).desc, 0, 0xdead0000, 16, 0, 0); // beyond the test's 1 MiB of RAM
  d.publish(0, 0);
  assert.equal(d.status() & VIRTIO_STATUS_DEVICE_NEEDS_RESET, VIRTIO_STATUS_DEVICE_NEEDS_RESET);
  assert.equal(d.isr(), 2, 'a config change');
  d.submit(0, [{ writeLen: 0 }]);
  assert.deepEqual(d.takeUsed(0), [], 'nothing more until reset');
  // The driver may try to write DRIVER_OK again; the bit stays.
  d.status(ALL);
  assert.equal(d.status() & VIRTIO_STATUS_DEVICE_NEEDS_RESET, VIRTIO_STATUS_DEVICE_NEEDS_RESET);
  assert.ok(d.init(F, 2), 'a reset brings it back');
  assert.equal(d.status(), ALL);
  d.submit(0, [{ writeLen: 0 }]);
  assert.equal(d.takeUsed(0).length, 1);
});

test('virtio-pci: queue set-up errors need a reset too', () => {
  const { d } = setup();
  d.status(ACK | DRV);
  d.common('queueSelect', 2, 0);
  d.common('queueEnable', 2, 1);
  assert.ok(d.status() & VIRTIO_STATUS_DEVICE_NEEDS_RESET, 'enabled before FEATURES_OK');
  assert.ok(d.negotiate(F));
  d.common('queueSelect', 2, 0);
  d.common('queueDesc', 4, 0x10008); // misaligned
  d.common('queueEnable', 2, 1);
  assert.ok(d.status() & VIRTIO_STATUS_DEVICE_NEEDS_RESET);
  assert.ok(d.negotiate(F));
  d.common('queueSelect', 2, 0);
  d.write(COMMON.queueDriver + 4, 4, 0x100); // above 2^40
  d.common('queueEnable', 2, 1);
  assert.ok(d.status() & VIRTIO_STATUS_DEVICE_NEEDS_RESET);
  assert.ok(d.negotiate(F));
  d.status(ACK | DRV | DOK);
  assert.ok(d.status() & VIRTIO_STATUS_DEVICE_NEEDS_RESET, 'DRIVER_OK without FEATURES_OK');
});

test('virtio-pci: device config through the BAR and through the PCI config access capability', () => {
  const { d, echo } = setup();
  assert.equal(d.readConfig(0, 4), 0xa5a5a5a5);
  d.writeConfig(2, 2, 0x1234);
  assert.equal(echo.cfg[2], 0x34);
  assert.equal(d.readConfig(8, 4), 0, 'beyond the device config');
  // virtio_pci_cfg_cap: bar 4, offset 0x14 (device_status), length 1.
  d.status(ACK);
  d.dev.configWrite(CAP_PCI_CFG + 4, 1, VIRTIO_BAR);
  d.dev.configWrite(CAP_PCI_CFG + 8, 4, COMMON.deviceStatus);
  d.dev.configWrite(CAP_PCI_CFG + 12, 4, 1);
  assert.equal(d.dev.configRead(CAP_PCI_CFG + 16, 4), ACK);
  d.dev.configWrite(CAP_PCI_CFG + 16, 4, ACK | DRV);
  assert.equal(d.status(), ACK | DRV);
  d.dev.configWrite(CAP_PCI_CFG + 4, 1, 0); // another BAR: nothing
  assert.equal(d.dev.configRead(CAP_PCI_CFG + 16, 4), 0);
});

test('virtio-pci: system reset resets virtio, MSI-X and decoding', () => {
  const { d, echo } = setup();
  assert.ok(d.init(F, 2));
  d.dev.configWrite(0x40 + 2, 2, 0x8000);
  const resets = echo.resets;
  d.dev.reset();
  assert.equal(d.status(), 0);
  assert.equal(d.dev.msix.enabled, false);
  assert.equal(echo.resets, resets + 1);
});

test('virtio-pci: doorbells bound to eventfds while the driver runs the device and the BAR decodes', () => {
  const echo = new EchoDevice();
  const bound = new Map<number, () => void>();
  const binds: string[] = [];
  const binder: VirtioNotifyBinder = {
    bind(addr, len, onNotify) {
      binds.push(`bind 0x${addr.toString(16)}/${len}`);
      bound.set(addr, onNotify);
      return {
        close: () => {
          binds.push(`close 0x${addr.toString(16)}`);
          bound.delete(addr);
        },
      };
    },
  };
  const d = new VirtioTestDriver(echo, undefined, binder);
  const bus = new PciBus(MemoryRegion.container('mem', 2 ** 40), MemoryRegion.container('io', 0x10000), 2 ** 40);
  bus.attach(d.dev, 3);
  d.dev.configWrite(0x10 + 4 * VIRTIO_BAR, 4, 0xd0000000);
  d.dev.configWrite(0x14 + 4 * VIRTIO_BAR, 4, 0);
  d.dev.configWrite(PCI_COMMAND, 2, PCI_COMMAND_MEMORY);
  assert.deepEqual(binds, [], 'nothing bound before DRIVER_OK');
  assert.ok(d.init(F, 2));
  assert.deepEqual(binds, ['bind 0xd0003000/2', 'bind 0xd0003004/2']);
  // A doorbell through the eventfd runs the queue as the MMIO write would.
  d.submit(0, [{ data: Uint8Array.of(1) }, { writeLen: 1 }], { kick: false });
  bound.get(0xd0003000)!();
  assert.equal(d.takeUsed(0).length, 1);
  // The BAR moves: the doorbells move with it; decoding off: none.
  binds.length = 0;
  d.dev.configWrite(0x10 + 4 * VIRTIO_BAR, 4, 0xe0000000);
  assert.deepEqual(binds, ['close 0xd0003000', 'close 0xd0003004', 'bind 0xe0003000/2', 'bind 0xe0003004/2']);
  binds.length = 0;
  d.dev.configWrite(PCI_COMMAND, 2, 0);
  assert.deepEqual(binds, ['close 0xe0003000', 'close 0xe0003004']);
  d.dev.configWrite(PCI_COMMAND, 2, PCI_COMMAND_MEMORY);
  binds.length = 0;
  d.status(0);
  assert.deepEqual(binds, ['close 0xe0003000', 'close 0xe0003004'], 'a reset unbinds');
  assert.equal(bound.size, 0);
});

test('virtio-pci: the port doorbell (pioNotify) is listed before the memory one, and the value written names the queue', () => {
  const echo = new EchoDevice();
  const d = new VirtioTestDriver(echo, undefined, undefined, true);
  const { caps, ids } = vendorCaps(d);
  assert.deepEqual(ids, [0x11, 9, 9, 9, 9, 9, 9], 'MSI-X, the five virtio capabilities and the second notify');
  const notifies = caps.filter((c) => c.type === 2);
  assert.equal(notifies.length, 2);
  const [pio, mmio] = notifies as [(typeof caps)[0], (typeof caps)[0]];
  assert.equal(pio.bar, PIO_NOTIFY_BAR, 'the first notify structure a driver finds is the port');
  assert.equal(pio.offset, 0);
  assert.ok(pio.length >= 2);
  assert.equal(d.dev.configRead(pio.at + 16, 4), 0, 'notify_off_multiplier 0: one port for every queue');
  assert.equal(mmio.bar, VIRTIO_BAR, 'the memory doorbell is still there, second');
  assert.equal(mmio.offset, NOTIFY_OFF);
  assert.equal(d.dev.pioBar?.type, 'io');
  assert.equal(d.dev.pioBar?.size, 4);
  const port = (size: number, v: number) => d.dev.pioBar!.region.ops!.write(0, size, v);
  assert.ok(d.init(F, 2));
  d.submit(1, [{ data: Uint8Array.of(1, 2) }, { writeLen: 2 }], { kick: false });
  port(2, 0);
  assert.equal(d.takeUsed(1).length, 0, 'a write of 0 rings queue 0, not 1');
  port(1, 1);
  assert.equal(d.takeUsed(1).length, 0, 'a one-byte write is no doorbell');
  port(2, 7);
  assert.equal(d.takeUsed(1).length, 0, 'a queue the device does not have: nothing');
  port(2, 1);
  assert.equal(d.takeUsed(1).length, 1, 'the value names the queue');
  d.submit(0, [{ data: Uint8Array.of(3) }, { writeLen: 1 }], { kick: false });
  port(4, 0);
  assert.equal(d.takeUsed(0).length, 1, 'a 4-byte write rings too (its low 16 bits)');
  // The memory doorbell keeps working beside it.
  d.submit(0, [{ data: Uint8Array.of(4) }, { writeLen: 1 }]);
  assert.equal(d.takeUsed(0).length, 1);
  // Through the PCI config access capability's window onto the port's BAR.
  d.submit(1, [{ data: Uint8Array.of(5) }, { writeLen: 1 }], { kick: false });
  d.dev.configWrite(CAP_PCI_CFG + 4, 1, PIO_NOTIFY_BAR);
  d.dev.configWrite(CAP_PCI_CFG + 8, 4, 0);
  d.dev.configWrite(CAP_PCI_CFG + 12, 4, 2);
  d.dev.configWrite(CAP_PCI_CFG + 16, 4, 1);
  assert.equal(d.takeUsed(1).length, 1, 'the window rings the port doorbell');
  assert.equal(d.dev.configRead(CAP_PCI_CFG + 16, 4), 0, 'the port reads 0');
  const plain = new VirtioTestDriver(new EchoDevice());
  assert.equal(plain.dev.pioBar, undefined, 'only when asked for');
  plain.dev.configWrite(CAP_PCI_CFG + 4, 1, PIO_NOTIFY_BAR);
  plain.dev.configWrite(CAP_PCI_CFG + 12, 4, 2);
  plain.dev.configWrite(CAP_PCI_CFG + 16, 4, 1); // no such BAR: nothing (and no throw)
});

test('virtio-pci: the port doorbell is bound to an eventfd per queue, matched on the value, while the I/O BAR decodes', () => {
  const echo = new EchoDevice();
  const binds: string[] = [];
  const bound = new Map<string, () => void>();
  const binder: VirtioNotifyBinder = {
    bind(addr, len, onNotify, pio) {
      const key = `${pio ? 'port' : 'mmio'} 0x${addr.toString(16)}/${len}${pio ? `=${pio.datamatch}` : ''}`;
      binds.push(`bind ${key}`);
      bound.set(key, onNotify);
      return {
        close: () => {
          binds.push(`close ${key}`);
          bound.delete(key);
        },
      };
    },
  };
  const d = new VirtioTestDriver(echo, undefined, binder, true);
  const bus = new PciBus(MemoryRegion.container('mem', 2 ** 40), MemoryRegion.container('io', 0x10000), 2 ** 40);
  bus.attach(d.dev, 3);
  d.dev.configWrite(0x10 + 4 * PIO_NOTIFY_BAR, 4, 0xc000);
  d.dev.configWrite(PCI_COMMAND, 2, PCI_COMMAND_IO);
  assert.ok(d.init(F, 2));
  assert.deepEqual(binds, ['bind port 0xc000/2=0', 'bind port 0xc000/2=1'], 'memory BAR not decoding: ports only');
  d.submit(1, [{ data: Uint8Array.of(1) }, { writeLen: 1 }], { kick: false });
  bound.get('port 0xc000/2=1')!();
  assert.equal(d.takeUsed(1).length, 1);
  binds.length = 0;
  d.dev.configWrite(0x10 + 4 * PIO_NOTIFY_BAR, 4, 0xc040);
  assert.deepEqual(binds, [
    'close port 0xc000/2=0',
    'close port 0xc000/2=1',
    'bind port 0xc040/2=0',
    'bind port 0xc040/2=1',
  ]);
  binds.length = 0;
  d.dev.configWrite(PCI_COMMAND, 2, 0);
  assert.deepEqual(binds, ['close port 0xc040/2=0', 'close port 0xc040/2=1'], 'I/O decoding off: none');
  d.dev.configWrite(PCI_COMMAND, 2, PCI_COMMAND_IO);
  binds.length = 0;
  d.status(0);
  assert.deepEqual(binds, ['close port 0xc040/2=0', 'close port 0xc040/2=1'], 'a reset unbinds');
  assert.equal(bound.size, 0);
});

test('virtio-pci: a device a driver has started blocks a snapshot (its virtio state is not saved), one never started or reset does not', () => {
  const { d } = setup();
  assert.equal(d.dev.migrationBlocker(), undefined, 'no driver yet: config space is all there is');
  assert.ok(d.init(F, 2));
  assert.match(d.dev.migrationBlocker() ?? '', /virtio state .* is not saved/);
  d.status(0);
  assert.equal(d.dev.migrationBlocker(), undefined, 'reset: nothing to lose');
  d.dev.configWrite(0x40 + 2, 2, 0x8000); // MSI-X on: its table is not saved either
  assert.match(d.dev.migrationBlocker() ?? '', /not saved/);
});
