// The virtio-pci transport (virtio 1.2 §4.1), modern only: PCI ID 1af4:1040+device, revision 1;
// the four vendor capabilities — common config, notify (notify_off_multiplier 4, one doorbell per
// queue), ISR, device config — in one 64-bit memory BAR (BAR 4, as QEMU lays it out), the PCI
// config access capability the spec requires, and MSI-X (BAR 1: table and PBA) for one vector per
// queue plus the config vector; INTx with the ISR when MSI-X is off. Optionally (pioNotify, QEMU's
// modern-pio-notify) a second notify structure listed first: one port in an I/O BAR (BAR 2), the
// queue's index written to it. A queue notify can be bound to an eventfd (VirtioNotifyBinder:
// KVM_IOEVENTFD on the machine, the port's matched on the value) so the writing vCPU does not wait
// for the device model.
//
// What the driver does wrong is contained: features it was not offered (or without VERSION_1)
// leave FEATURES_OK clear; a broken ring, a misplaced queue or a failing device request sets
// DEVICE_NEEDS_RESET (§2.1.2) and the device does nothing more until reset.
import { MemoryRegion } from '../../core/memory/index.js';
import {
  PciDevice,
  PCI_CAPABILITY_LIST,
  PCI_COMMAND,
  PCI_COMMAND_INTX_DISABLE,
  PCI_INTERRUPT_LINE,
  PCI_INTERRUPT_PIN,
  PCI_STATUS,
  PCI_STATUS_CAP_LIST,
  PCI_STATUS_INTERRUPT,
  guestEvents,
  type PciBar,
} from '../pci.js';
import { MsixCap, MSIX_CAP_SIZE } from '../msix.js';
import type { InterruptLine, Interrupts, MsiInterruptGroup } from '../interrupts.js';
import type { GuestMemory } from './guest-memory.js';
import { SplitVirtqueue, VirtqueueError } from './virtqueue.js';
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_VERSION_1,
  VIRTIO_STATUS_DEVICE_NEEDS_RESET,
  VIRTIO_STATUS_DRIVER_OK,
  VIRTIO_STATUS_FEATURES_OK,
  VIRTIO_TRANSPORT_FEATURES,
  type VirtioContext,
  type VirtioDevice,
} from './device.js';

export const VIRTIO_PCI_VENDOR = 0x1af4,
  VIRTIO_PCI_DEVICE_BASE = 0x1040;
export const VIRTIO_MSI_NO_VECTOR = 0xffff;
export const VIRTIO_PCI_CAP_COMMON_CFG = 1,
  VIRTIO_PCI_CAP_NOTIFY_CFG = 2,
  VIRTIO_PCI_CAP_ISR_CFG = 3,
  VIRTIO_PCI_CAP_DEVICE_CFG = 4,
  VIRTIO_PCI_CAP_PCI_CFG = 5;

/** Where things are in the virtio BAR (BAR 4) and in config space. */
export const VIRTIO_BAR = 4,
  VIRTIO_BAR_SIZE = 0x4000,
  COMMON_OFF = 0x0000,
  COMMON_SIZE = 0x40,
  ISR_OFF = 0x1000,
  DEVICE_OFF = 0x2000,
  NOTIFY_OFF = 0x3000,
  NOTIFY_MULTIPLIER = 4;
export const MSIX_BAR = 1,
  MSIX_BAR_SIZE = 0x1000,
  MSIX_PBA_OFF = 0x800;
/** The port-I/O doorbell (pioNotify): one 16-bit port in its own I/O BAR, written the queue's index. */
export const PIO_NOTIFY_BAR = 2,
  PIO_NOTIFY_SIZE = 4;
export const CAP_MSIX = 0x40,
  CAP_COMMON = 0x50,
  CAP_NOTIFY = 0x60,
  CAP_ISR = 0x78,
  CAP_DEVICE = 0x88,
  CAP_PCI_CFG = 0x98,
  CAP_NOTIFY_PIO = 0xac;

