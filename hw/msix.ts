// MSI-X capability emulation (PCI Local Bus 3.0 §6.8.2, QEMU's hw/pci/msix.c): the 12-byte
// capability in config space, the vector table and the Pending Bit Array. Pure logic: no KVM,
// no VFIO, no syscalls. A device model (vfio-pci, or an emulated device) owns an MsixCap,
// forwards config accesses that hit the capability, places tableRegion / pbaRegion in its BARs,
// and reacts to the listener's callbacks.
//
// ## Capability (config space, at capOffset)
//
//   +0 ID 0x11 | +1 next pointer | +2 Message Control: bits 10:0 table size - 1 (RO), 13:11
//   reserved (RO 0), 14 function mask (RW), 15 enable (RW) | +4 table offset | BIR (RO) |
//   +8 PBA offset | BIR (RO). Only bits 15 and 14 of Message Control are guest-writable.
//
// ## Table and PBA (MMIO)
//
// Entries are 16 bytes: address lo, address hi, data, vector control (bit 0 = mask; the other
// bits are reserved: read as 0, writes ignored). Like QEMU (valid 4..8 bytes, impl 4), only
// naturally aligned 4- and 8-byte accesses are valid; an 8-byte access is two dwords (low
// first), processed as ONE update (one callback at most). Invalid accesses (size 1/2, unaligned,
// beyond the end) read all-ones and drop writes. Vectors reset masked with a zero message. The PBA
// is read-only for the guest (writes dropped); its bits are set by setPending().
//
// ## Callbacks (one design: "in use" tracking)
//
// A vector is IN USE when MSI-X is enabled, the function is not masked and the vector's own
// mask bit is clear — i.e. !isMasked(v). The listener is kept informed of which vectors are in
// use and of their messages, QEMU's msix_vector_use/release notifier semantics:
//
//   onControl(enabled, functionMasked)  the enable bit changed, or the function mask changed
//                                       while enabled (reported first, before vector calls)
//   vectorUse(v, msg)                   v became in use, or its message changed while in use
//                                       (QEMU tolerates message updates while unmasked). A
//                                       message changed while NOT in use is reported by the
//                                       vectorUse at the next use. The first vectorUse of a
//                                       vector is the moment to allocate it (route, irqfd).
//   vectorRelease(v)                    v stopped being in use: per-vector mask, function mask,
//                                       disable or reset. It is NOT "free the vector": per the
//                                       spec (and pain point 6) a masked vector keeps its
//                                       route; the listener should redirect the interrupt
//                                       source to something that calls setPending(v).
//   notify(v, msg)                      deliver v now: v had its PBA bit set and became in use
//                                       (the bit is cleared before the call). Always right
//                                       after the vectorUse(v) that unmasked it.
//   pbaPoll(first, end)                 the guest is about to read PBA bits of [first, end):
//                                       a chance to drain interrupt sources into setPending().
//
// Order: onControl (if it changed), then vectors in ascending order, each with its release or
// its use (+ notify). So, for Linux's sequence:
//   enable with function mask       → onControl(true, true)
//   unmask vector 0 in the table    → nothing (function still masked)
//   clear function mask             → onControl(true, false), vectorUse(0, msg)
//                                     [+ notify(0, msg) if setPending(0) happened meanwhile]
//   mask vector 0                   → vectorRelease(0); setPending(0) then only sets the PBA bit
//   unmask vector 0                 → vectorUse(0, msg), notify(0, msg) (PBA bit cleared)
//   disable                         → onControl(false, fm), vectorRelease(v) for each in use
//   reset()                         → same as disable (if enabled), then everything is zeroed
//
// The state is updated before any callback, and the listener's view is tracked separately, so
// callbacks may call back into the cap (setPending, even config/table writes): every change is
// reported exactly once and the listener's view always converges to the real state. A throwing
// callback does not stop the others; errors are rethrown afterwards (AggregateError if several).
import { MemoryRegion } from '../core/memory/index.js';
import type { MsiMessage } from '../core/msi.js';
import { CallbackRunner, ReportedVectors, checkConfigAccess, checkInt } from './msi-vectors.js';
import type { StateReader, StateWriter } from '../core/state.js';

