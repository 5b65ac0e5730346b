// MSI capability emulation (PCI Local Bus 3.0 §6.8.1, QEMU's hw/pci/msi.c). Pure logic, the
// same design as hw/msix.ts (read its header): the device model forwards config accesses that hit
// the capability and reacts to the listener.
//
// ## Layout (offsets from capOffset)
//
//                  32-bit   32-bit+mask   64-bit   64-bit+mask
//   ID 0x05, next   0,1       0,1          0,1       0,1
//   Message Control  2         2            2         2
//   Address lo       4         4            4         4      (bits 1:0 read-only 0)
//   Address hi       -         -            8         8
//   Data (16 bits)   8         8            0xc       0xc
//   Mask bits        -         0xc          -         0x10
//   Pending bits     -         0x10         -         0x14   (read-only: set by setPending)
//   size             0x0a      0x14         0x0e      0x18
//
// Message Control: bit 0 enable (RW), bits 3:1 multiple message capable (RO, log2 vectors),
// bits 6:4 multiple message enable (RW, clamped to the capable value as QEMU does), bit 7 64-bit
// (RO), bit 8 per-vector masking (RO); everything else reads 0. Mask bits beyond the capable
// vectors are read-only 0. Everything resets to 0 (disabled, one vector, all unmasked).
//
// ## Vectors and callbacks
//
// The function uses nvectors = 2^MME vectors; vector v's message is the programmed address with
// data = (data & ~(nvectors-1)) | v. Vector v is IN USE when MSI is enabled, v < nvectors and
// (with per-vector masking) its mask bit is clear. Callbacks, as for MSI-X:
//
//   onControl(enabled, nvectors)  the enable bit changed, or nvectors changed while enabled
//   vectorUse(v, msg)             v became in use, or its message changed while in use (the
//                                 guest reprograms address/data of an enabled MSI: each dword
//                                 or word written reports every in-use vector whose message changed)
//   vectorRelease(v)              v stopped being in use (masked, disabled, nvectors shrank, reset)
//   notify(v, msg)                deliver v now: it was pending and became in use
//
// Order: onControl first, then vectors ascending. Enabling with 4 vectors: onControl(true, 4),
// vectorUse(0..3). Disabling: onControl(false, n), vectorRelease for each vector in use.
//
// setPending(v): in use → notify at once. Not in use: with per-vector masking the pending bit is
// latched (guest-visible) and delivered on unmask, unless MSI is enabled with v ≥ nvectors (a
// vector the function may not use: dropped); without per-vector masking there is nowhere to
// latch it (MSI disabled), so it is dropped. As in QEMU, pending bits of vectors ≥ nvectors are
// discarded when the guest writes the capability while MSI is enabled. A masked vector's interrupt
// that waits elsewhere (an irqfd's eventfd) is reported by the listener's pendingPoll, called
// before the guest reads Pending Bits, so the register shows it.
import type { MsiMessage } from '../core/msi.js';
import { CallbackRunner, ReportedVectors, checkConfigAccess, checkInt } from './msi-vectors.js';
import type { StateReader, StateWriter } from '../core/state.js';

export type { MsiMessage } from '../core/msi.js';

export const PCI_CAP_ID_MSI = 0x05;
export const PCI_MSI_FLAGS = 2,
  PCI_MSI_ADDRESS_LO = 4;
export const PCI_MSI_FLAGS_ENABLE = 0x0001,
  PCI_MSI_FLAGS_QMASK = 0x000e,
  PCI_MSI_FLAGS_QSIZE = 0x0070;
export const PCI_MSI_FLAGS_64BIT = 0x0080,
  PCI_MSI_FLAGS_MASKBIT = 0x0100;

export type MsiVectorCount = 1 | 2 | 4 | 8 | 16 | 32;

export interface MsiListener {
  onControl?(enabled: boolean, nvectors: number): void;
  vectorUse?(vector: number, msg: MsiMessage): void;
  vectorRelease?(vector: number): void;
  notify?(vector: number, msg: MsiMessage): void;
  /** The guest is about to read the Pending Bits of [first, end): a chance to drain interrupt
   *  sources that hold a masked vector's signal into setPending() (MSI-X's pbaPoll). */
  pendingPoll?(firstVector: number, endVector: number): void;
}