// Common configuration structure offsets (§4.1.4.3).
export const COMMON = {
  deviceFeatureSelect: 0x00,
  deviceFeature: 0x04,
  driverFeatureSelect: 0x08,
  driverFeature: 0x0c,
  configMsixVector: 0x10,
  numQueues: 0x12,
  deviceStatus: 0x14,
  configGeneration: 0x15,
  queueSelect: 0x16,
  queueSize: 0x18,
  queueMsixVector: 0x1a,
  queueEnable: 0x1c,
  queueNotifyOff: 0x1e,
  queueDesc: 0x20,
  queueDriver: 0x28,
  queueDevice: 0x30,
} as const;

/**
 * Binds a queue's doorbell to an eventfd the machine watches (KVM_IOEVENTFD): a guest write of
 * `len` bytes at guest-physical `addr` calls onNotify on the event loop, with no exit to wait on.
 */
export interface VirtioNotifyBinder {
  /**
   * With `pio`: a port write of `len` bytes at port `addr` whose value is `pio.datamatch` (the
   * port doorbell every queue shares, told apart by the value).
   */
  bind(addr: number, len: number, onNotify: () => void, pio?: { datamatch: number }): { close(): void };
}

export interface VirtioPciOptions {
  /** The device's name (its id). */
  id: string;
  interrupts: Interrupts;
  /** The GSI of the slot's INTx line. */
  intxGsi: number;
  /** Guest RAM as the device reaches it. */
  mem: GuestMemory;
  /** PCI class code (base << 16 | sub << 8 | prog-if). */
  classCode: number;
  notifyBinder?: VirtioNotifyBinder;
  /**
   * Also a port-I/O doorbell (QEMU's modern-pio-notify), listed before the memory one so a driver
   * takes it first (§4.1.4: the capability order is the device's preference; the spec's drivers
   * use the first they can): a port write exits with its port, size and value, where KVM must
   * fetch and decode the guest's instruction for an MMIO write. For a device whose doorbells are
   * answered on the vCPU that rings them. It needs I/O space: not for a device behind a bridge
   * without an I/O window.
   */
  pioNotify?: boolean;
}

interface QueueState {
  readonly max: number;
  size: number;
  vector: number;
  enabled: boolean;
  /** desc, driver, device: low and high dwords each. */
  addr: Uint32Array;
  vq: SplitVirtqueue | undefined;
}

const U64 = (lo: number, hi: number) => hi * 2 ** 32 + lo;

export class VirtioPciDevice extends PciDevice {
  readonly msix: MsixCap;
  readonly bar: PciBar;
  private readonly group: MsiInterruptGroup;
  private readonly intx: InterruptLine;
  private readonly queues: QueueState[];
  private status = 0;
  private deviceFeatureSelect = 0;
  private driverFeatureSelect = 0;
  private driverFeatures = 0n;
  private configVector = VIRTIO_MSI_NO_VECTOR;
  private configGeneration = 0;
  private queueSelect = 0;
  private isr = 0;
  private broken = false;
  private bound: { close(): void }[] = [];
  /** The port-I/O doorbell's BAR (pioNotify). */
  readonly pioBar: PciBar | undefined;