export type { MsiMessage } from '../core/msi.js';

export const PCI_CAP_ID_MSIX = 0x11;
export const MSIX_CAP_SIZE = 12;
export const MSIX_ENTRY_SIZE = 16;
export const MSIX_MAX_VECTORS = 2048;
export const PCI_MSIX_FLAGS = 2,
  PCI_MSIX_TABLE = 4,
  PCI_MSIX_PBA = 8;
export const PCI_MSIX_FLAGS_QSIZE = 0x07ff,
  PCI_MSIX_FLAGS_MASKALL = 0x4000,
  PCI_MSIX_FLAGS_ENABLE = 0x8000;
export const PCI_MSIX_ENTRY_CTRL_MASKBIT = 1;

export interface MsixVectorState extends MsiMessage {
  /** the vector's own mask bit */ masked: boolean;
}

export interface MsixListener {
  onControl?(enabled: boolean, functionMasked: boolean): void;
  vectorUse?(vector: number, msg: MsiMessage): void;
  vectorRelease?(vector: number): void;
  notify?(vector: number, msg: MsiMessage): void;
  pbaPoll?(firstVector: number, endVector: number): void;
}

export interface MsixOptions {
  vectors: number; // 1..2048
  tableBar: number; // 0..5
  tableOffset: number; // in the BAR, 8-byte aligned
  pbaBar: number;
  pbaOffset: number;
  capOffset: number; // in config space, dword aligned, 0x40..0xf4
  name?: string; // prefix of the region names
}

function ones(size: number): number | bigint {
  return size === 8 ? 0xffffffffffffffffn : size >= 4 ? 0xffffffff : (1 << (8 * size)) - 1;
}

function splitValue(size: number, value: number | bigint): [number, number] {
  if (size === 8) {
    if (typeof value === 'bigint') return [Number(value & 0xffffffffn), Number((value >> 32n) & 0xffffffffn)];
    if (!Number.isFinite(value)) return [0, 0];
    return [value >>> 0, Math.floor(value / 2 ** 32) >>> 0];
  }
  return [Number(typeof value === 'bigint' ? value & 0xffffffffn : value) >>> 0, 0];
}

const CONTROL_OFF = 0,
  CONTROL_ON = 1,
  CONTROL_ON_MASKED = 2;

export class MsixCap {
  readonly vectors: number;
  readonly tableBar: number;
  readonly tableOffset: number;
  readonly pbaBar: number;
  readonly pbaOffset: number;
  readonly capOffset: number;
  /** The emulated table, vectors*16 bytes: overlay it on tableBar at tableOffset. */
  readonly tableRegion: MemoryRegion;
  /** The emulated PBA, ceil(vectors/64)*8 bytes: overlay it on pbaBar at pbaOffset. */
  readonly pbaRegion: MemoryRegion;

  /** 4 dwords per vector: address lo, address hi, data, control (bit 0 only). */
  private readonly table: Uint32Array;
  private readonly pba: Uint32Array;
  /** Message Control bits 15 and 14. */
  private control = 0;
  private next = 0;
  private config: Uint8Array | undefined;

  // What the listener was last told.
  private reportedControl = CONTROL_OFF;
  private readonly reported: ReportedVectors;
  private readonly runner = new CallbackRunner();

