// An in-memory stand-in for one VFIO PCI device and the KVM bits the vfio-pci model touches, for
// pure-logic tests and the in-process fuzzer: no kernel, no device. It behaves like vfio-pci
// where the model depends on it: config space with the device's own write mask (BARs, ROM and
// the MSI/MSI-X capabilities are the VMM's to emulate, so a write reaching them is recorded as a
// violation), BAR accesses refused (EIO) while the device's decode bit is off or it is in D3hot
// (its PM capability is real: PMCSR reaches the device), SET_IRQS checked
// for valid eventfds. KVM_SET_USER_MEMORY_REGION is modelled too: EINVAL beyond `kvmPhysLimit`,
// EEXIST for an overlapping slot, slot bookkeeping to compare with tsvmm's.
import { fstatSync } from 'node:fs';
import { native } from '../../core/native.js';
import { AddressSpace, MemoryRegion } from '../../core/memory/index.js';
import { KvmMemslots } from '../../core/kvm/memslots.js';
import { PciBus } from '../../hw/pci.js';
import { PciHostBridge, PCI_CONF1_PORT } from '../../hw/pci-host.js';
import { VfioPciDevice } from '../../hw/vfio-pci.js';
import type { KvmVm } from '../../core/kvm/vm.js';
import { KvmInterrupts } from '../../machine/interrupts.js';
import type { AssignedDevice } from '../../core/vfio/vfio.js';
import type { VfioDevice } from '../../core/vfio/device.js';

const c = () => native().constants as Record<string, number>;

function syscallError(code: string, syscall: string): Error {
  return Object.assign(new Error(`${code}: ${syscall} failed`), { code, syscall, errno: code === 'EIO' ? 5 : 22 });
}

export interface FakeOptions {
  /** MSI capability: 64-bit address (14-byte cap) or 32-bit (10 bytes). */
  msi64: boolean;
  /** Per-vector masking in the MSI capability. */
  msiMask?: boolean;
}

export const MSIX_CAP = 0x40,
  MSI_CAP = 0x50,
  PM_CAP = 0x70;

/** The device: BAR0 mem64 16 KiB (registers + MSI-X table at 0x2000, PBA at 0x3000), BAR2 mem32
 *  256 bytes, BAR4 io 32 bytes; MSI-X (8 vectors) at 0x40, MSI at 0x50, INTx pin A. */
export class FakeVfioDevice {
  readonly name = '0000:00:fa.0';
  readonly fd = -1;
  readonly flags: number;
  readonly config = new Uint8Array(256);
  readonly bars: (Uint8Array | undefined)[] = [];
  readonly regions: VfioDevice['regions'] = [];
  readonly irqs: VfioDevice['irqs'] = [];
  /** Writes that reached bytes the VMM should have emulated. */
  readonly violations: string[] = [];
  readonly irqState = new Map<number, number[]>();
  /** Config bytes that reached the device: [offset, value]. */
  readonly configWrites: [number, number][] = [];
  resets = 0;
  private mapped = 0;
  readonly msiSize: number;