  constructor(
    readonly device: VirtioDevice,
    private readonly o: VirtioPciOptions,
  ) {
    super(o.id, {
      vendor: VIRTIO_PCI_VENDOR,
      device: VIRTIO_PCI_DEVICE_BASE + device.deviceId,
      classCode: o.classCode,
      revision: 1,
      subsystemVendor: VIRTIO_PCI_VENDOR,
      subsystem: 0x1100,
    });
    this.queues = device.queueSizes.map((max) => ({
      max,
      size: max,
      vector: VIRTIO_MSI_NO_VECTOR,
      enabled: false,
      addr: new Uint32Array(6),
      vq: undefined,
    }));
    const n = this.queues.length;
    if (n < 1 || NOTIFY_OFF + n * NOTIFY_MULTIPLIER > VIRTIO_BAR_SIZE)
      throw new RangeError(`${o.id}: ${n} queues do not fit the virtio BAR`);
    if (device.configSize > NOTIFY_OFF - DEVICE_OFF) throw new RangeError(`${o.id}: device config too large`);

    const region = MemoryRegion.io(
      `${o.id}-virtio`,
      VIRTIO_BAR_SIZE,
      {
        read: (off, size) => this.barRead(off, size),
        write: (off, size, value) =>
          this.barWrite(off, size, typeof value === 'bigint' ? Number(value & 0xffffffffn) : value >>> 0),
      },
      { valid: { minAccessSize: 1, maxAccessSize: 4 } },
    );
    this.bar = this.registerBar(VIRTIO_BAR, 'mem64', VIRTIO_BAR_SIZE, region, true);

    this.group = o.interrupts.msiGroup(n + 1);
    this.intx = o.interrupts.line(o.intxGsi);
    this.msix = new MsixCap(
      {
        vectors: n + 1,
        tableBar: MSIX_BAR,
        tableOffset: 0,
        pbaBar: MSIX_BAR,
        pbaOffset: MSIX_PBA_OFF,
        capOffset: CAP_MSIX,
        name: o.id,
      },
      {
        onControl: (enabled) =>
          this.contain('MSI-X enable', () => {
            if (!enabled) this.group.disable();
            this.updateIntx();
          }),
        vectorUse: (v, msg) =>
          this.contain('MSI-X vector set-up', () => this.group.update(v, { ...msg, masked: false })),
        vectorRelease: (v) => this.contain('MSI-X vector mask', () => this.group.mask(v)),
        notify: (v) => this.contain('MSI-X delivery', () => this.group.trigger(v)),
      },
    );
    const msixBar = MemoryRegion.container(`${o.id}-msix`, MSIX_BAR_SIZE);
    msixBar.addSubregion(0, this.msix.tableRegion);
    msixBar.addSubregion(MSIX_PBA_OFF, this.msix.pbaRegion);
    this.registerBar(MSIX_BAR, 'mem32', MSIX_BAR_SIZE, msixBar);
    if (o.pioNotify) {
      // Every queue's doorbell is the one port (notify_off_multiplier 0); the value names the queue.
      const doorbell = MemoryRegion.io(
        `${o.id}-notify-pio`,
        PIO_NOTIFY_SIZE,
        { read: () => 0, write: (off, size, value) => this.pioNotifyWrite(off, size, Number(value)) },
        { valid: { minAccessSize: 1, maxAccessSize: 4 } },
      );
      this.pioBar = this.registerBar(PIO_NOTIFY_BAR, 'io', PIO_NOTIFY_SIZE, doorbell);
    }

    this.writeCapabilities();
  }

  // --- config space ------------------------------------------------------------------------------