  constructor(
    opts: MsixOptions,
    public listener: MsixListener = {},
  ) {
    const who = `MSI-X ${opts.name ?? ''}`.trim();
    checkInt(who, 'vectors', opts.vectors, 1, MSIX_MAX_VECTORS);
    checkInt(who, 'tableBar', opts.tableBar, 0, 5);
    checkInt(who, 'pbaBar', opts.pbaBar, 0, 5);
    checkInt(who, 'tableOffset', opts.tableOffset, 0, 0xfffffff8);
    checkInt(who, 'pbaOffset', opts.pbaOffset, 0, 0xfffffff8);
    if (opts.tableOffset % 8 || opts.pbaOffset % 8)
      throw new RangeError(`${who}: table/PBA offsets must be 8-byte aligned (low 3 bits hold the BIR)`);
    checkInt(who, 'capOffset', opts.capOffset, 0x40, 256 - MSIX_CAP_SIZE);
    if (opts.capOffset % 4)
      throw new RangeError(`${who}: capOffset must be dword aligned, got 0x${opts.capOffset.toString(16)}`);
    this.vectors = opts.vectors;
    this.tableBar = opts.tableBar;
    this.tableOffset = opts.tableOffset;
    this.pbaBar = opts.pbaBar;
    this.pbaOffset = opts.pbaOffset;
    this.capOffset = opts.capOffset;
    this.table = new Uint32Array(this.vectors * 4);
    this.pba = new Uint32Array(Math.ceil(this.vectors / 64) * 2);
    this.reported = new ReportedVectors(this.vectors, this.runner);
    this.maskAll();
    const prefix = opts.name ? `${opts.name}-` : '';
    const valid = { minAccessSize: 4, maxAccessSize: 8 } as const;
    this.tableRegion = MemoryRegion.io(
      `${prefix}msix-table`,
      this.tableSize,
      {
        read: (off, size) => this.tableRead(off, size),
        write: (off, size, value) => this.tableWrite(off, size, value),
      },
      { valid },
    );
    this.pbaRegion = MemoryRegion.io(
      `${prefix}msix-pba`,
      this.pbaSize,
      {
        read: (off, size) => this.pbaRead(off, size),
        write: () => {
          /* read-only for the guest */
        },
      },
      { valid },
    );
  }

  get tableSize(): number {
    return this.vectors * MSIX_ENTRY_SIZE;
  }
  get pbaSize(): number {
    return this.pba.length * 4;
  }
  get enabled(): boolean {
    return (this.control & PCI_MSIX_FLAGS_ENABLE) !== 0;
  }
  get functionMasked(): boolean {
    return (this.control & PCI_MSIX_FLAGS_MASKALL) !== 0;
  }
  /** Message Control as the guest reads it. */
  get messageControl(): number {
    return this.control | (this.vectors - 1);
  }

  /** The capability's next pointer (kept from the config space by writeCapabilityTo). */
  get nextPointer(): number {
    return this.next;
  }
  set nextPointer(p: number) {
    this.next = p & 0xff;
    if (this.config) this.config[this.capOffset + 1] = this.next;
  }

  // --- config space ----------------------------------------------------------------------------

  /** The 12 capability bytes as the guest sees them. */
  capabilityBytes(): Uint8Array {
    const b = new Uint8Array(MSIX_CAP_SIZE);
    const v = new DataView(b.buffer);
    b[0] = PCI_CAP_ID_MSIX;
    b[1] = this.next;
    v.setUint16(PCI_MSIX_FLAGS, this.messageControl, true);
    v.setUint32(PCI_MSIX_TABLE, (this.tableOffset | this.tableBar) >>> 0, true);
    v.setUint32(PCI_MSIX_PBA, (this.pbaOffset | this.pbaBar) >>> 0, true);
    return b;
  }

  /**
   * Reads `size` (1, 2 or 4) bytes at `offsetInCap` (may be negative or run past the end: bytes
   * outside the capability read as 0, for the caller to merge).
   */
  configRead(offsetInCap: number, size: number): number {
    checkConfigAccess(offsetInCap, size);
    const b = this.capabilityBytes();
    let v = 0;
    for (let i = size - 1; i >= 0; i--) {
      const o = offsetInCap + i;
      v = (v << 8) | (o >= 0 && o < MSIX_CAP_SIZE ? b[o]! : 0);
    }
    return v >>> 0;
  }

