// A VFIO device fd: its regions (BARs, ROM, config space), IRQ indexes, region access by
// pread/pwrite, mmap of region ranges, and reset.
import { closeSync, readSync, writeSync } from 'node:fs';
import { native, PROT_READ, PROT_WRITE, MAP_SHARED, type Mapping } from '../native.js';
import { preadFully } from '../io.js';

export interface RegionInfo {
  index: number;
  flags: number;
  size: number;
  offset: bigint;
  sparseMmap?: { offset: number; size: number }[];
  msixMappable: boolean;
}
export interface IrqInfo {
  index: number;
  flags: number;
  count: number;
}

export class VfioDevice {
  readonly flags: number;
  readonly regions: RegionInfo[] = [];
  readonly irqs: IrqInfo[] = [];
  private readonly buf = Buffer.alloc(8);
  private readonly mappings = new Set<ArrayBuffer>();

  constructor(
    readonly name: string,
    readonly fd: number,
  ) {
    const n = native();
    const info = n.vfioDeviceGetInfo(fd);
    this.flags = info.flags;
    for (let i = 0; i < info.numRegions; i++) {
      let r;
      try {
        r = n.vfioDeviceGetRegionInfo(fd, i);
      } catch (e) {
        // vfio-pci refuses the VGA region of a device without VGA (EINVAL): it simply is not there.
        if ((e as { code?: string }).code !== 'EINVAL') throw e;
        this.regions.push({ index: i, flags: 0, size: 0, offset: 0n, msixMappable: false });
        continue;
      }
      this.regions.push({
        index: i,
        flags: r.flags,
        size: Number(r.size),
        offset: r.offset,
        ...(r.caps.sparseMmap
          ? { sparseMmap: r.caps.sparseMmap.map((a) => ({ offset: Number(a.offset), size: Number(a.size) })) }
          : {}),
        msixMappable: !!r.caps.msixMappable,
      });
    }
    for (let i = 0; i < info.numIrqs; i++) {
      try {
        this.irqs.push(n.vfioDeviceGetIrqInfo(fd, i));
      } catch (e) {
        // The error-reporting index of a conventional PCI device does not exist (EINVAL).
        if ((e as { code?: string }).code !== 'EINVAL') throw e;
        this.irqs.push({ index: i, flags: 0, count: 0 });
      }
    }
  }

  get isPci(): boolean {
    return (this.flags & native().constants.VFIO_DEVICE_FLAGS_PCI) !== 0;
  }
  get canReset(): boolean {
    return (this.flags & native().constants.VFIO_DEVICE_FLAGS_RESET) !== 0;
  }

  read(region: number, off: number, size: number): number | bigint {
    const r = this.regions[region]!;
    const got = readSync(this.fd, this.buf, 0, size, Number(r.offset) + off);
    if (got !== size) return size === 8 ? 0xffffffffffffffffn : 2 ** (8 * size) - 1;
    return size === 1
      ? this.buf[0]!
      : size === 2
        ? this.buf.readUInt16LE(0)
        : size === 4
          ? this.buf.readUInt32LE(0)
          : this.buf.readBigUInt64LE(0);
  }

  /** Reads [off, off + into.length) of a region in as few preads as the kernel allows; returns the bytes read. */
  readInto(region: number, off: number, into: Buffer): number {
    return preadFully(this.fd, into, Number(this.regions[region]!.offset) + off);
  }

  write(region: number, off: number, size: number, value: number | bigint): void {
    const r = this.regions[region]!;
    if (size === 8) this.buf.writeBigUInt64LE(BigInt.asUintN(64, BigInt(value)), 0);
    else if (size === 4) this.buf.writeUInt32LE(Number(value) >>> 0, 0);
    else if (size === 2) this.buf.writeUInt16LE(Number(value) & 0xffff, 0);
    else this.buf[0] = Number(value) & 0xff;
    writeSync(this.fd, this.buf, 0, size, Number(r.offset) + off);
  }

  /** Maps [off, off+size) of a region (both page-aligned) shared, read-write. */
  mmap(region: number, off: number, size: number): Mapping {
    const r = this.regions[region]!;
    const m = native().mmap(0, size, PROT_READ | PROT_WRITE, MAP_SHARED, this.fd, r.offset + BigInt(off));
    this.mappings.add(m.buffer);
    return m;
  }

  munmap(buffer: ArrayBuffer): void {
    if (this.mappings.delete(buffer)) native().munmap(buffer);
  }

  setIrqs(req: {
    index: number;
    start: number;
    flags: number;
    fds?: number[];
    count?: number;
    bools?: boolean[];
  }): void {
    native().vfioDeviceSetIrqs(this.fd, req);
  }

  reset(): boolean {
    if (!this.canReset) return false;
    native().vfioDeviceReset(this.fd);
    return true;
  }

  close(): void {
    for (const b of this.mappings) native().munmap(b);
    this.mappings.clear();
    closeSync(this.fd);
  }
}