  private writeCapabilities(): void {
    const c = this.config;
    const v = new DataView(c.buffer);
    c[PCI_INTERRUPT_PIN] = 1; // INTA#, on the slot's GSI (what the MP table and _PRT say)
    c[PCI_INTERRUPT_LINE] = this.o.intxGsi;
    v.setUint16(PCI_STATUS, v.getUint16(PCI_STATUS, true) | PCI_STATUS_CAP_LIST, true);
    c[PCI_CAPABILITY_LIST] = CAP_MSIX;
    c[CAP_MSIX + 1] = CAP_COMMON;
    this.msix.writeCapabilityTo(c, this.wmask);
    const cap = (
      at: number,
      next: number,
      len: number,
      type: number,
      off: number,
      length: number,
      bar = VIRTIO_BAR,
    ) => {
      c[at] = 0x09; // vendor-specific
      c[at + 1] = next;
      c[at + 2] = len;
      c[at + 3] = type;
      c[at + 4] = bar;
      v.setUint32(at + 8, off, true);
      v.setUint32(at + 12, length, true);
    };
    const pio = this.pioBar !== undefined;
    cap(CAP_COMMON, pio ? CAP_NOTIFY_PIO : CAP_NOTIFY, 16, VIRTIO_PCI_CAP_COMMON_CFG, COMMON_OFF, COMMON_SIZE);
    // The port doorbell first (preferred), multiplier 0: all queues ring the same port.
    if (pio) cap(CAP_NOTIFY_PIO, CAP_NOTIFY, 20, VIRTIO_PCI_CAP_NOTIFY_CFG, 0, 2, PIO_NOTIFY_BAR);
    cap(CAP_NOTIFY, CAP_ISR, 20, VIRTIO_PCI_CAP_NOTIFY_CFG, NOTIFY_OFF, this.queues.length * NOTIFY_MULTIPLIER);
    v.setUint32(CAP_NOTIFY + 16, NOTIFY_MULTIPLIER, true);
    cap(CAP_ISR, CAP_DEVICE, 16, VIRTIO_PCI_CAP_ISR_CFG, ISR_OFF, 1);
    cap(CAP_DEVICE, CAP_PCI_CFG, 16, VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE_OFF, Math.max(this.device.configSize, 1));
    // virtio_pci_cfg_cap: a window into the BARs through config space (bar, offset, length, data).
    cap(CAP_PCI_CFG, 0, 20, VIRTIO_PCI_CAP_PCI_CFG, 0, 0);
    c[CAP_PCI_CFG + 4] = 0;
    this.wmask[CAP_PCI_CFG + 4] = 0xff;
    this.setWmask(CAP_PCI_CFG + 8, 4, 0xffffffff);
    this.setWmask(CAP_PCI_CFG + 12, 4, 0xffffffff);
    this.setWmask(CAP_PCI_CFG + 16, 4, 0xffffffff);
  }

  /** The access the PCI config access capability describes, if it names this BAR and a valid size. */
  private cfgWindow(): { off: number; size: number; pio: boolean } | undefined {
    const v = new DataView(this.config.buffer);
    const bar = this.config[CAP_PCI_CFG + 4]!,
      off = v.getUint32(CAP_PCI_CFG + 8, true),
      size = v.getUint32(CAP_PCI_CFG + 12, true);
    // The port doorbell's BAR too: the window reaches every BAR a structure is in.
    const pio = bar === PIO_NOTIFY_BAR && this.pioBar !== undefined;
    const end = pio ? PIO_NOTIFY_SIZE : VIRTIO_BAR_SIZE;
    if ((bar !== VIRTIO_BAR && !pio) || (size !== 1 && size !== 2 && size !== 4) || off % size || off + size > end)
      return undefined;
    return { off, size, pio };
  }

  override configRead(off: number, size: number): number {
    const data = CAP_PCI_CFG + 16;
    if (off < data + 4 && data < off + size) {
      const w = this.cfgWindow();
      new DataView(this.config.buffer).setUint32(
        data,
        w && !w.pio ? Number(this.barRead(w.off, w.size)) >>> 0 : 0,
        true,
      );
    }
    return super.configRead(off, size);
  }

  override configWrite(off: number, size: number, value: number): void {
    super.configWrite(off, size, value);
    const touches = (at: number, len: number) => off < at + len && at < off + size;
    if (touches(CAP_MSIX, MSIX_CAP_SIZE)) this.msix.configWrite(off - CAP_MSIX, size, value);
    if (touches(PCI_COMMAND, 2)) this.updateIntx();
    if (touches(CAP_PCI_CFG + 16, 4) && off === CAP_PCI_CFG + 16) {
      const w = this.cfgWindow();
      if (w) {
        const v = value & (w.size === 4 ? 0xffffffff : (1 << (8 * w.size)) - 1);
        if (w.pio) this.pioNotifyWrite(w.off, w.size, v);
        else this.barWrite(w.off, w.size, v);
      }
    }
  }

  protected override onBarMapped(bar: PciBar): void {
    if (bar === this.bar || bar === this.pioBar) this.syncNotifyFds();
  }

  // --- the virtio BAR ----------------------------------------------------------------------------