  constructor(opts: FakeOptions) {
    const k = c();
    this.flags = k.VFIO_DEVICE_FLAGS_PCI | k.VFIO_DEVICE_FLAGS_RESET;
    const v = new DataView(this.config.buffer);
    v.setUint32(0x00, 0x00101b36, true);
    v.setUint32(0x08, 0x01080200, true);
    v.setUint16(0x06, 0x0010, true); // capability list
    v.setUint32(0x10, 0x4, true); // BAR0 mem64
    v.setUint32(0x18, 0x0, true); // BAR2 mem32
    v.setUint32(0x20, 0x1, true); // BAR4 io
    this.config[0x34] = MSIX_CAP;
    this.config[0x3d] = 1;
    // MSI-X: 8 vectors, table BAR0+0x2000, PBA BAR0+0x3000.
    this.config[MSIX_CAP] = 0x11;
    this.config[MSIX_CAP + 1] = MSI_CAP;
    v.setUint16(MSIX_CAP + 2, 7, true);
    v.setUint32(MSIX_CAP + 4, 0x2000, true);
    v.setUint32(MSIX_CAP + 8, 0x3000, true);
    // MSI: 1 vector capable.
    this.config[MSI_CAP] = 0x05;
    this.config[MSI_CAP + 1] = PM_CAP;
    this.config[PM_CAP] = 0x01;
    this.config[PM_CAP + 1] = 0; // power management, PMCSR at +4
    v.setUint16(PM_CAP + 2, 0x0003, true);
    v.setUint16(MSI_CAP + 2, (opts.msi64 ? 0x80 : 0) | (opts.msiMask ? 0x100 : 0), true);
    this.msiSize = (opts.msi64 ? 14 : 10) + (opts.msiMask ? 10 : 0);
    this.bars[0] = new Uint8Array(0x4000);
    this.bars[2] = new Uint8Array(0x100);
    this.bars[4] = new Uint8Array(0x20);
    for (const [i, b] of this.bars.entries()) if (b) for (let j = 0; j < b.length; j++) b[j] = (i * 31 + j * 7) & 0xff;
    const mm = k.VFIO_REGION_INFO_FLAG_MMAP,
      rw = k.VFIO_REGION_INFO_FLAG_READ | k.VFIO_REGION_INFO_FLAG_WRITE;
    for (let i = 0; i < 9; i++) {
      const b = this.bars[i];
      const size = i < 6 ? (b?.length ?? 0) : i === k.VFIO_PCI_CONFIG_REGION_INDEX ? 256 : 0;
      this.regions.push({
        index: i,
        flags: size ? rw | (i === 0 || i === 2 ? mm : 0) : 0,
        size,
        offset: BigInt(i) << 40n,
        msixMappable: false,
      });
    }
    const ev = k.VFIO_IRQ_INFO_EVENTFD;
    this.irqs.push({ index: 0, flags: ev | k.VFIO_IRQ_INFO_MASKABLE | k.VFIO_IRQ_INFO_AUTOMASKED, count: 1 });
    this.irqs.push({ index: 1, flags: ev | k.VFIO_IRQ_INFO_NORESIZE, count: 1 });
    this.irqs.push({ index: 2, flags: ev | k.VFIO_IRQ_INFO_NORESIZE, count: 8 });
  }

  get isPci(): boolean {
    return true;
  }
  get canReset(): boolean {
    return true;
  }
  get command(): number {
    return this.config[4]! | (this.config[5]! << 8);
  }
  get d3(): boolean {
    return (this.config[PM_CAP + 4]! & 3) === 3;
  }
  get liveMappings(): number {
    return this.mapped;
  }

  /** Bits of config space the device itself lets a write change (its own registers). */
  private writable(off: number): number {
    if (off === 4) return 0x47; // IO, MEM, MASTER, parity
    if (off === 5) return 0x05; // SERR, INTx disable
    if (off === 0x0c || off === 0x0d || off === 0x3c) return 0xff;
    if (off === PM_CAP + 4) return 0x03; // power state
    return 0;
  }

  private emulatedByVmm(off: number): boolean {
    return (
      off < 4 ||
      (off >= 8 && off < 0x0c) ||
      (off >= 0x10 && off < 0x28) ||
      (off >= 0x30 && off < 0x34) ||
      off === 0x3c ||
      off === 0x3d ||
      (off >= MSIX_CAP && off < MSIX_CAP + 12) ||
      (off >= MSI_CAP && off < MSI_CAP + this.msiSize)
    );
  }

  read(region: number, off: number, size: number): number | bigint {
    if (region === c().VFIO_PCI_CONFIG_REGION_INDEX) {
      let v = 0n;
      for (let i = size - 1; i >= 0; i--) v = (v << 8n) | BigInt(this.config[off + i] ?? 0xff);
      return size === 8 ? v : Number(v);
    }
    const b = this.bar(region, off, size);
    let v = 0n;
    for (let i = size - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[off + i]!);
    return size === 8 ? v : Number(v);
  }

  readInto(region: number, off: number, into: Buffer): number {
    for (let i = 0; i < into.length; i++) into[i] = Number(this.read(region, off + i, 1));
    return into.length;
  }

