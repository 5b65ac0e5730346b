// The split virtqueue (virtio 1.2 §2.7): the descriptor table, the driver (avail) ring and the
// device (used) ring in guest memory, read and written through GuestMemory. Everything the
// driver wrote is checked before use — ring indexes, descriptor indexes, addresses and lengths
// (wholly guest RAM), chain length (at most the queue size, so a loop ends), indirect tables
// (non-empty, a multiple of 16 bytes, not nested, only as the whole chain), readable before
// writable — and a violation is a VirtqueueError: the transport marks the device NEEDS_RESET
// (§2.1.2) and stops using the queue, as QEMU's virtio_error does.
//
// The three ring areas are kept at hand as views of their RAM (QEMU's MemoryRegionCache), taken
// again whenever the memory map changes: a request then costs a few typed-array accesses, not a
// memory-map lookup per ring field. An area that is not one flat piece of RAM goes through
// GuestMemory's read and write.
import type { GuestMemory, RamSpan } from './guest-memory.js';

export const VIRTQ_DESC_F_NEXT = 1,
  VIRTQ_DESC_F_WRITE = 2,
  VIRTQ_DESC_F_INDIRECT = 4;
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1,
  VIRTQ_USED_F_NO_NOTIFY = 1;
export const VIRTQ_DESC_SIZE = 16;
/** The largest queue a split virtqueue may have (§2.7). */
export const VIRTQ_MAX_SIZE = 32768;

/** The driver broke the virtqueue rules: the device needs a reset. */
export class VirtqueueError extends Error {
  override name = 'VirtqueueError';
}

/** One guest buffer of a chain. */
export interface VirtqBuffer {
  addr: number;
  len: number;
}

/** A descriptor chain the device took from the avail ring: device-readable buffers, then device-writable ones. */
export interface VirtqChain {
  head: number;
  readable: VirtqBuffer[];
  writable: VirtqBuffer[];
  readableLen: number;
  writableLen: number;
}

/** A chain to fill (popInto). */
export function emptyChain(): VirtqChain {
  return { head: 0, readable: [], writable: [], readableLen: 0, writableLen: 0 };
}

/** bufs[i] = {addr, len}, reusing the object there. */
function setBuffer(bufs: VirtqBuffer[], i: number, addr: number, len: number): void {
  const b = bufs[i];
  if (b) {
    b.addr = addr;
    b.len = len;
  } else bufs.push({ addr, len });
}

export interface VirtqueueConfig {
  size: number;
  desc: number;
  avail: number;
  used: number;
  /** VIRTIO_F_EVENT_IDX was negotiated. */
  eventIdx: boolean;
  /** VIRTIO_F_INDIRECT_DESC was negotiated. */
  indirect: boolean;
}

/**
 * `vring_need_event` (§2.7.10): whether the other side asked to hear about index `newIdx` given
 * it was last told at `old` and wants an event once `eventIdx` is passed.
 */
export function vringNeedEvent(eventIdx: number, newIdx: number, old: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - old) & 0xffff);
}

/** Size and alignment rules of the three areas (§2.7: 16, 2, 4 bytes). */
export function virtqueueLayout(size: number, eventIdx: boolean): { desc: number; avail: number; used: number } {
  return { desc: 16 * size, avail: 6 + 2 * size - (eventIdx ? 0 : 2), used: 6 + 8 * size - (eventIdx ? 0 : 2) };
}

export class SplitVirtqueue {
  readonly size: number;
  /** Next avail ring entry the device takes. */
  lastAvail = 0;
  /** The used ring index the device publishes. */
  usedIdx = 0;
  private signalledUsed = 0;
  private signalledValid = false;
  /** Whether the device currently asks for notifications (setNotification). */
  private notifyOn = true;
  private readonly b2 = new Uint8Array(2);
  private readonly b8 = new Uint8Array(8);
  private readonly b16 = new Uint8Array(16);
  private readonly d16 = new DataView(this.b16.buffer);
  private readonly d8 = new DataView(this.b8.buffer);