  private barRead(off: number, size: number): number {
    if (off < COMMON_OFF + COMMON_SIZE) return this.commonRead(off - COMMON_OFF, size);
    if (off >= ISR_OFF && off < ISR_OFF + 4) {
      if (off !== ISR_OFF) return 0;
      const v = this.isr; // reading clears it (§4.1.4.5)
      this.isr = 0;
      this.updateIntx();
      return v;
    }
    if (off >= DEVICE_OFF && off < DEVICE_OFF + this.device.configSize) {
      const rel = off - DEVICE_OFF;
      if (rel + size > this.device.configSize) return 0;
      return this.device.readConfig(rel, size) >>> 0;
    }
    return 0;
  }

  private barWrite(off: number, size: number, value: number): void {
    if (off < COMMON_OFF + COMMON_SIZE) return this.commonWrite(off - COMMON_OFF, size, value);
    if (off >= DEVICE_OFF && off < DEVICE_OFF + this.device.configSize) {
      const rel = off - DEVICE_OFF;
      if (rel + size <= this.device.configSize) this.device.writeConfig(rel, size, value);
      return;
    }
    if (off >= NOTIFY_OFF && off < NOTIFY_OFF + this.queues.length * NOTIFY_MULTIPLIER)
      this.notify(Math.floor((off - NOTIFY_OFF) / NOTIFY_MULTIPLIER));
  }

  /** A write to the port doorbell: the queue index is the value (§4.1.4.4 with notify_off_multiplier 0). */
  private pioNotifyWrite(off: number, size: number, value: number): void {
    if (off === 0 && size >= 2) this.notify(value & 0xffff);
  }

  private get selected(): QueueState | undefined {
    return this.queues[this.queueSelect];
  }

  private commonRead(off: number, size: number): number {
    const q = this.selected;
    const mask = size >= 4 ? 0xffffffff : (1 << (8 * size)) - 1;
    let v: number;
    switch (off) {
      case COMMON.deviceFeatureSelect:
        v = this.deviceFeatureSelect;
        break;
      case COMMON.deviceFeature:
        v = featureWord(this.offered, this.deviceFeatureSelect);
        break;
      case COMMON.driverFeatureSelect:
        v = this.driverFeatureSelect;
        break;
      case COMMON.driverFeature:
        v = featureWord(this.driverFeatures, this.driverFeatureSelect);
        break;
      case COMMON.configMsixVector:
        v = this.configVector;
        break;
      case COMMON.numQueues:
        v = this.queues.length;
        break;
      case COMMON.deviceStatus:
        v = this.status;
        break;
      case COMMON.configGeneration:
        v = this.configGeneration;
        break;
      case COMMON.queueSelect:
        v = this.queueSelect;
        break;
      case COMMON.queueSize:
        v = q?.size ?? 0; // 0: no such queue
        break;
      case COMMON.queueMsixVector:
        v = q?.vector ?? VIRTIO_MSI_NO_VECTOR;
        break;
      case COMMON.queueEnable:
        v = q?.enabled ? 1 : 0;
        break;
      case COMMON.queueNotifyOff:
        v = q ? this.queueSelect : 0;
        break;
      case COMMON.queueDesc:
      case COMMON.queueDesc + 4:
      case COMMON.queueDriver:
      case COMMON.queueDriver + 4:
      case COMMON.queueDevice:
      case COMMON.queueDevice + 4:
        v = q ? q.addr[(off - COMMON.queueDesc) / 4]! : 0;
        break;
      default:
        v = 0;
    }
    return (v & mask) >>> 0;
  }