export interface MsiOptions {
  capOffset: number; // dword aligned, 0x40.., the capability must fit below 0x100
  vectors: MsiVectorCount; // multiple message capable
  is64bit: boolean;
  perVectorMask: boolean;
}

/** Size in bytes of an MSI capability (QEMU's msi_cap_sizeof). */
export function msiCapSize(is64bit: boolean, perVectorMask: boolean): number {
  return is64bit ? (perVectorMask ? 0x18 : 0x0e) : perVectorMask ? 0x14 : 0x0a;
}

export class MsiCap {
  readonly capOffset: number;
  /** Multiple message capable (the most the guest may enable). */
  readonly vectors: MsiVectorCount;
  readonly is64bit: boolean;
  readonly perVectorMask: boolean;
  readonly size: number;
  readonly dataOffset: number;
  /** Offsets of the mask / pending registers; undefined without per-vector masking. */
  readonly maskOffset: number | undefined;
  readonly pendingOffset: number | undefined;

  /** The capability bytes as the guest sees them (ID, next, control, address, data, mask, pending). */
  private readonly regs: Uint8Array;
  private readonly view: DataView;
  /** Guest-writable bits of `regs`. */
  private readonly wmask: Uint8Array;
  private readonly log2Capable: number;
  private pending = 0;
  private config: Uint8Array | undefined;

  // What the listener was last told: 0 = disabled, else the number of vectors enabled.
  private reportedControl = 0;
  private readonly runner = new CallbackRunner();
  private readonly reported = new ReportedVectors(32, this.runner);

  constructor(
    opts: MsiOptions,
    public listener: MsiListener = {},
  ) {
    if (![1, 2, 4, 8, 16, 32].includes(opts.vectors))
      throw new RangeError(`MSI: vectors must be 1, 2, 4, 8, 16 or 32, got ${String(opts.vectors)}`);
    this.vectors = opts.vectors;
    this.is64bit = !!opts.is64bit;
    this.perVectorMask = !!opts.perVectorMask;
    this.size = msiCapSize(this.is64bit, this.perVectorMask);
    checkInt('MSI', 'capOffset', opts.capOffset, 0x40, 256 - this.size);
    if (opts.capOffset % 4)
      throw new RangeError(`MSI: capOffset must be dword aligned, got 0x${opts.capOffset.toString(16)}`);
    this.capOffset = opts.capOffset;
    this.log2Capable = Math.log2(this.vectors);
    this.dataOffset = this.is64bit ? 0x0c : 0x08;
    this.maskOffset = this.perVectorMask ? this.dataOffset + 4 : undefined;
    this.pendingOffset = this.perVectorMask ? this.dataOffset + 8 : undefined;
    this.regs = new Uint8Array(this.size);
    this.view = new DataView(this.regs.buffer);
    this.wmask = new Uint8Array(this.size);
    const wm = new DataView(this.wmask.buffer);
    this.regs[0] = PCI_CAP_ID_MSI;
    wm.setUint16(PCI_MSI_FLAGS, PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE, true);
    wm.setUint32(PCI_MSI_ADDRESS_LO, 0xfffffffc, true);
    if (this.is64bit) wm.setUint32(PCI_MSI_ADDRESS_LO + 4, 0xffffffff, true);
    wm.setUint16(this.dataOffset, 0xffff, true);
    if (this.maskOffset !== undefined) wm.setUint32(this.maskOffset, this.capableMask, true);
    this.view.setUint16(PCI_MSI_FLAGS, this.readOnlyFlags, true);
  }

  private get capableMask(): number {
    return this.vectors === 32 ? 0xffffffff : (1 << this.vectors) - 1;
  }
  private get readOnlyFlags(): number {
    return (
      (this.log2Capable << 1) |
      (this.is64bit ? PCI_MSI_FLAGS_64BIT : 0) |
      (this.perVectorMask ? PCI_MSI_FLAGS_MASKBIT : 0)
    );
  }

