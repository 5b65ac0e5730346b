// An assigned device's expansion ROM BAR (QEMU's rombar/romfile): read-only and trapped (a guest
// reads its ROM rarely: firmware, `rom` in sysfs), served from VFIO's ROM region, read whole on
// first use, or from a romfile padded with zeros to a power of two.
import { readFileSync } from 'node:fs';
import { native } from '../core/native.js';
import { MemoryRegion } from '../core/memory/index.js';
import type { VfioDevice } from '../core/vfio/device.js';
import { guestEvents } from './pci.js';

/** Largest ROM image taken from a romfile (PCI allows up to 16 MiB). */
export const ROM_MAX = 16 * 2 ** 20;

/** The ROM BAR's size and region; undefined when there is none (hidden, or the device has none). */
export function romRegion(
  name: string,
  rom: { bar?: boolean; file?: string },
  device: VfioDevice,
): { size: number; region: MemoryRegion } | undefined {
  if (rom.bar === false) return undefined;
  const romIndex = native().constants.VFIO_PCI_ROM_REGION_INDEX;
  let size: number;
  let read: (off: number, sz: number) => number | bigint;
  if (rom.file !== undefined) {
    let bytes: Buffer;
    try {
      bytes = readFileSync(rom.file);
    } catch (e) {
      throw new Error(
        `${name}: romfile ${rom.file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}: give a readable file, or drop "romfile"`,
        { cause: e },
      );
    }
    if (bytes.length === 0 || bytes.length > ROM_MAX)
      throw new Error(`${name}: romfile ${rom.file} is ${bytes.length} bytes; a ROM holds 1 byte to 16 MiB`);
    size = Math.max(0x800, 2 ** Math.ceil(Math.log2(bytes.length)));
    const image = Buffer.alloc(size);
    bytes.copy(image);
    read = (off, sz) => (sz === 8 ? image.readBigUInt64LE(off) : image.readUIntLE(off, sz));
  } else {
    const r = device.regions[romIndex];
    if (!r || r.size === 0) return undefined;
    size = r.size;
    // Read whole on first use and kept (as QEMU's vfio_pci_load_rom): every pread of the ROM
    // region has vfio-pci enable and map the device's ROM anew, far too slow per access.
    let image: Buffer | undefined;
    read = (off, sz) => {
      image ??= loadRom(name, device, romIndex, r.size);
      return sz === 8 ? image.readBigUInt64LE(off) : image.readUIntLE(off, sz);
    };
  }
  const region = MemoryRegion.io(`${name}-rom`, size, {
    read,
    write: () => {
      /* read-only */
    },
  });
  return { size, region };
}

/** The device's ROM, read in one pass; what cannot be read reads as all-ones (no ROM there). */
function loadRom(name: string, device: VfioDevice, index: number, size: number): Buffer {
  const image = Buffer.alloc(size, 0xff);
  try {
    device.readInto(index, 0, image);
  } catch (e) {
    guestEvents.report(
      'error',
      `${name}:rom`,
      () => `${name}: reading the device's ROM failed (${(e as Error).message}); the guest reads all-ones`,
    );
  }
  return image;
}