  private commonWrite(off: number, size: number, value: number): void {
    const q = this.selected;
    switch (off) {
      case COMMON.deviceFeatureSelect:
        this.deviceFeatureSelect = value >>> 0;
        return;
      case COMMON.driverFeatureSelect:
        this.driverFeatureSelect = value >>> 0;
        return;
      case COMMON.driverFeature: {
        // After FEATURES_OK the features are settled (§3.1.1).
        if (this.status & VIRTIO_STATUS_FEATURES_OK || this.driverFeatureSelect > 1) return;
        const shift = BigInt(32 * this.driverFeatureSelect);
        this.driverFeatures = (this.driverFeatures & ~(0xffffffffn << shift)) | (BigInt(value >>> 0) << shift);
        return;
      }
      case COMMON.configMsixVector:
        this.configVector = this.vectorOrNone(value);
        return;
      case COMMON.deviceStatus:
        if (size === 1) this.writeStatus(value & 0xff);
        return;
      case COMMON.queueSelect:
        this.queueSelect = value & 0xffff;
        return;
      case COMMON.queueMsixVector:
        if (q) q.vector = this.vectorOrNone(value);
        return;
      case COMMON.queueSize:
        // A split ring's size is a power of two no larger than the device's (§2.7); others are ignored.
        if (q && !q.enabled) {
          const n = value & 0xffff;
          if (n > 0 && n <= q.max && !(n & (n - 1))) q.size = n;
        }
        return;
      case COMMON.queueEnable:
        // Only 1 may be written (a 0 needs VIRTIO_F_RING_RESET, which is not offered).
        if (q && !q.enabled && (value & 0xffff) === 1) this.enableQueue(this.queueSelect);
        return;
      case COMMON.queueDesc:
      case COMMON.queueDesc + 4:
      case COMMON.queueDriver:
      case COMMON.queueDriver + 4:
      case COMMON.queueDevice:
      case COMMON.queueDevice + 4:
        if (q && !q.enabled && size === 4) q.addr[(off - COMMON.queueDesc) / 4] = value >>> 0;
        return;
      default:
      // read-only or reserved
    }
  }

  /** What the driver is offered: the device's features and the transport's. */
  get offered(): bigint {
    return this.device.features | VIRTIO_TRANSPORT_FEATURES;
  }

  /** The features the driver accepted (meaningful once FEATURES_OK is set). */
  get negotiated(): bigint {
    return this.driverFeatures;
  }

  get deviceStatus(): number {
    return this.status;
  }

  private vectorOrNone(value: number): number {
    const v = value & 0xffff;
    // A vector the table does not have cannot be mapped: the device says so by reading back NO_VECTOR (§4.1.5.1.2).
    return v < this.msix.vectors ? v : VIRTIO_MSI_NO_VECTOR;
  }

  private writeStatus(value: number): void {
    if (value === 0) return this.virtioReset();
    const old = this.status;
    let next = (value & ~VIRTIO_STATUS_DEVICE_NEEDS_RESET) | (old & VIRTIO_STATUS_DEVICE_NEEDS_RESET);
    if (next & VIRTIO_STATUS_FEATURES_OK && !(old & VIRTIO_STATUS_FEATURES_OK)) {
      const why = this.refuseFeatures(this.driverFeatures);
      if (why) {
        next &= ~VIRTIO_STATUS_FEATURES_OK; // the driver reads it back and gives up (§3.1.1 step 6)
        guestEvents.report('debug', `${this.name}:features`, () => `${this.name}: FEATURES_OK refused: ${why}`);
      }
    }
    this.status = next;
    if (next & VIRTIO_STATUS_DRIVER_OK && !(old & VIRTIO_STATUS_DRIVER_OK)) {
      if (!(next & VIRTIO_STATUS_FEATURES_OK)) return this.needsReset('DRIVER_OK without FEATURES_OK');
      this.contain('activate', () => this.device.activate(this.context()), true);
      this.syncNotifyFds();
      // Buffers the driver made available before DRIVER_OK (it may notify before too).
      for (let i = 0; i < this.queues.length; i++) if (this.queues[i]!.vq) this.notify(i);
    }
  }

  private refuseFeatures(f: bigint): string | undefined {
    const extra = f & ~this.offered;
    if (extra) return `features 0x${extra.toString(16)} were not offered`;
    if (!(f & VIRTIO_F_VERSION_1))
      return 'VIRTIO_F_VERSION_1 not accepted (a legacy driver; this device is modern only)';
    return this.device.checkFeatures?.(f);
  }