  /** Writes `size` (1, 2 or 4) bytes at `offsetInCap`; only Message Control bits 15/14 stick. */
  configWrite(offsetInCap: number, size: number, value: number): void {
    checkConfigAccess(offsetInCap, size);
    const hi = PCI_MSIX_FLAGS + 1;
    if (hi < offsetInCap || hi >= offsetInCap + size) return;
    const b = (value >>> (8 * (hi - offsetInCap))) & 0xff;
    this.control = (b & 0xc0) << 8;
    this.mirrorControl();
    this.runner.batch(() => this.syncAll());
  }

  /**
   * Writes the capability into a device's config space (keeping the next pointer found there)
   * and its write mask (only Message Control bits 15/14 writable), so a generic
   * PciDevice.configWrite gives the same bytes. From then on state changes are mirrored into
   * `config`. A generic write alone does not run the state machine: also call configWrite.
   */
  writeCapabilityTo(config: Uint8Array, wmask: Uint8Array): void {
    const c = this.capOffset;
    if (config.length < c + MSIX_CAP_SIZE || wmask.length < c + MSIX_CAP_SIZE)
      throw new RangeError(`MSI-X: config space too small for a capability at 0x${c.toString(16)}`);
    this.next = config[c + 1]!;
    config.set(this.capabilityBytes(), c);
    wmask.fill(0, c, c + MSIX_CAP_SIZE);
    wmask[c + PCI_MSIX_FLAGS + 1] = 0xc0;
    this.config = config;
  }

  private mirrorControl(): void {
    if (!this.config) return;
    const mc = this.messageControl;
    this.config[this.capOffset + PCI_MSIX_FLAGS] = mc & 0xff;
    this.config[this.capOffset + PCI_MSIX_FLAGS + 1] = mc >>> 8;
  }

  // --- device side -----------------------------------------------------------------------------

  private checkVector(vector: number): void {
    if (!Number.isInteger(vector) || vector < 0 || vector >= this.vectors)
      throw new RangeError(`MSI-X: vector ${String(vector)} out of range (0..${this.vectors - 1})`);
  }

  /** Per-vector mask OR function mask OR MSI-X disabled. */
  isMasked(vector: number): boolean {
    this.checkVector(vector);
    return this.control !== PCI_MSIX_FLAGS_ENABLE || (this.table[vector * 4 + 3]! & 1) !== 0;
  }

  message(vector: number): MsiMessage {
    this.checkVector(vector);
    const t = vector * 4;
    return { addressLo: this.table[t]!, addressHi: this.table[t + 1]!, data: this.table[t + 2]! };
  }

  vectorState(vector: number): MsixVectorState {
    return { ...this.message(vector), masked: (this.table[vector * 4 + 3]! & 1) !== 0 };
  }

  isPending(vector: number): boolean {
    this.checkVector(vector);
    return (this.pba[vector >>> 5]! & (1 << (vector & 31))) !== 0;
  }

  anyPending(): boolean {
    return this.pba.some((w) => w !== 0);
  }

  /**
   * An interrupt for `vector` arrived. Masked (or no notify callback): sets its PBA bit, to be
   * delivered by notify() when the vector becomes in use. In use: delivered at once by notify().
   */
  setPending(vector: number): void {
    this.checkVector(vector);
    this.pba[vector >>> 5]! |= 1 << (vector & 31);
    this.runner.batch(() => this.syncVector(vector));
  }

  clearPending(vector: number): void {
    this.checkVector(vector);
    this.pba[vector >>> 5]! &= ~(1 << (vector & 31));
  }

  /** Device reset: reported to the listener like a disable, then table masked and zeroed, PBA clear. */
  reset(): void {
    this.control = 0;
    this.maskAll();
    this.pba.fill(0);
    this.mirrorControl();
    this.runner.batch(() => this.syncAll());
  }