  constructor(
    private readonly mem: GuestMemory,
    readonly cfg: VirtqueueConfig,
  ) {
    const { size, desc, avail, used } = cfg;
    if (!Number.isInteger(size) || size < 1 || size > VIRTQ_MAX_SIZE || size & (size - 1))
      throw new VirtqueueError(`queue size ${size} is not a power of two in 1..${VIRTQ_MAX_SIZE}`);
    if (desc % 16 || avail % 2 || used % 4)
      throw new VirtqueueError(
        `ring addresses misaligned (desc 0x${desc.toString(16)} needs 16, avail 0x${avail.toString(16)} 2, used 0x${used.toString(16)} 4)`,
      );
    const l = virtqueueLayout(size, cfg.eventIdx);
    if (!mem.check(desc, l.desc, false) || !mem.check(avail, l.avail, false) || !mem.check(used, l.used, true))
      throw new VirtqueueError(
        `ring areas not in guest RAM (desc 0x${desc.toString(16)}+0x${l.desc.toString(16)}, avail 0x${avail.toString(16)}+0x${l.avail.toString(16)}, used 0x${used.toString(16)}+0x${l.used.toString(16)})`,
      );
    this.size = size;
  }

  // Each area's span (undefined: not one flat piece of RAM) as of memory generation `gen`.
  private gen = -1;
  private descS: RamSpan | undefined;
  private availS: RamSpan | undefined;
  private usedS: RamSpan | undefined;

  /** Takes the areas' spans again if the memory map changed since they were taken. */
  private sync(): void {
    const g = this.mem.generation;
    if (g === this.gen) return;
    const l = virtqueueLayout(this.size, this.cfg.eventIdx);
    this.descS = this.mem.span(this.cfg.desc, l.desc, false);
    this.availS = this.mem.span(this.cfg.avail, l.avail, false);
    this.usedS = this.mem.span(this.cfg.used, l.used, true);
    this.gen = g;
  }

  /** The u16 at byte `off` of the avail area. */
  private avail16(off: number): number {
    const s = this.availS;
    return s ? s.view.getUint16(s.offset + off, true) : this.read16(this.cfg.avail + off);
  }
  /** Writes the u16 at byte `off` of the used area. */
  private used16(off: number, v: number): void {
    const s = this.usedS;
    if (s) s.view.setUint16(s.offset + off, v, true);
    else this.write16(this.cfg.used + off, v);
  }

  private read16(addr: number): number {
    if (!this.mem.read(addr, this.b2)) throw new VirtqueueError(`ring at 0x${addr.toString(16)} is not guest RAM`);
    return this.b2[0]! | (this.b2[1]! << 8);
  }
  private write16(addr: number, v: number): void {
    this.b2[0] = v & 0xff;
    this.b2[1] = (v >>> 8) & 0xff;
    if (!this.mem.write(addr, this.b2)) throw new VirtqueueError(`ring at 0x${addr.toString(16)} is not guest RAM`);
  }

  /** avail->idx as the driver last wrote it. */
  availIdx(): number {
    this.sync();
    return this.avail16(2);
  }
  private availFlags(): number {
    return this.avail16(0);
  }
  private usedEvent(): number {
    return this.avail16(4 + 2 * this.size);
  }

  /** Whether the driver has made buffers available that the device has not taken. */
  hasWork(): boolean {
    const n = (this.availIdx() - this.lastAvail) & 0xffff;
    if (n > this.size)
      throw new VirtqueueError(`avail idx moved ${n} entries ahead of the device (queue size ${this.size})`);
    return n > 0;
  }

  /** Takes the next available chain, or undefined when the ring is empty. */
  pop(): VirtqChain | undefined {
    const chain = emptyChain();
    return this.popInto(chain) ? chain : undefined;
  }

  /**
   * Takes the next available chain into `chain`, reusing its arrays and buffer objects (a device
   * that answers each request before the next keeps one and allocates nothing per request);
   * false when the ring is empty. A VirtqueueError leaves `chain` unspecified.
   */
  popInto(chain: VirtqChain): boolean {
    if (!this.hasWork()) return false;
    const head = this.avail16(4 + 2 * (this.lastAvail % this.size));
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    if (this.cfg.eventIdx && this.notifyOn) this.used16(this.availEventOff(), this.lastAvail);
    this.walk(head, chain);
    return true;
  }

  /** avail_event's offset in the used area. */
  private availEventOff(): number {
    return 4 + 8 * this.size;
  }