  private enableQueue(i: number): void {
    const q = this.queues[i]!;
    if (!(this.status & VIRTIO_STATUS_FEATURES_OK)) return this.needsReset(`queue ${i} enabled before FEATURES_OK`);
    const a = q.addr;
    if (a[1]! >= 2 ** 21 || a[3]! >= 2 ** 21 || a[5]! >= 2 ** 21)
      return this.needsReset(`queue ${i}: ring addresses beyond guest RAM`);
    try {
      q.vq = new SplitVirtqueue(this.o.mem, {
        size: q.size,
        desc: U64(a[0]!, a[1]!),
        avail: U64(a[2]!, a[3]!),
        used: U64(a[4]!, a[5]!),
        eventIdx: (this.driverFeatures & VIRTIO_F_EVENT_IDX) !== 0n,
        indirect: (this.driverFeatures & VIRTIO_F_INDIRECT_DESC) !== 0n,
      });
      q.enabled = true;
    } catch (e) {
      this.needsReset(`queue ${i}: ${(e as Error).message}`);
    }
  }

  /** A doorbell: the device works through queue i. */
  notify(i: number): void {
    if (!(this.status & VIRTIO_STATUS_DRIVER_OK) || this.broken || !this.queues[i]?.vq) return;
    // contain(…, true) written out: this is every doorbell's path, so no closure or string per kick.
    try {
      this.device.queueNotify(i);
    } catch (e) {
      this.needsReset(`queue ${i}: ${(e as Error).message}`, !(e instanceof VirtqueueError));
    }
  }

  private context(): VirtioContext {
    const queues = this.queues.map((q) => q.vq);
    return {
      mem: this.o.mem,
      features: this.driverFeatures,
      queues,
      interruptQueue: (i) => {
        const vq = this.queues[i]?.vq;
        if (vq && vq.needsInterrupt()) this.raise(this.queues[i]!.vector, 1);
      },
      configChanged: () => {
        this.configGeneration = (this.configGeneration + 1) & 0xff;
        this.raise(this.configVector, 2);
      },
    };
  }

  // --- interrupts --------------------------------------------------------------------------------

  /** An interrupt on `vector` with MSI-X, else the ISR bit and INTx. */
  private raise(vector: number, isrBit: number): void {
    if (this.msix.enabled) {
      if (vector === VIRTIO_MSI_NO_VECTOR) return;
      if (this.msix.isMasked(vector)) this.msix.setPending(vector);
      else this.contain('MSI-X delivery', () => this.group.trigger(vector));
      return;
    }
    this.isr |= isrBit;
    this.updateIntx();
  }

  /** INTx follows the ISR unless MSI-X is on or the command register disables it. */
  private updateIntx(): void {
    const pending = this.isr !== 0 && !this.msix.enabled;
    const st = PCI_STATUS;
    this.config[st] = pending ? this.config[st]! | PCI_STATUS_INTERRUPT : this.config[st]! & ~PCI_STATUS_INTERRUPT;
    this.contain('INTx', () => this.intx.setLevel(pending && !(this.command & PCI_COMMAND_INTX_DISABLE)));
  }

  /** Whether the ISR has bits set (tests, inspect). */
  get isrPending(): number {
    return this.isr;
  }

  /**
   * The transport's and the device's state (status, features, queues; the virtio-iommu's domains
   * and mappings) is not in a snapshot: once a driver has started on the device, a restored guest
   * would find it reset under it and wait on its queues for ever (QEMU migrates both). Before
   * that there is nothing to lose.
   */
  override migrationBlocker(): string | undefined {
    if (this.status === 0 && !this.msix.enabled) return undefined;
    return "its virtio state (the queues, and the device's own: the virtio-iommu's domains and mappings) is not saved by this version";
  }

  // --- errors and reset ----------------------------------------------------------------------------