  private maskAll(): void {
    this.table.fill(0);
    for (let v = 0; v < this.vectors; v++) this.table[v * 4 + 3] = PCI_MSIX_ENTRY_CTRL_MASKBIT;
  }

  // --- table / PBA MMIO --------------------------------------------------------------------------

  private static valid(off: number, size: number, limit: number): boolean {
    return (size === 4 || size === 8) && Number.isInteger(off) && off >= 0 && off % size === 0 && off + size <= limit;
  }

  private tableRead(off: number, size: number): number | bigint {
    if (!MsixCap.valid(off, size, this.tableSize)) return ones(size);
    const i = off >>> 2;
    if (size === 4) return this.table[i]!;
    return BigInt(this.table[i]!) | (BigInt(this.table[i + 1]!) << 32n);
  }

  private tableWrite(off: number, size: number, value: number | bigint): void {
    if (!MsixCap.valid(off, size, this.tableSize)) return;
    const [lo, hi] = splitValue(size, value);
    const i = off >>> 2;
    this.storeDword(i, lo);
    if (size === 8) this.storeDword(i + 1, hi);
    this.runner.batch(() => this.syncVector(off >>> 4));
  }

  private storeDword(i: number, v: number): void {
    this.table[i] = (i & 3) === 3 ? v & PCI_MSIX_ENTRY_CTRL_MASKBIT : v;
  }

  private pbaRead(off: number, size: number): number | bigint {
    if (!MsixCap.valid(off, size, this.pbaSize)) return ones(size);
    const first = off * 8,
      end = Math.min((off + size) * 8, this.vectors);
    const poll = this.listener.pbaPoll;
    if (poll && first < end) this.runner.batch(() => this.runner.call(() => poll.call(this.listener, first, end)));
    const i = off >>> 2;
    if (size === 4) return this.pba[i]!;
    return BigInt(this.pba[i]!) | (BigInt(this.pba[i + 1]!) << 32n);
  }

  // --- bringing the listener's view up to date -------------------------------------------------

  private syncAll(): void {
    this.syncControl();
    for (let v = 0; v < this.vectors; v++) this.syncVector(v);
  }

  private syncControl(): void {
    const now = !this.enabled ? CONTROL_OFF : this.functionMasked ? CONTROL_ON_MASKED : CONTROL_ON;
    if (now === this.reportedControl) return;
    this.reportedControl = now;
    const l = this.listener;
    if (l.onControl) this.runner.call(() => l.onControl!(now !== CONTROL_OFF, this.functionMasked));
  }

  private syncVector(v: number): void {
    this.reported.sync(v, this, this.listener);
  }

  // --- snapshot and migration (core/state.ts; a device model saves it inside its own section) ---
  /** Message Control, the table (messages and per-vector masks) and the PBA (pending bits). */
  saveState(w: StateWriter): void {
    w.u16(this.control).u32(this.vectors);
    for (const d of this.table) w.u32(d);
    for (const d of this.pba) w.u32(d);
  }
  /** The same, then the listener hears the vectors in use as after the guest's own writes. */
  loadState(r: StateReader): void {
    const control = r.u16('MSI-X control');
    const n = r.u32('the vector count');
    if (n !== this.vectors) throw r.bad(`MSI-X has ${n} vectors in the stream, ${this.vectors} here`);
    if (control & ~(PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL))
      throw r.bad(`MSI-X control 0x${control.toString(16)}`);
    const table = new Uint32Array(this.table.length);
    for (let i = 0; i < table.length; i++) table[i] = r.u32('the MSI-X table');
    const pba = new Uint32Array(this.pba.length);
    for (let i = 0; i < pba.length; i++) pba[i] = r.u32('the PBA');
    this.control = control;
    for (let i = 0; i < table.length; i++) this.storeDword(i, table[i]!);
    this.pba.set(pba);
    this.mirrorControl();
    this.runner.batch(() => this.syncAll());
  }
}