  write(region: number, off: number, size: number, value: number | bigint): void {
    const v = BigInt.asUintN(64, BigInt(value));
    if (region === c().VFIO_PCI_CONFIG_REGION_INDEX) {
      for (let i = 0; i < size; i++) {
        const a = off + i,
          byte = Number((v >> BigInt(8 * i)) & 0xffn);
        if (this.configWrites.length < 4096) this.configWrites.push([a, byte]);
        if (this.emulatedByVmm(a)) {
          this.violations.push(`config write reached emulated byte 0x${a.toString(16)}`);
          continue;
        }
        const w = this.writable(a);
        this.config[a] = (this.config[a]! & ~w) | (byte & w);
      }
      return;
    }
    const b = this.bar(region, off, size);
    for (let i = 0; i < size; i++) b[off + i] = Number((v >> BigInt(8 * i)) & 0xffn);
  }

  /** vfio-pci refuses BAR access while the device does not decode it (EIO). */
  private bar(region: number, off: number, size: number): Uint8Array {
    const b = this.bars[region];
    if (!b || off + size > b.length) throw syscallError('EINVAL', 'pread');
    const on = region === 4 ? this.command & 1 : this.command & 2;
    if (!on || this.d3) throw syscallError('EIO', 'pread');
    return b;
  }

  mmap(region: number, off: number, size: number): { addr: bigint; buffer: ArrayBuffer } {
    if (!this.bars[region] || off % 4096 || size % 4096) throw syscallError('EINVAL', 'mmap');
    this.mapped++;
    // A page-aligned address nobody dereferences: the model must never touch the mapping itself.
    return { addr: 0x7f0000000000n + (BigInt(region) << 32n) + BigInt(off), buffer: new ArrayBuffer(0) };
  }

  munmap(): void {
    this.mapped--;
  }

  setIrqs(req: { index: number; start: number; flags: number; fds?: number[]; count?: number }): void {
    const k = c();
    const info = this.irqs[req.index];
    if (!info) throw syscallError('EINVAL', 'VFIO_DEVICE_SET_IRQS');
    if (!(req.flags & k.VFIO_IRQ_SET_ACTION_TRIGGER)) return; // mask/unmask: nothing to model
    if (req.flags & k.VFIO_IRQ_SET_DATA_NONE && req.count === 0) {
      this.irqState.delete(req.index);
      return;
    }
    const fds = req.fds ?? [];
    if (req.start + fds.length > info.count) throw syscallError('EINVAL', 'VFIO_DEVICE_SET_IRQS');
    for (const fd of fds) if (fd !== -1) fstatSync(fd); // EBADF on a stale eventfd
    const cur = this.irqState.get(req.index) ?? [];
    fds.forEach((fd, i) => {
      cur[req.start + i] = fd;
    });
    this.irqState.set(req.index, cur);
  }

  reset(): boolean {
    this.resets++;
    this.config[4] = 0;
    this.config[5] = 0;
    this.config[PM_CAP + 4] = 0;
    this.irqState.clear();
    return true;
  }

  close(): void {}
}

/** KVM's side of memslots and GSI routes, as far as the model can tell them apart. */
export class FakeKvm {
  readonly slots = new Map<number, { gpa: number; size: number }>();
  refused = 0;
  irqfds = new Set<string>();
  readonly msiRoutes = new Map<number, { addressLo: number; addressHi: number; data: number }>();
  private nextGsi = 24;
  private freeGsi: number[] = [];
  constructor(
    public kvmPhysLimit: number,
    readonly maxGsi = 64,
  ) {}

  setUserMemoryRegion = (
    _fd: number,
    r: { slot: number; guestPhysAddr: number | bigint; memorySize: number | bigint },
  ): void => {
    const gpa = Number(r.guestPhysAddr),
      size = Number(r.memorySize);
    if (size === 0) {
      if (!this.slots.delete(r.slot)) throw syscallError('EINVAL', 'KVM_SET_USER_MEMORY_REGION');
      return;
    }
    if (this.slots.has(r.slot)) throw syscallError('EINVAL', 'KVM_SET_USER_MEMORY_REGION'); // moving a live slot
    if (gpa + size > this.kvmPhysLimit) {
      this.refused++;
      throw syscallError('EINVAL', 'KVM_SET_USER_MEMORY_REGION');
    }
    for (const s of this.slots.values())
      if (gpa < s.gpa + s.size && s.gpa < gpa + size) throw syscallError('EEXIST', 'KVM_SET_USER_MEMORY_REGION');
    this.slots.set(r.slot, { gpa, size });
  };