  /**
   * Runs guest-triggered work so no error of it reaches the vCPU exit path; with `fatal`, an error
   * means the device needs a reset.
   */
  private contain(what: string, fn: () => void, fatal = false): void {
    try {
      fn();
    } catch (e) {
      if (fatal) this.needsReset(`${what}: ${(e as Error).message}`, !(e instanceof VirtqueueError));
      else
        guestEvents.report(
          'error',
          `${this.name}:${what}`,
          () => `${this.name}: ${what} failed: ${(e as Error).message}`,
        );
    }
  }

  /** DEVICE_NEEDS_RESET (§2.1.2): the device stops and tells the driver through a config interrupt. */
  private needsReset(why: string, internal = false): void {
    this.broken = true;
    guestEvents.report(
      internal ? 'error' : 'debug',
      `${this.name}:needs-reset`,
      () => `${this.name}: device needs reset: ${why}`,
    );
    if (this.status & VIRTIO_STATUS_DEVICE_NEEDS_RESET) return;
    this.status |= VIRTIO_STATUS_DEVICE_NEEDS_RESET;
    if (this.status & VIRTIO_STATUS_DRIVER_OK) {
      this.configGeneration = (this.configGeneration + 1) & 0xff;
      this.raise(this.configVector, 2);
    }
  }

  /** Whether the device set DEVICE_NEEDS_RESET and stopped (tests, inspect). */
  get needsResetSet(): boolean {
    return this.broken;
  }

  /** Virtio reset (status 0): every queue off, features and vectors cleared, the device back to its start. */
  virtioReset(): void {
    this.unbindNotifyFds();
    this.contain('device reset', () => this.device.reset());
    this.status = 0;
    this.broken = false;
    this.driverFeatures = 0n;
    this.deviceFeatureSelect = this.driverFeatureSelect = 0;
    this.queueSelect = 0;
    this.configVector = VIRTIO_MSI_NO_VECTOR;
    for (const q of this.queues) {
      q.size = q.max;
      q.vector = VIRTIO_MSI_NO_VECTOR;
      q.enabled = false;
      q.addr.fill(0);
      q.vq = undefined;
    }
    this.isr = 0;
    this.updateIntx();
  }

  /** PCI function reset (system_reset): the virtio reset, MSI-X and the PCI config. */
  override reset(): void {
    this.virtioReset();
    this.contain('MSI-X reset', () => this.msix.reset());
    this.contain('MSI-X vectors', () => this.group.disable());
    super.reset();
    this.updateIntx();
  }

  /** Releases the interrupt resources (device removal, VM close). */
  destroy(): void {
    this.unbindNotifyFds();
    this.contain('MSI-X vectors', () => this.group.disable());
    this.contain('INTx', () => this.intx.setLevel(false));
  }

  // --- ioeventfd ---------------------------------------------------------------------------------

  private unbindNotifyFds(): void {
    for (const b of this.bound.splice(0)) this.contain('ioeventfd', () => b.close());
  }

  /** Doorbells bound to eventfds while the driver runs the device and the BAR decodes. */
  private syncNotifyFds(): void {
    this.unbindNotifyFds();
    const binder = this.o.notifyBinder;
    const at = this.bar.mappedAt,
      port = this.pioBar?.mappedAt;
    if (!binder || !(this.status & VIRTIO_STATUS_DRIVER_OK)) return;
    this.queues.forEach((q, i) => {
      if (!q.vq) return;
      if (at !== undefined)
        this.contain('ioeventfd', () =>
          this.bound.push(binder.bind(at + NOTIFY_OFF + i * NOTIFY_MULTIPLIER, 2, () => this.notify(i))),
        );
      if (port !== undefined)
        this.contain('ioeventfd', () => this.bound.push(binder.bind(port, 2, () => this.notify(i), { datamatch: i })));
    });
  }
}

/** Word `select` of a 64-bit feature set (the common config's 32-bit feature windows; beyond 64: 0). */
function featureWord(bits: bigint, select: number): number {
  return select < 2 ? Number((bits >> BigInt(32 * select)) & 0xffffffffn) : 0;
}