  get messageControl(): number {
    return this.view.getUint16(PCI_MSI_FLAGS, true);
  }
  get enabled(): boolean {
    return (this.messageControl & PCI_MSI_FLAGS_ENABLE) !== 0;
  }
  /** Vectors the guest enabled (2^MME), whether or not MSI is on. */
  get enabledVectors(): number {
    return 1 << ((this.messageControl & PCI_MSI_FLAGS_QSIZE) >> 4);
  }
  /** The mask bits (0 without per-vector masking). */
  get maskBits(): number {
    return this.maskOffset === undefined ? 0 : this.view.getUint32(this.maskOffset, true);
  }
  get pendingBits(): number {
    return this.pending;
  }

  get nextPointer(): number {
    return this.regs[1]!;
  }
  set nextPointer(p: number) {
    this.regs[1] = p & 0xff;
    if (this.config) this.config[this.capOffset + 1] = this.regs[1]!;
  }

  // --- config space ----------------------------------------------------------------------------

  capabilityBytes(): Uint8Array {
    return this.regs.slice();
  }

  /** Reads `size` (1, 2, 4) bytes at `offsetInCap`; bytes outside the capability read as 0. */
  configRead(offsetInCap: number, size: number): number {
    checkConfigAccess(offsetInCap, size);
    this.beforeRead(offsetInCap, size);
    let v = 0;
    for (let i = size - 1; i >= 0; i--) {
      const o = offsetInCap + i;
      v = (v << 8) | (o >= 0 && o < this.size ? this.regs[o]! : 0);
    }
    return v >>> 0;
  }

  /**
   * A read of [offsetInCap, +size) is coming (through configRead, or of the config-space copy a
   * device model keeps): when it covers Pending Bits, the listener may report the masked vectors
   * whose interrupt waits, so the guest sees them pending.
   */
  beforeRead(offsetInCap: number, size: number): void {
    const p = this.pendingOffset;
    const poll = this.listener.pendingPoll;
    if (p === undefined || !poll || offsetInCap >= p + 4 || offsetInCap + size <= p) return;
    const first = Math.max(0, offsetInCap - p) * 8,
      end = Math.min((offsetInCap + size - p) * 8, this.vectors);
    if (first < end) this.runner.batch(() => this.runner.call(() => poll.call(this.listener, first, end)));
  }

  /** Writes `size` (1, 2, 4) bytes at `offsetInCap` through the write mask, then reports. */
  configWrite(offsetInCap: number, size: number, value: number): void {
    checkConfigAccess(offsetInCap, size);
    let touched = false;
    for (let i = 0; i < size; i++) {
      const o = offsetInCap + i;
      if (o < 0 || o >= this.size) continue;
      const w = this.wmask[o]!;
      this.regs[o] = (this.regs[o]! & ~w) | ((value >>> (8 * i)) & w);
      touched = true;
    }
    if (!touched) return;
    // Multiple message enable beyond capable (or the reserved 6, 7): clamp, as QEMU does.
    const flags = this.messageControl;
    if ((flags & PCI_MSI_FLAGS_QSIZE) >> 4 > this.log2Capable)
      this.view.setUint16(PCI_MSI_FLAGS, (flags & ~PCI_MSI_FLAGS_QSIZE) | (this.log2Capable << 4), true);
    if (this.enabled) this.setPendingBits(this.pending & this.enabledMask);
    this.mirror();
    this.runner.batch(() => this.syncAll());
  }

  /**
   * Writes the capability into a device's config space (keeping the next pointer found there)
   * and its write mask; state changes are mirrored into `config` from then on. A generic
   * PciDevice.configWrite alone does not run the state machine (nor clamp MME): also call
   * configWrite.
   */
  writeCapabilityTo(config: Uint8Array, wmask: Uint8Array): void {
    const c = this.capOffset;
    if (config.length < c + this.size || wmask.length < c + this.size)
      throw new RangeError(`MSI: config space too small for a capability at 0x${c.toString(16)}`);
    this.regs[1] = config[c + 1]!;
    config.set(this.regs, c);
    wmask.set(this.wmask, c);
    this.config = config;
  }

  private mirror(): void {
    if (this.config) this.config.set(this.regs.subarray(2), this.capOffset + 2);
  }

  // --- device side -----------------------------------------------------------------------------

