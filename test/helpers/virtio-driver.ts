// A virtio-pci driver for tests and the fuzzer, written from the spec (§3.1, §4.1.4, §2.7): it
// brings a VirtioPciDevice up through its BAR registers, lays out split virtqueues in a flat
// guest memory and submits descriptor chains. Interrupts go to a recorder (FakeInterrupts): the
// device model under test is real; only the machine's interrupt delivery is replaced.
import type { InterruptLine, Interrupts, MsiInterruptGroup, MsiVectorConfig } from '../../hw/interrupts.js';
import { FlatMemory } from '../../hw/virtio/guest-memory.js';
import {
  COMMON,
  ISR_OFF,
  NOTIFY_OFF,
  NOTIFY_MULTIPLIER,
  VirtioPciDevice,
  DEVICE_OFF,
  type VirtioNotifyBinder,
} from '../../hw/virtio/pci.js';
import type { VirtioDevice } from '../../hw/virtio/device.js';
import {
  VIRTIO_STATUS_ACKNOWLEDGE,
  VIRTIO_STATUS_DRIVER,
  VIRTIO_STATUS_DRIVER_OK,
  VIRTIO_STATUS_FEATURES_OK,
} from '../../hw/virtio/device.js';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT } from '../../hw/virtio/virtqueue.js';

export class FakeInterrupts implements Interrupts {
  /** MSI vectors delivered, in order. */
  readonly msi: number[] = [];
  readonly routes = new Map<number, MsiVectorConfig>();
  level = false;
  msiGroup(count: number): MsiInterruptGroup {
    return {
      count,
      update: (v, cfg) => void this.routes.set(v, cfg),
      mask: (v) => {
        const r = this.routes.get(v);
        if (r) r.masked = true;
      },
      notifier: () => undefined,
      trigger: (v) => void this.msi.push(v),
      pending: () => false,
      disable: () => this.routes.clear(),
    };
  }
  line(gsi: number): InterruptLine {
    return {
      gsi,
      setLevel: (l) => {
        this.level = l;
      },
      connect: () => ({ trigger: -1, resample: -1 }),
      disconnect: () => {},
      close: () => {},
    };
  }
}

export const RAM_SIZE = 0x100000;
/** Where queue q's rings live, and the data area requests are built in. */
export const queueBase = (q: number) => 0x10000 + q * 0x10000;
export const DATA_BASE = 0x80000;

export interface Buf {
  /** Device-readable bytes, or the size of a device-writable buffer. */
  data?: Uint8Array;
  writeLen?: number;
  /** Place it here instead of the data area. */
  addr?: number;
}

export class VirtioTestDriver {
  readonly mem: FlatMemory;
  readonly irq = new FakeInterrupts();
  readonly dev: VirtioPciDevice;
  readonly sizes: number[] = [];
  private availIdx: number[] = [];
  private lastUsed: number[] = [];
  private nextDesc: number[] = [];
  private dataNext = DATA_BASE;
  private eventIdx = false;

  constructor(
    device: VirtioDevice,
    mem = new FlatMemory(new Uint8Array(RAM_SIZE)),
    notifyBinder?: VirtioNotifyBinder,
    pioNotify = false,
  ) {
    this.mem = mem;
    this.dev = new VirtioPciDevice(device, {
      id: 'vdev',
      interrupts: this.irq,
      intxGsi: 16,
      mem,
      classCode: 0xff0000,
      ...(notifyBinder ? { notifyBinder } : {}),
      pioNotify,
    });
  }

  read(off: number, size: number): number {
    return Number(this.dev.bar.region.ops!.read(off, size));
  }
  write(off: number, size: number, v: number): void {
    this.dev.bar.region.ops!.write(off, size, v);
  }
  common(field: keyof typeof COMMON, size: number, v?: number): number {
    if (v === undefined) return this.read(COMMON[field], size);
    this.write(COMMON[field], size, v);
    return v;
  }
  status(v?: number): number {
    return this.common('deviceStatus', 1, v);
  }
  deviceFeatures(): bigint {
    this.common('deviceFeatureSelect', 4, 0);
    const lo = this.common('deviceFeature', 4);
    this.common('deviceFeatureSelect', 4, 1);
    return (BigInt(this.common('deviceFeature', 4)) << 32n) | BigInt(lo);
  }
  setDriverFeatures(f: bigint): void {
    this.common('driverFeatureSelect', 4, 0);
    this.common('driverFeature', 4, Number(f & 0xffffffffn));
    this.common('driverFeatureSelect', 4, 1);
    this.common('driverFeature', 4, Number((f >> 32n) & 0xffffffffn));
  }
  readConfig(off: number, size: number): number {
    return this.read(DEVICE_OFF + off, size);
  }
  writeConfig(off: number, size: number, v: number): void {
    this.write(DEVICE_OFF + off, size, v);
  }
  isr(): number {
    return this.read(ISR_OFF, 1);
  }