  /** The indirect table of the chain being walked, when it is one piece of RAM. */
  private readonly tableSpan: RamSpan = { view: new DataView(new ArrayBuffer(0)), offset: 0 };

  // The last descriptor read (readDesc): fields, not an object per descriptor.
  private dAddr = 0;
  private dLen = 0;
  private dFlags = 0;
  private dNext = 0;

  /** Descriptor i of the table at `table`, from `span` (the table's) when it is at hand. */
  private readDesc(table: number, span: RamSpan | undefined, i: number): void {
    let v: DataView, o: number;
    if (span) {
      v = span.view;
      o = span.offset + VIRTQ_DESC_SIZE * i;
    } else {
      const at = table + VIRTQ_DESC_SIZE * i;
      if (!this.mem.read(at, this.b16))
        throw new VirtqueueError(`descriptor ${i} at 0x${at.toString(16)} is not guest RAM`);
      v = this.d16;
      o = 0;
    }
    const hi = v.getUint32(o + 4, true);
    // Addresses at or beyond 2^53 cannot be guest RAM: refused without losing precision.
    if (hi >= 2 ** 21)
      throw new VirtqueueError(`descriptor ${i}: address 0x${hi.toString(16)}xxxxxxxx is beyond guest RAM`);
    this.dAddr = hi * 2 ** 32 + v.getUint32(o, true);
    this.dLen = v.getUint32(o + 8, true);
    this.dFlags = v.getUint16(o + 12, true);
    this.dNext = v.getUint16(o + 14, true);
  }

