// The one decoder of a kvm_run page's exit, used by every run loop (vCPU 0 on the device thread,
// the APs in their workers): port I/O and MMIO become one access shape (what, where, how many
// elements, where their data sits in the page), every other exit the stop it means. A decoder is
// made once per vCPU and reused, so decoding an access allocates nothing.
import { native, type KvmRunLayout } from '../native.js';
import type { VcpuStop } from './exit-channel.js';

export const enum ExitKind {
  /** Port I/O or MMIO to answer: the decoder's access fields are set. */
  Access = 0,
  /** Nothing to do (KVM_EXIT_INTR): run on. */
  RunOn = 1,
  /** The run loop ends: `stop` says why. */
  Stop = 2,
}

export class ExitDecoder {
  isPio = false;
  isWrite = false;
  /** Bytes per element. */
  size = 0;
  /** Port or guest-physical address. */
  addr = 0;
  /** Elements: more than 1 only for REP INS/OUTS, all at the same port. */
  count = 0;
  /** Element i's data sits at page[dataOffset + i * size] (little-endian); a read's answer goes there. */
  dataOffset = 0;
  stop: VcpuStop | undefined;
  private readonly L: KvmRunLayout;
  private readonly IO: number;
  private readonly MMIO: number;
  private readonly IO_OUT: number;

  constructor(
    readonly page: DataView,
    readonly bytes: Uint8Array,
  ) {
    const n = native();
    this.L = n.kvmRunLayout;
    this.IO = n.constants.KVM_EXIT_IO;
    this.MMIO = n.constants.KVM_EXIT_MMIO;
    this.IO_OUT = n.constants.KVM_EXIT_IO_OUT;
  }

  /** Decodes the exit KVM_RUN (returning 0) left in the page. */
  decode(): ExitKind {
    const L = this.L,
      page = this.page,
      bytes = this.bytes;
    const reason = page.getUint32(L.exitReason, true);
    if (reason === this.IO) {
      this.isPio = true;
      this.isWrite = bytes[L.ioDirection] === this.IO_OUT;
      this.size = bytes[L.ioSize]!;
      this.addr = page.getUint16(L.ioPort, true);
      this.count = page.getUint32(L.ioCount, true);
      this.dataOffset = page.getUint32(L.ioDataOffset, true); // an offset into the page: the high half is 0
      return ExitKind.Access;
    }
    if (reason === this.MMIO) {
      this.isPio = false;
      this.isWrite = bytes[L.mmioIsWrite] !== 0;
      this.size = page.getUint32(L.mmioLen, true);
      this.addr = page.getUint32(L.mmioPhysAddr, true) + page.getUint32(L.mmioPhysAddr + 4, true) * 0x100000000;
      this.count = 1;
      this.dataOffset = L.mmioData;
      return ExitKind.Access;
    }
    this.stop = stopForExit(reason, page);
    return this.stop ? ExitKind.Stop : ExitKind.RunOn;
  }
}

/** A non-I/O exit: the stop it means, or undefined to run on (KVM_EXIT_INTR). */
function stopForExit(reason: number, page: DataView): VcpuStop | undefined {
  const n = native();
  const c = n.constants;
  const L = n.kvmRunLayout;
  switch (reason) {
    case c.KVM_EXIT_INTR:
      return undefined;
    case c.KVM_EXIT_HLT:
      return { reason: 'hlt' };
    case c.KVM_EXIT_SHUTDOWN:
      return { reason: 'shutdown' };
    case c.KVM_EXIT_SYSTEM_EVENT:
      return { reason: 'system-event', type: page.getUint32(L.systemEventType, true) };
    case c.KVM_EXIT_INTERNAL_ERROR: {
      const nd = Math.min(page.getUint32(L.internalNdata, true), 16);
      const data: string[] = [];
      for (let i = 0; i < nd; i++) data.push('0x' + page.getBigUint64(L.internalData + 8 * i, true).toString(16));
      return { reason: 'internal-error', suberror: page.getUint32(L.internalSuberror, true), data };
    }
    case c.KVM_EXIT_FAIL_ENTRY:
      return { reason: 'fail-entry', hwReason: '0x' + page.getBigUint64(L.failEntryReason, true).toString(16) };
    default:
      return { reason: 'unhandled-exit', exitReason: reason };
  }
}

/** The value of an element of `size` bytes at view[off] (8 bytes: a bigint; 3, 5–7: the low 4 bytes). */
export function loadElement(view: DataView, off: number, size: number): number | bigint {
  if (size === 1) return view.getUint8(off);
  if (size === 2) return view.getUint16(off, true);
  if (size === 8) return (BigInt(view.getUint32(off + 4, true)) << 32n) | BigInt(view.getUint32(off, true));
  return view.getUint32(off, true);
}

/** Stores a read's answer as an element of `size` bytes at view[off]. */
export function storeElement(view: DataView, off: number, size: number, v: number | bigint): void {
  if (typeof v === 'bigint') view.setBigUint64(off, BigInt.asUintN(64, v), true);
  else if (size === 1) view.setUint8(off, v & 0xff);
  else if (size === 2) view.setUint16(off, v & 0xffff, true);
  else if (size === 8) {
    view.setUint32(off, v >>> 0, true);
    view.setUint32(off + 4, Math.floor(v / 0x100000000) >>> 0, true);
  } else view.setUint32(off, v >>> 0, true);
}

/** Copies one element of `size` bytes (at most 8) between views, without making a value of it. */
export function copyElement(src: DataView, from: number, dst: DataView, to: number, size: number): void {
  if (size === 1) dst.setUint8(to, src.getUint8(from));
  else if (size === 2) dst.setUint16(to, src.getUint16(from, true), true);
  else {
    dst.setUint32(to, src.getUint32(from, true), true);
    if (size === 8) dst.setUint32(to + 4, src.getUint32(from + 4, true), true);
  }
}

export const EINTR = 4,
  EAGAIN = 11;