  private checkVector(vector: number): void {
    if (!Number.isInteger(vector) || vector < 0 || vector >= this.vectors)
      throw new RangeError(`MSI: vector ${String(vector)} out of range (0..${this.vectors - 1})`);
  }

  private get enabledMask(): number {
    const n = this.enabledVectors;
    return n === 32 ? 0xffffffff : (1 << n) - 1;
  }

  /** Not in use: MSI disabled, vector ≥ enabled vectors, or its mask bit set. */
  isMasked(vector: number): boolean {
    this.checkVector(vector);
    return !this.enabled || vector >= this.enabledVectors || ((this.maskBits >>> vector) & 1) !== 0;
  }

  message(vector: number): MsiMessage {
    this.checkVector(vector);
    const n = this.enabledVectors;
    let data = this.view.getUint16(this.dataOffset, true);
    if (n > 1) data = (data & ~(n - 1)) | vector;
    return {
      addressLo: this.view.getUint32(PCI_MSI_ADDRESS_LO, true),
      addressHi: this.is64bit ? this.view.getUint32(PCI_MSI_ADDRESS_LO + 4, true) : 0,
      data,
    };
  }

  isPending(vector: number): boolean {
    this.checkVector(vector);
    return ((this.pending >>> vector) & 1) !== 0;
  }

  /** An interrupt for `vector` arrived: delivered now, latched or dropped (see the header). */
  setPending(vector: number): void {
    this.checkVector(vector);
    if (this.isMasked(vector)) {
      if (!this.perVectorMask || (this.enabled && vector >= this.enabledVectors)) return;
    } else if (!this.listener.notify) {
      if (!this.perVectorMask) return;
    }
    this.setPendingBits(this.pending | (1 << vector));
    this.runner.batch(() => this.syncVector(vector));
  }

  clearPending(vector: number): void {
    this.checkVector(vector);
    this.setPendingBits(this.pending & ~(1 << vector));
  }

  /** Device reset: reported like a disable, then everything zeroed (one vector, unmasked). */
  reset(): void {
    this.regs.fill(0, 2);
    this.view.setUint16(PCI_MSI_FLAGS, this.readOnlyFlags, true);
    this.pending = 0;
    this.mirror();
    this.runner.batch(() => this.syncAll());
  }

  private setPendingBits(p: number): void {
    this.pending = p >>> 0;
    if (this.pendingOffset !== undefined) {
      this.view.setUint32(this.pendingOffset, this.pending, true);
      this.config?.set(
        this.regs.subarray(this.pendingOffset, this.pendingOffset + 4),
        this.capOffset + this.pendingOffset,
      );
    }
  }

  // --- bringing the listener's view up to date -------------------------------------------------

  private syncAll(): void {
    const now = this.enabled ? this.enabledVectors : 0;
    if (now !== this.reportedControl) {
      this.reportedControl = now;
      const l = this.listener;
      if (l.onControl) this.runner.call(() => l.onControl!(now !== 0, this.enabledVectors));
    }
    for (let v = 0; v < this.vectors; v++) this.syncVector(v);
  }

  private syncVector(v: number): void {
    this.reported.sync(v, this, this.listener);
  }

  // --- snapshot and migration (core/state.ts; a device model saves it inside its own section) ---
  /** The capability's registers (control, address, data, mask) and the pending bits. */
  saveState(w: StateWriter): void {
    w.blob(this.regs).u32(this.pending);
  }
  /** The same, then the listener hears the vectors in use as after the guest's own writes. */
  loadState(r: StateReader): void {
    const regs = r.blob('the MSI registers', 64);
    if (regs.length !== this.regs.length)
      throw r.bad(`MSI capability is ${regs.length} bytes in the stream, ${this.regs.length} here`);
    const flags = new DataView(regs.buffer, regs.byteOffset, regs.byteLength).getUint16(PCI_MSI_FLAGS, true);
    if ((flags & ~(PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE)) !== this.readOnlyFlags)
      throw r.bad(`MSI flags 0x${flags.toString(16)} are another device model's`);
    const pending = r.u32('the pending bits');
    this.regs.set(regs.subarray(2), 2);
    this.setPendingBits(pending);
    this.mirror();
    this.runner.batch(() => this.syncAll());
  }
}