  /** Follows a chain from `head` into `chain`, checking every rule. */
  private walk(head: number, chain: VirtqChain): void {
    if (head >= this.size) throw new VirtqueueError(`avail ring names descriptor ${head} ≥ queue size ${this.size}`);
    chain.head = head;
    chain.readableLen = chain.writableLen = 0;
    let nr = 0,
      nw = 0;
    let table = this.cfg.desc,
      span = this.descS,
      tableSize = this.size,
      i = head,
      indirect = false,
      count = 0;
    for (;;) {
      this.readDesc(table, span, i);
      const addr = this.dAddr,
        len = this.dLen,
        flags = this.dFlags,
        next = this.dNext;
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (!this.cfg.indirect) throw new VirtqueueError(`descriptor ${i}: INDIRECT without VIRTIO_F_INDIRECT_DESC`);
        if (indirect) throw new VirtqueueError(`descriptor ${i}: an indirect descriptor inside an indirect table`);
        if (count > 0 || flags & VIRTQ_DESC_F_NEXT)
          throw new VirtqueueError(`descriptor ${i}: an indirect table must be the whole chain (no NEXT, first)`);
        if (len === 0 || len % VIRTQ_DESC_SIZE)
          throw new VirtqueueError(`descriptor ${i}: indirect table of ${len} bytes (a non-zero multiple of 16)`);
        // Linux puts every request of two or more buffers in an indirect table: at hand without allocating.
        if (this.mem.spanInto(addr, len, false, this.tableSpan)) span = this.tableSpan;
        else if (this.mem.check(addr, len, false)) span = undefined;
        else throw new VirtqueueError(`indirect table 0x${addr.toString(16)}+0x${len.toString(16)} is not guest RAM`);
        table = addr;
        tableSize = len / VIRTQ_DESC_SIZE;
        indirect = true;
        i = 0;
        continue;
      }
      if (++count > this.size)
        throw new VirtqueueError(`chain from descriptor ${head} is longer than the queue size ${this.size} (a loop?)`);
      const write = (flags & VIRTQ_DESC_F_WRITE) !== 0;
      if (!write && nw > 0)
        throw new VirtqueueError(`chain from descriptor ${head}: a device-readable buffer after a device-writable one`);
      if (!this.mem.check(addr, len, write))
        throw new VirtqueueError(
          `chain from descriptor ${head}: buffer 0x${addr.toString(16)}+0x${len.toString(16)} is not guest RAM`,
        );
      if (write) {
        setBuffer(chain.writable, nw++, addr, len);
        chain.writableLen += len;
      } else {
        setBuffer(chain.readable, nr++, addr, len);
        chain.readableLen += len;
      }
      if (!(flags & VIRTQ_DESC_F_NEXT)) {
        if (chain.readable.length !== nr) chain.readable.length = nr;
        if (chain.writable.length !== nw) chain.writable.length = nw;
        return;
      }
      if (next >= tableSize)
        throw new VirtqueueError(
          `descriptor ${i}: next ${next} ≥ ${indirect ? 'indirect table' : 'queue'} size ${tableSize}`,
        );
      i = next;
    }
  }

  /** Returns a chain to the driver with `written` bytes written into its writable buffers. */
  push(head: number, written: number): void {
    this.sync();
    const off = 4 + 8 * (this.usedIdx % this.size);
    const s = this.usedS;
    if (s) {
      s.view.setUint32(s.offset + off, head, true);
      s.view.setUint32(s.offset + off + 4, written >>> 0, true);
    } else {
      const e = this.cfg.used + off;
      this.d8.setUint32(0, head, true);
      this.d8.setUint32(4, written >>> 0, true);
      if (!this.mem.write(e, this.b8)) throw new VirtqueueError(`used ring at 0x${e.toString(16)} is not guest RAM`);
    }
    // The element is in place before the index that publishes it.
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    this.used16(2, this.usedIdx);
  }

  /**
   * Whether the driver wants an interrupt for what was pushed since the last one (§2.7.7, 2.7.10):
   * with event index, once used_event was passed; without, unless it set NO_INTERRUPT.
   */
  needsInterrupt(): boolean {
    this.sync();
    if (!this.cfg.eventIdx) return (this.availFlags() & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
    const valid = this.signalledValid;
    const old = this.signalledUsed;
    this.signalledValid = true;
    this.signalledUsed = this.usedIdx;
    return !valid || vringNeedEvent(this.usedEvent(), this.usedIdx, old);
  }

  /**
   * Device-side notification suppression (§2.7.10): while the device works through the ring it
   * asks for no notifications; when it is done it asks again and returns whether buffers arrived
   * meanwhile (the caller then goes on, so none is left without a notification coming).
   */
  setNotification(on: boolean): boolean {
    this.notifyOn = on;
    this.sync();
    if (this.cfg.eventIdx) {
      if (on) this.used16(this.availEventOff(), this.lastAvail);
    } else {
      this.used16(0, on ? 0 : VIRTQ_USED_F_NO_NOTIFY);
    }
    return on && this.hasWork();
  }

  /**
   * The chain's readable bytes, at most `max` of them (a request's fixed part); into `into` (its
   * first bytes, returned as a view of them) when given, so a device can parse without allocating.
   */
  readChain(chain: VirtqChain, max = chain.readableLen, into?: Uint8Array): Uint8Array {
    const n = Math.min(max, chain.readableLen);
    if (into && into.length >= n) return into.subarray(0, this.readChainInto(chain, into, n));
    const out = new Uint8Array(n);
    this.readChainInto(chain, out, n);
    return out;
  }

  /** The chain's first readable bytes, at most `max` (default: into's length), into `into`; returns how many (no allocation). */
  readChainInto(chain: VirtqChain, into: Uint8Array, max = into.length): number {
    const want = Math.min(max, into.length, chain.readableLen);
    let done = 0;
    const bufs = chain.readable;
    for (let i = 0; i < bufs.length && done < want; i++) {
      const b = bufs[i]!;
      const n = Math.min(b.len, want - done);
      if (!this.mem.read(b.addr, into, done, n))
        throw new VirtqueueError(`buffer 0x${b.addr.toString(16)} is not guest RAM`);
      done += n;
    }
    return done;
  }

  /** Writes `data` into the chain's writable buffers from byte `offset`; returns the bytes written. */
  writeChain(chain: VirtqChain, data: Uint8Array, offset = 0): number {
    let skip = offset,
      done = 0;
    const bufs = chain.writable;
    for (let i = 0; i < bufs.length; i++) {
      const b = bufs[i]!;
      if (done >= data.length) break;
      if (skip >= b.len) {
        skip -= b.len;
        continue;
      }
      const n = Math.min(b.len - skip, data.length - done);
      if (!this.mem.write(b.addr + skip, data, done, n))
        throw new VirtqueueError(`buffer 0x${b.addr.toString(16)} is not guest RAM`);
      done += n;
      skip = 0;
    }
    return done;
  }
}
