// Firmware's part of PCI: placing BARs in the machine's windows by writing their registers, at
// start (every device) and on hot-plug (one device, around the others).
import {
  PCI_BASE_ADDRESS_0,
  PCI_ROM_ADDRESS,
  PCI_ROM_ADDRESS_MASK,
  type PciBar,
  type PciBus,
  type PciDevice,
} from './pci.js';

/**
 * Firmware's job, done by the VMM as cloud-hypervisor does: place every BAR of every device
 * (largest first, naturally aligned) in the given windows, by writing the BAR registers the way
 * a BIOS would. 64-bit BARs go in the 32-bit window too when they fit, so guests without paging
 * (the test guest) reach them. Decoding stays off until the guest sets the command register.
 */
export function assignBars(bus: PciBus, mmio: { base: number; end: number }, io: { base: number; end: number }): void {
  const bars: { dev: PciDevice; bar: PciBar }[] = [];
  for (const dev of bus.devices.values())
    for (const bar of dev.bars) if (bar && !bars.some((b) => b.bar === bar)) bars.push({ dev, bar });
  bars.sort((a, b) => b.bar.size - a.bar.size);
  let memNext = mmio.base,
    ioNext = io.base;
  for (const { dev, bar } of bars) {
    const isIo = bar.type === 'io';
    const at = Math.ceil((isIo ? ioNext : memNext) / bar.size) * bar.size;
    if (at + bar.size > (isIo ? io.end : mmio.end))
      throw new Error(
        `no room for ${dev.name} BAR${bar.index} (0x${bar.size.toString(16)} bytes) in the PCI ${isIo ? 'I/O' : 'MMIO'} window`,
      );
    writeBarAddress(dev, bar, at);
    if (isIo) ioNext = at + bar.size;
    else memNext = at + bar.size;
  }
}

/** A BAR's register in config space (the ROM's is 0x30). */
export function barRegister(bar: PciBar): number {
  return bar.type === 'rom' ? PCI_ROM_ADDRESS : PCI_BASE_ADDRESS_0 + 4 * bar.index;
}

/** Programs a BAR's address the way firmware does (a ROM stays disabled: the OS enables it to read). */
function writeBarAddress(dev: PciDevice, bar: PciBar, at: number): void {
  const off = barRegister(bar);
  dev.configWrite(off, 4, at % 2 ** 32);
  if (bar.type === 'mem64') dev.configWrite(off + 4, 4, Math.floor(at / 2 ** 32));
}

/** The address a BAR register holds (0 when unprogrammed). */
export function barAddress(dev: PciDevice, bar: PciBar): number {
  if (bar.type === 'rom') return (dev.configRead(PCI_ROM_ADDRESS, 4) & PCI_ROM_ADDRESS_MASK) >>> 0;
  const off = PCI_BASE_ADDRESS_0 + 4 * bar.index;
  const low = dev.configRead(off, 4);
  const base = bar.type === 'io' ? low & ~3 : (low & ~0xf) >>> 0;
  return (base >>> 0) + (bar.type === 'mem64' ? dev.configRead(off + 4, 4) * 2 ** 32 : 0);
}

/**
 * Hot-plug's half of assignBars: places one device's BARs (largest first, naturally aligned,
 * first fit) around the BARs other devices already have, which never move under a running guest.
 */
export function placeBars(
  bus: PciBus,
  dev: PciDevice,
  mmio: { base: number; end: number },
  io: { base: number; end: number },
): void {
  const busy: { io: boolean; start: number; end: number }[] = [];
  for (const other of bus.devices.values()) {
    if (other === dev) continue;
    for (const b of other.bars) {
      const at = b ? barAddress(other, b) : 0;
      if (b && at) busy.push({ io: b.type === 'io', start: at, end: at + b.size });
    }
  }
  const mine = dev.bars.filter((b): b is PciBar => !!b).sort((a, b) => b.size - a.size);
  for (const bar of mine) {
    const isIo = bar.type === 'io';
    const win = isIo ? io : mmio;
    let at = Math.ceil(win.base / bar.size) * bar.size;
    for (;;) {
      const clash = busy.find((r) => r.io === isIo && at < r.end && r.start < at + bar.size);
      if (!clash) break;
      at = Math.ceil(clash.end / bar.size) * bar.size;
    }
    if (at + bar.size > win.end)
      throw new Error(
        `no room for ${dev.name} BAR${bar.index} (0x${bar.size.toString(16)} bytes) in the PCI ${isIo ? 'I/O' : 'MMIO'} window`,
      );
    writeBarAddress(dev, bar, at);
    busy.push({ io: isIo, start: at, end: at + bar.size });
  }
}