  /** Status handshake up to FEATURES_OK; returns whether the device kept FEATURES_OK. */
  negotiate(features: bigint): boolean {
    this.status(0);
    this.status(VIRTIO_STATUS_ACKNOWLEDGE);
    this.status(VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    this.setDriverFeatures(features);
    this.status(VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
    this.eventIdx = (features & (1n << 29n)) !== 0n;
    return (this.status() & VIRTIO_STATUS_FEATURES_OK) !== 0;
  }

  /** Lays queue q out at queueBase(q) with `size` entries and enables it. */
  setupQueue(q: number, size?: number, vector?: number): void {
    this.common('queueSelect', 2, q);
    if (size !== undefined) this.common('queueSize', 2, size);
    const n = this.common('queueSize', 2);
    const base = queueBase(q);
    this.mem.write(base, new Uint8Array(0x10000)); // a driver hands the device zeroed rings
    const desc = base,
      avail = base + 16 * n,
      used = (avail + 6 + 2 * n + 3) & ~3;
    this.common('queueDesc', 4, desc);
    this.write(COMMON.queueDesc + 4, 4, 0);
    this.common('queueDriver', 4, avail);
    this.write(COMMON.queueDriver + 4, 4, 0);
    this.common('queueDevice', 4, used);
    this.write(COMMON.queueDevice + 4, 4, 0);
    if (vector !== undefined) this.common('queueMsixVector', 2, vector);
    this.common('queueEnable', 2, 1);
    this.sizes[q] = n;
    this.availIdx[q] = 0;
    this.lastUsed[q] = 0;
    this.nextDesc[q] = 0;
  }

  /** Full bring-up: features, every queue, DRIVER_OK. */
  init(features: bigint, queues: number): boolean {
    if (!this.negotiate(features)) return false;
    for (let q = 0; q < queues; q++) this.setupQueue(q);
    this.status(VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
    return true;
  }

  ring(q: number) {
    const n = this.sizes[q]!,
      base = queueBase(q);
    const avail = base + 16 * n;
    const used = (avail + 6 + 2 * n + 3) & ~3;
    return { n, desc: base, avail, used, usedEvent: avail + 4 + 2 * n, availEvent: used + 4 + 8 * n };
  }

  w16(addr: number, v: number): void {
    this.mem.write(addr, Uint8Array.of(v & 0xff, (v >> 8) & 0xff));
  }
  r16(addr: number): number {
    const b = new Uint8Array(2);
    this.mem.read(addr, b);
    return b[0]! | (b[1]! << 8);
  }
  r32(addr: number): number {
    const b = new Uint8Array(4);
    this.mem.read(addr, b);
    return new DataView(b.buffer).getUint32(0, true);
  }

  /** Writes descriptor i of a table. */
  writeDesc(table: number, i: number, addr: number, len: number, flags: number, next: number): void {
    const b = new Uint8Array(16);
    const v = new DataView(b.buffer);
    v.setBigUint64(0, BigInt(addr), true);
    v.setUint32(8, len >>> 0, true);
    v.setUint16(12, flags, true);
    v.setUint16(14, next, true);
    this.mem.write(table + 16 * i, b);
  }

  private alloc(len: number): number {
    const at = this.dataNext;
    this.dataNext += (len + 15) & ~15;
    if (this.dataNext > RAM_SIZE) {
      this.dataNext = DATA_BASE + ((len + 15) & ~15);
      return DATA_BASE;
    }
    return at;
  }

  /** Makes head `head` available and (unless told not to) rings the doorbell. */
  publish(q: number, head: number, kick = true): void {
    const r = this.ring(q);
    this.w16(r.avail + 4 + 2 * (this.availIdx[q]! % r.n), head);
    this.availIdx[q] = (this.availIdx[q]! + 1) & 0xffff;
    this.w16(r.avail + 2, this.availIdx[q]!);
    if (kick) this.kick(q);
  }

  kick(q: number): void {
    this.write(NOTIFY_OFF + q * NOTIFY_MULTIPLIER, 2, q);
  }

  /** Puts a chain of buffers in the descriptor table (or an indirect table) and publishes it. */
  submit(q: number, bufs: Buf[], opts: { indirect?: boolean; kick?: boolean } = {}): { head: number; addrs: number[] } {
    const r = this.ring(q);
    const addrs = bufs.map((b) => {
      const len = b.data?.length ?? b.writeLen ?? 0;
      const at = b.addr ?? this.alloc(len);
      if (b.data) this.mem.write(at, b.data);
      return at;
    });
    const flagsOf = (b: Buf) => (b.data ? 0 : VIRTQ_DESC_F_WRITE);
    let head: number;
    if (opts.indirect) {
      const table = this.alloc(16 * bufs.length);
      bufs.forEach((b, i) =>
        this.writeDesc(
          table,
          i,
          addrs[i]!,
          b.data?.length ?? b.writeLen ?? 0,
          flagsOf(b) | (i + 1 < bufs.length ? VIRTQ_DESC_F_NEXT : 0),
          i + 1,
        ),
      );
      head = this.nextDesc[q]! % r.n;
      this.nextDesc[q] = head + 1;
      this.writeDesc(r.desc, head, table, 16 * bufs.length, VIRTQ_DESC_F_INDIRECT, 0);
    } else {
      head = this.nextDesc[q]! % r.n;
      bufs.forEach((b, i) => {
        const idx = (head + i) % r.n;
        this.writeDesc(
          r.desc,
          idx,
          addrs[i]!,
          b.data?.length ?? b.writeLen ?? 0,
          flagsOf(b) | (i + 1 < bufs.length ? VIRTQ_DESC_F_NEXT : 0),
          (idx + 1) % r.n,
        );
      });
      this.nextDesc[q] = (head + bufs.length) % r.n;
    }
    this.publish(q, head, opts.kick ?? true);
    return { head, addrs };
  }

  /** Used elements the device returned since the last call. */
  takeUsed(q: number): { id: number; len: number }[] {
    const r = this.ring(q);
    const idx = this.r16(r.used + 2);
    const out: { id: number; len: number }[] = [];
    while (this.lastUsed[q] !== idx) {
      const e = r.used + 4 + 8 * (this.lastUsed[q]! % r.n);
      out.push({ id: this.r32(e), len: this.r32(e + 4) });
      this.lastUsed[q] = (this.lastUsed[q]! + 1) & 0xffff;
    }
    return out;
  }

  get usesEventIdx(): boolean {
    return this.eventIdx;
  }
}
