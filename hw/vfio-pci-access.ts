// An assigned device's registers as the guest reaches them through VFIO (pread/pwrite on the
// device fd): an access the device refuses (decode off, reset, D3) or one past the region reads as
// all-ones and drops writes, as a master abort would, and is logged once per kind.
import { native } from '../core/native.js';
import type { VfioDevice } from '../core/vfio/device.js';
import { guestEvents } from './pci.js';

export class DeviceAccess {
  constructor(
    private readonly name: string,
    private readonly device: VfioDevice,
  ) {}

  /** A BAR access for the guest: beyond the real BAR (grown to a page) or refused by the device
   *  reads as all-ones and drops writes, as a master abort would. */
  regionRead(index: number, off: number, size: number, regionSize: number): number | bigint {
    const ones = size === 8 ? 0xffffffffffffffffn : 2 ** (8 * size) - 1;
    if (off + size > regionSize) return ones;
    try {
      return this.device.read(index, off, size);
    } catch (e) {
      guestEvents.report(
        'error',
        `${this.name}:bar${index}:read`,
        () =>
          `${this.name}: BAR${index} read at +0x${off.toString(16)} failed (${(e as Error).message}); the guest reads all-ones`,
      );
      return ones;
    }
  }

  regionWrite(index: number, off: number, size: number, value: number | bigint, regionSize: number): void {
    if (off + size > regionSize) return;
    try {
      this.device.write(index, off, size, value);
    } catch (e) {
      guestEvents.report(
        'error',
        `${this.name}:bar${index}:write`,
        () => `${this.name}: BAR${index} write at +0x${off.toString(16)} failed (${(e as Error).message}); dropped`,
      );
    }
  }

  configRead(off: number, size: number): number {
    try {
      return Number(this.device.read(native().constants.VFIO_PCI_CONFIG_REGION_INDEX, off, size));
    } catch (e) {
      guestEvents.report(
        'error',
        `${this.name}:config-read`,
        () =>
          `${this.name}: config read at 0x${off.toString(16)} failed (${(e as Error).message}); the guest reads all-ones`,
      );
      return 0xffffffff >>> (32 - 8 * size);
    }
  }

  configWrite(off: number, size: number, value: number): void {
    try {
      this.device.write(native().constants.VFIO_PCI_CONFIG_REGION_INDEX, off, size, value);
    } catch (e) {
      guestEvents.report(
        'error',
        `${this.name}:config-write`,
        () => `${this.name}: config write at 0x${off.toString(16)} failed (${(e as Error).message}); dropped`,
      );
    }
  }
}
