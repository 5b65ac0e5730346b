// The device side of an exit: a decoded port I/O or MMIO access (exits.ts) answered through the
// memory API on the device thread, the same for vCPU 0 (data in its kvm_run page) and for the APs
// (data in their ring, exit-channel.ts).
import type { AddressSpace } from '../memory/index.js';
import { loadElement, storeElement } from './exits.js';

/** Exit counts; per port and per MMIO address only when asked, so tests can prove a BAR access did not exit. */
export class ExitStats {
  /** Count every access per port / address too: a map update per access, so off unless a test asks. */
  byAddress = false;
  readonly pio = new Map<number, number>();
  readonly mmio = new Map<number, number>();
  /** Accesses answered (a REP string instruction's elements count one each). */
  total = 0;
  /** KVM exits answered: KVM_EXIT_IO and KVM_EXIT_MMIO, from every vCPU. */
  ioExits = 0;
  mmioExits = 0;
  /** Interrupts the VMM injected itself (KVM_IRQ_LINE, KVM_SIGNAL_MSI) rather than through irqfd. */
  irqInjections = 0;
  mmioIn(lo: number, hi: number): number {
    let n = 0;
    for (const [a, c] of this.mmio) if (a >= lo && a < hi) n += c;
    return n;
  }
}

export class IoDispatch {
  constructor(
    private readonly io: AddressSpace,
    private readonly memory: AddressSpace,
    readonly stats: ExitStats,
  ) {}

  /**
   * Answers one exit: `count` accesses of `size` bytes at `addr`, element i's data at
   * view[off + i * size]; a read's answer is stored there.
   */
  serve(
    isPio: boolean,
    isWrite: boolean,
    size: number,
    addr: number,
    count: number,
    view: DataView,
    off: number,
  ): void {
    const stats = this.stats;
    if (isPio) stats.ioExits++;
    else stats.mmioExits++;
    stats.total += count;
    if (stats.byAddress) {
      const m = isPio ? stats.pio : stats.mmio;
      m.set(addr, (m.get(addr) ?? 0) + count);
    }
    for (let i = 0; i < count; i++, off += size) {
      if (isWrite) this.access(isPio, true, size, addr, loadElement(view, off, size));
      else storeElement(view, off, size, this.access(isPio, false, size, addr, 0));
    }
  }

  /** One guest access, dispatched to the memory API. */
  private access(
    isPio: boolean,
    isWrite: boolean,
    size: number,
    addr: number,
    value: number | bigint,
  ): number | bigint {
    const space = isPio ? this.io : this.memory;
    try {
      if (isWrite) {
        space.write(addr, size, value);
        return 0;
      }
      return space.read(addr, size);
    } catch (e) {
      // A device model bug must not take the VM down mid-access: report, read as all-ones.
      console.error(
        `tsvmm: ${isPio ? 'port' : 'mmio'} ${isWrite ? 'write' : 'read'} at 0x${addr.toString(16)} size ${size} failed: ${(e as Error).stack}`,
      );
      return size === 8 ? 0xffffffffffffffffn : 2 ** (8 * size) - 1;
    }
  }
}
