// The PCI host bridge: device 00:00.0 and configuration mechanism #1 (ports 0xCF8 address,
// 0xCFC-0xCFF data). Only bus 0 exists; accesses to other buses read all-ones.
import { MemoryRegion } from '../core/memory/index.js';
import { PciBus, PciDevice } from './pci.js';
import type { StateReader, StateWriter } from '../core/state.js';

export const PCI_CONF1_PORT = 0xcf8;

export class PciHostBridge extends PciDevice {
  readonly conf1: MemoryRegion;
  private address = 0;

  constructor(
    readonly pciBus: PciBus,
    opts: { onResetRequest?: () => void } = {},
  ) {
    // 8086:0d57 as Firecracker uses: Linux's pci_sanity_check wants an Intel host bridge on bus 0.
    super('pci-host-bridge', { vendor: 0x8086, device: 0x0d57, classCode: 0x060000 });
    this.conf1 = MemoryRegion.io('pci-conf1', 8, {
      read: (off, size) => this.conf1Read(off, size),
      write: (off, size, v) => this.conf1Write(off, size, Number(v), opts.onResetRequest),
    });
    pciBus.attach(this, 0);
  }

  private target(off: number): { devfn: number; reg: number } | undefined {
    const a = this.address;
    if (!(a & 0x80000000) || ((a >> 16) & 0xff) !== 0) return undefined;
    return { devfn: (a >> 8) & 0xff, reg: (a & 0xfc) + (off - 4) };
  }

  private conf1Read(off: number, size: number): number {
    if (off < 4) return off === 0 && size === 4 ? this.address >>> 0 : 0xffffffff >>> (32 - 8 * size);
    const t = this.target(off);
    if (!t || t.reg + size > 256) return 0xffffffff >>> (32 - 8 * size);
    return this.pciBus.configRead(t.devfn, t.reg, size);
  }

  private conf1Write(off: number, size: number, v: number, onReset?: () => void): void {
    if (off < 4) {
      if (off === 0 && size === 4) this.address = v >>> 0;
      // 0xCF9 is the reset control register on PC chipsets: bit 2 with bit 1 = hard/soft reset.
      else if (off === 1 && size === 1 && v & 0x04) onReset?.();
      return;
    }
    const t = this.target(off);
    if (t && t.reg + size <= 256) this.pciBus.configWrite(t.devfn, t.reg, size, v);
  }

  // --- snapshot and migration: the conf1 address latch with the bridge's config space -----------
  override get stateId(): string {
    return 'pci-host';
  }
  override saveState(w: StateWriter): void {
    super.saveState(w);
    w.u32(this.address);
  }
  override loadState(r: StateReader, version: number): void {
    super.loadState(r, version);
    this.address = r.u32('the conf1 address');
  }
}