  /** The parts of KvmVm that the vfio-pci model and its vectors use. */
  vm(): KvmVm {
    const gsi = {
      allocMsi: (msg: { addressLo: number; addressHi: number; data: number }) => {
        if (!this.freeGsi.length && this.nextGsi >= this.maxGsi)
          throw new Error(`out of GSIs for MSI routes (limit ${this.maxGsi})`);
        const g = this.freeGsi.pop() ?? this.nextGsi++;
        this.msiRoutes.set(g, { ...msg });
        return g;
      },
      updateMsi: (g: number, msg: { addressLo: number; addressHi: number; data: number }) => {
        if (!this.msiRoutes.has(g)) throw new Error(`GSI ${g} is not an MSI route`);
        this.msiRoutes.set(g, { ...msg });
      },
      release: (g: number) => {
        if (this.msiRoutes.delete(g)) this.freeGsi.push(g);
      },
      commit: () => {},
    };
    return {
      gsi,
      irqfd: (fd: number, g: number) => {
        fstatSync(fd);
        this.irqfds.add(`${fd}:${g}`);
      },
      irqfdRemove: (fd: number, g: number) => {
        if (!this.irqfds.delete(`${fd}:${g}`)) throw syscallError('ENOENT', 'KVM_IRQFD');
      },
    } as unknown as KvmVm;
  }
}

/** A board with one fake device: system memory (RAM 0-16 MiB, PCI space under it), the bus, and
 *  KVM memslots as a listener over the fake KVM. */
export function fakeBoard(
  opts: FakeOptions & { memLimit?: number; kvmPhysLimit?: number; maxSlots?: number; maxGsi?: number },
) {
  const kvm = new FakeKvm(opts.kvmPhysLimit ?? 2 ** 46, opts.maxGsi);
  const system = MemoryRegion.container('system', 2 ** 52);
  const ramBytes = new Uint8Array(0x1000000);
  system.addSubregion(0, MemoryRegion.ram('ram', ramBytes.length, { hostAddr: 0x7e0000000000n, bytes: ramBytes }));
  const pciMem = MemoryRegion.container('pci-mem', 2 ** 52);
  system.addSubregion(0, pciMem, -1);
  const memory = new AddressSpace('memory', system);
  const ioRoot = MemoryRegion.container('io', 0x10000);
  const io = new AddressSpace('io', ioRoot);
  const memslots = new KvmMemslots(-1, opts.maxSlots ?? 32, false, kvm.setUserMemoryRegion);
  memory.addListener(memslots);
  const bus = new PciBus(pciMem, ioRoot, opts.memLimit ?? 2 ** 46);
  const host = new PciHostBridge(bus);
  ioRoot.addSubregion(PCI_CONF1_PORT, host.conf1);
  const fake = new FakeVfioDevice(opts);
  const assigned = { host: { name: fake.name }, device: fake as unknown as VfioDevice } as unknown as AssignedDevice;
  const dev = new VfioPciDevice(new KvmInterrupts(kvm.vm()), assigned, { id: 'fake0', gsi: 16 });
  bus.attach(dev, 4);
  /** Config access through conf1 as a guest does it: any register, any width the ports allow. */
  const select = (reg: number) => io.write(PCI_CONF1_PORT, 4, (0x80000000 | (dev.devfn << 8) | (reg & 0xfc)) >>> 0);
  const cfgRead = (reg: number, size: 1 | 2 | 4): number => {
    select(reg);
    return Number(io.read(0xcfc + (reg & 3), size));
  };
  const cfgWrite = (reg: number, size: 1 | 2 | 4, v: number): void => {
    select(reg);
    io.write(0xcfc + (reg & 3), size, v);
  };
  return { kvm, memory, io, memslots, bus, fake, dev, cfgRead, cfgWrite };
}
