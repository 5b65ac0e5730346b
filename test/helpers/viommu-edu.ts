// The vIOMMU's host side against the real kernel, with no guest: guest RAM is a memfd in an
// AddressSpace, edu is opened on one VFIO backend and put behind a VfioViommu, and its DMA
// engine (BAR0 0x80-0x98, the 4 KiB buffer at device address 0x40000) is driven from here
// through the device fd, so where its writes land is read straight from guest RAM.
import assert from 'node:assert/strict';
import {
  closeSync,
  constants,
  ftruncateSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  writeFileSync,
} from 'node:fs';
import { native, MAP_SHARED, PROT_READ, PROT_WRITE, MFD_CLOEXEC } from '../../core/native.js';
import { AddressSpace, MemoryRegion } from '../../core/memory/index.js';
import { LegacyVfio } from '../../core/vfio/legacy.js';
import { Iommufd } from '../../core/vfio/iommufd.js';
import { VfioDevice } from '../../core/vfio/device.js';
import { findHostDevice } from '../../core/vfio/sysfs.js';
import { lockedBytes, pinnedBytes } from '../../core/vfio/limits.js';
import { Vfio, type AssignedDevice, type VfioBackendKind } from '../../core/vfio/vfio.js';
import { Kvm } from '../../core/kvm/kvm.js';
import { KvmVm } from '../../core/kvm/vm.js';
import type { TestHostDevice } from './testhost-env.js';

export const MiB = 2 ** 20;
const CONFIG_REGION = 7; // VFIO_PCI_CONFIG_REGION_INDEX
const EDU_BUF = 0x40000;

export function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

/** Pages pinned for DMA by this process, whichever accounting the backend uses. */
export function pinned(): number {
  return lockedBytes() + pinnedBytes();
}

/** The kernel log's records (/dev/kmsg: "prio,seq,usec,flags;text"), as [seq, text]. */
export function kernelLog(): [number, string][] {
  const fd = openSync('/dev/kmsg', constants.O_RDONLY | constants.O_NONBLOCK);
  const buf = Buffer.alloc(8192);
  const out: [number, string][] = [];
  try {
    for (;;) {
      let n: number;
      try {
        n = readSync(fd, buf, 0, buf.length, null);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN') break;
        if (code === 'EPIPE') continue; // records overwritten while we read: go on from the next
        throw e;
      }
      const rec = buf.toString('utf8', 0, n);
      const semi = rec.indexOf(';');
      out.push([Number(rec.split(',')[1]), rec.slice(semi + 1).split('\n')[0]!]);
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

/** Waits (bounded: the fault interrupt is handled asynchronously) for a kernel log line after `since`. */
function waitForKernelLine(since: number, re: RegExp): string | undefined {
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  for (let i = 0; i < 100; i++) {
    const hit = kernelLog().find(([seq, text]) => seq > since && re.test(text));
    if (hit) return hit[1];
    Atomics.wait(sleeper, 0, 0, 100);
  }
  return undefined;
}

/** Guest RAM: one memfd-backed region at guest-physical 0. */
export class GuestRam {
  readonly root: MemoryRegion = MemoryRegion.container('system', 2 ** 40);
  readonly memory: AddressSpace;
  readonly region: MemoryRegion;
  readonly bytes: Uint8Array;
  private readonly fd: number;
  private readonly buffer: ArrayBuffer;

  /** In `memory` (a VM's) when given, else in an address space of its own. */
  constructor(
    readonly size: number,
    private readonly vmMemory?: AddressSpace,
  ) {
    this.fd = native().memfdCreate('viommu-test-ram', MFD_CLOEXEC);
    ftruncateSync(this.fd, size);
    const map = native().mmap(0, size, PROT_READ | PROT_WRITE, MAP_SHARED, this.fd, 0);
    this.buffer = map.buffer;
    this.bytes = new Uint8Array(map.buffer);
    this.region = MemoryRegion.ram('ram', size, { hostAddr: map.addr, fd: this.fd, bytes: this.bytes });
    if (vmMemory) this.root = vmMemory.root;
    this.root.addSubregion(0, this.region);
    this.memory = vmMemory ?? new AddressSpace('memory', this.root);
  }

  fill(gpa: number, size: number, seed: number): Uint8Array {
    const p = new Uint8Array(size).map((_, i) => (seed * 31 + i * 7) & 0xff);
    this.bytes.set(p, gpa);
    return p;
  }

  at(gpa: number, size: number): Uint8Array {
    return this.bytes.slice(gpa, gpa + size);
  }

  close(): void {
    if (this.vmMemory) {
      if (this.region.parent) this.root.removeSubregion(this.region);
    } else this.memory.destroy();
    native().munmap(this.buffer);
    closeSync(this.fd);
  }
}

/** One VFIO backend with the devices it opened for the vIOMMU, released in order. */
export class Backend {
  private legacy: LegacyVfio | undefined;
  private ctx: Iommufd | undefined;
  readonly opened: AssignedDevice[] = [];

  constructor(
    readonly kind: VfioBackendKind,
    private readonly ram: GuestRam,
  ) {}

  open(dev: TestHostDevice): AssignedDevice {
    const host = findHostDevice({ host: dev.bdf });
    let a: AssignedDevice;
    if (this.kind === 'legacy') {
      this.legacy ??= new LegacyVfio(this.ram.memory, () => {});
      const { group, fd } = this.legacy.openDevice(host, true);
      a = { host, device: new VfioDevice(host.name, fd), backend: 'legacy', group, viommu: true };
    } else {
      this.ctx ??= Iommufd.open();
      const o = this.ctx.openDevice(host, dev.vfioCdev!, undefined, (ioas) => ioas.attach(this.ram.memory));
      a = { host, device: new VfioDevice(host.name, o.device), backend: 'iommufd', ioas: o.ioas, viommu: true };
    }
    this.opened.push(a);
    return a;
  }

  release(a: AssignedDevice): void {
    this.opened.splice(this.opened.indexOf(a), 1);
    if (a.backend === 'legacy') {
      a.device.close();
      this.legacy!.releaseDevice(a.host.name, a.group!);
    } else {
      this.ctx!.closeDevice(a.host.name, a.device.fd, a.ioas!);
      a.device.close();
    }
  }

  close(): void {
    for (const a of [...this.opened].reverse()) this.release(a);
    this.legacy?.close();
    this.ctx?.close();
  }
}

/** edu's DMA engine, driven through the VFIO device fd. */
export class EduDma {
  constructor(readonly device: VfioDevice) {
    // Memory decoding and bus mastering: without the latter edu's DMA goes nowhere.
    const cmd = Number(device.read(CONFIG_REGION, 4, 2));
    device.write(CONFIG_REGION, 4, 2, cmd | 0x6);
    assert.equal(Number(device.read(0, 0, 4)) & 0xffff, 0xed, 'edu answers on BAR0');
  }

  /** One transfer; returns when edu says it is done (its RUN bit clears). */
  private run(src: number, dst: number, count: number, toRam: boolean): void {
    const d = this.device;
    d.write(0, 0x80, 8, BigInt(src));
    d.write(0, 0x88, 8, BigInt(dst));
    d.write(0, 0x90, 8, BigInt(count));
    d.write(0, 0x98, 8, toRam ? 3n : 1n);
    const sleeper = new Int32Array(new SharedArrayBuffer(4));
    // A hang guard, not a timing check: edu finishes after its 100 ms timer.
    for (let i = 0; i < 60_000; i++) {
      if ((Number(d.read(0, 0x98, 4)) & 1) === 0) return;
      Atomics.wait(sleeper, 0, 0, 1);
    }
    throw new Error('edu DMA never finished');
  }

  /** IOVA → edu's buffer. */
  fromIova(iova: number, count: number): void {
    this.run(iova, EDU_BUF, count, false);
  }

  /** edu's buffer → IOVA. */
  toIova(iova: number, count: number): void {
    this.run(EDU_BUF, iova, count, true);
  }

  /** Liveness register: edu answers with the bitwise NOT of what was written. */
  alive(): boolean {
    this.device.write(0, 4, 4, 0x12345678);
    return Number(this.device.read(0, 4, 4)) === ~0x12345678 >>> 0;
  }
}

// Guest-physical layout of the scenarios (all below edu's 28-bit DMA mask).
const SRC = 0x100000, // what edu reads
  B1 = 0x200000, // domain 1's target buffer
  B2 = 0x300000, // domain 2's
  S = 0x900000, // IOVA of SRC in both domains
  X = 0x800000, // IOVA of B1 in domain 1 and of B2 in domain 2
  PAGE = 4096,
  N = 256; // bytes per transfer

const okOf = (r: { ok: boolean; reason?: string }) => assert.ok(r.ok, r.reason);

/**
 * Two domains that map the same IOVA to different buffers; edu moved between them, then the
 * IOVA unmapped (its DMA must land nowhere), then bypass and blocked; everything released.
 */
export async function eduDomainsScenario(kind: VfioBackendKind, edu: TestHostDevice): Promise<void> {
  const { VfioViommu } = await import('../../core/vfio/viommu.js');
  const fds0 = openFds(),
    pinned0 = pinned();
  const ram = new GuestRam(16 * MiB);
  const backend = new Backend(kind, ram);
  const log: string[] = [];
  const v = new VfioViommu(ram.memory, { log: (l) => log.push(l) });
  try {
    const a = backend.open(edu);
    v.addEndpoint(8, a);
    const dma = new EduDma(a.device);
    assert.ok(pinned() - pinned0 >= 16 * MiB, `bypass pins all guest RAM (${pinned() - pinned0})`);

    for (const d of [1, 2]) okOf(v.createDomain(d));
    okOf(v.map(1, S, SRC, PAGE, { read: true, write: false }));
    okOf(v.map(1, X, B1, PAGE, { read: true, write: true }));
    okOf(v.map(2, S, SRC, PAGE, { read: true, write: false }));
    okOf(v.map(2, X, B2, PAGE, { read: true, write: true }));

    // Refusals on the real system: nothing of them reaches the kernel or changes the counts.
    const beyond = v.map(1, 0xa00000, 32 * MiB, PAGE, { read: true, write: true });
    assert.ok(
      !beyond.ok && beyond.status === 'inval' && /beyond guest RAM/.test(beyond.reason),
      JSON.stringify(beyond),
    );
    const overlap = v.map(1, X, B2, PAGE, { read: true, write: true });
    assert.ok(!overlap.ok && /overlaps/.test(overlap.reason), JSON.stringify(overlap));

    okOf(v.attach(8, 1));
    // The kernel refuses a map in the IOMMU's reserved MSI window: a refusal, nothing changed.
    const msi = v.map(1, 0xfee00000, B2, PAGE, { read: true, write: true });
    assert.ok(!msi.ok && msi.status === 'devErr', JSON.stringify(msi));
    assert.equal(v.inspect().domains[0]!.mappings, 2);
    if (kind === 'legacy') assert.equal(pinned() - pinned0, 2 * PAGE, 'domain 1 pins its two pages, not all RAM');
    else assert.ok(pinned() - pinned0 < 16 * MiB, `the identity IOAS is no longer pinned (${pinned() - pinned0})`);
    const p1 = ram.fill(SRC, N, 1);
    dma.fromIova(S, N);
    dma.toIova(X, N);
    assert.deepEqual(ram.at(B1, N), p1, 'in domain 1, IOVA X is buffer 1');
    assert.deepEqual(ram.at(B2, N), new Uint8Array(N), 'buffer 2 untouched');

    okOf(v.attach(8, 2));
    const p2 = ram.fill(SRC, N, 2);
    dma.fromIova(S, N);
    dma.toIova(X, N);
    assert.deepEqual(ram.at(B2, N), p2, 'in domain 2, IOVA X is buffer 2');
    assert.deepEqual(ram.at(B1, N), p1, 'buffer 1 untouched');

    okOf(v.unmap(2, X, PAGE));
    const p3 = ram.fill(SRC, N, 3);
    dma.fromIova(S, N); // S is still mapped: edu's buffer now holds p3
    const seq = kernelLog().at(-1)?.[0] ?? -1;
    dma.toIova(X, N); // X is not: the IOMMU faults the write
    assert.deepEqual(ram.at(B1, N), p1, 'the faulted DMA did not land in buffer 1');
    assert.deepEqual(ram.at(B2, N), p2, 'nor in buffer 2');
    assert.ok(dma.alive(), 'edu and this process live on after the fault');
    const bdf = edu.bdf.replace(/^0000:/, '');
    const fault = waitForKernelLine(
      seq,
      new RegExp(`DMA Write.*\\[${bdf.replace(/\./g, '\\.')}\\] fault addr 0x${X.toString(16)}\\b`),
    );
    assert.ok(fault, `the host kernel logs the IOMMU fault of ${bdf} at IOVA 0x${X.toString(16)}`);

    okOf(v.attach(8, 'bypass'));
    dma.toIova(B1, N); // IOVA = guest-physical
    assert.deepEqual(ram.at(B1, N), p3, 'bypass: all RAM 1:1');

    okOf(v.attach(8, 'blocked'));
    dma.toIova(B2, N);
    assert.deepEqual(ram.at(B2, N), p2, 'blocked: the DMA lands nowhere');

    const i = v.inspect();
    assert.deepEqual(
      i.domains.map((d) => [d.id, d.mappings, d.endpoints]),
      [
        [1, 2, []],
        [2, 1, []],
      ],
    );
    assert.equal(i.stats.maps, 4);
    assert.equal(i.stats.unmaps, 1);
    assert.equal(i.stats.refused, 3);
    assert.equal(i.endpoints[0]!.target, 'blocked');
    if (kind === 'legacy') assert.ok(i.stats.unmappedWindows >= 2, 'legacy moves have an unmapped window');
    else assert.equal(i.stats.unmappedWindows, 0, 'iommufd replaces page tables atomically');

    // Guest RAM leaving unmaps what pointed into it: back in domain 1, remove the RAM.
    okOf(v.attach(8, 1));
    ram.root.removeSubregion(ram.region);
    assert.equal(v.inspect().domains[0]!.orphaned, 2, "domain 1's mappings lost their RAM");
    assert.equal(pinned() - pinned0, 0, 'and nothing of it stays pinned');
    ram.root.addSubregion(0, ram.region);
    assert.equal(v.inspect().domains[0]!.orphaned, 0, 'RAM back: mapped again');
    const p4 = ram.fill(SRC, N, 4);
    dma.fromIova(S, N);
    dma.toIova(X, N);
    assert.deepEqual(ram.at(B1, N), p4, 'domain 1 works again');

    v.reset();
    assert.equal(v.inspect().domains.length, 0);
    assert.equal(v.inspect().endpoints[0]!.target, 'bypass');
    v.removeEndpoint(8);
    backend.release(a);
  } finally {
    v.close();
    backend.close();
    ram.close();
  }
  assert.equal(pinned(), pinned0, 'every pinned page released');
  assert.equal(openFds(), fds0, 'every fd closed (device, group, containers, IOASes)');
  assert.deepEqual(log, [], 'nothing worth a log line happened');
}

/**
 * The bridge pair (bridge-edu, bridge-testdev: one IOMMU group) behind the vIOMMU: splitting them
 * across two domains with mappings is refused before the kernel, naming the group and both;
 * nothing half-attached; edu still DMAs. Moving them one at a time to an empty domain works: the
 * group follows the domain with mappings until it is whole in the new one.
 */
export async function bridgeGroupScenario(
  kind: VfioBackendKind,
  bedu: TestHostDevice,
  btest: TestHostDevice,
): Promise<void> {
  const { VfioViommu } = await import('../../core/vfio/viommu.js');
  assert.equal(bedu.group, btest.group, 'the bridge pair shares one IOMMU group');
  const fds0 = openFds(),
    pinned0 = pinned();
  const ram = new GuestRam(16 * MiB);
  const backend = new Backend(kind, ram);
  const log: string[] = [];
  const v = new VfioViommu(ram.memory, { log: (l) => log.push(l) });
  try {
    const e = backend.open(bedu),
      t = backend.open(btest);
    v.addEndpoint(1, e);
    v.addEndpoint(2, t);
    const dma = new EduDma(e.device);
    for (const d of [1, 2]) okOf(v.createDomain(d));
    okOf(v.map(1, S, SRC, PAGE, { read: true, write: false }));
    okOf(v.map(1, X, B1, PAGE, { read: true, write: true }));
    okOf(v.map(2, X, B2, PAGE, { read: true, write: true }));

    // Domain 1 holds mappings while the group-mate bypasses (all of RAM): two address spaces, refused.
    const byp = v.attach(1, 1);
    assert.ok(!byp.ok && byp.status === 'unsupp' && byp.reason.includes('bypass'), JSON.stringify(byp));
    assert.deepEqual(
      v.inspect().endpoints.map((x) => x.target),
      ['bypass', 'bypass'],
    );
    log.length = 0;
    okOf(v.attach(2, 'blocked'));
    okOf(v.attach(1, 1)); // the group follows its first function into domain 1
    assert.equal(v.inspect().groups[0]?.host, 'domain 1');
    const before = v.inspect();
    const split = v.attach(2, 2);
    assert.ok(!split.ok && split.status === 'unsupp', JSON.stringify(split));
    for (const s of [`group ${bedu.group}`, bedu.bdf, btest.bdf])
      assert.ok(split.reason.includes(s), `the refusal names ${s}: ${split.reason}`);
    assert.deepEqual(log, [split.reason], 'one log line');
    const after = v.inspect();
    assert.deepEqual(after.endpoints, before.endpoints, 'nothing half-attached');
    assert.deepEqual(after.groups, before.groups);

    okOf(v.attach(2, 1)); // both in domain 1: the group rule holds
    const p = ram.fill(SRC, N, 5);
    dma.fromIova(S, N);
    dma.toIova(X, N);
    assert.deepEqual(ram.at(B1, N), p, 'edu behind the bridge DMAs through domain 1');
    assert.deepEqual(ram.at(B2, N), new Uint8Array(N));

    // Moving the group as Linux does, one function at a time, to an empty domain 3.
    okOf(v.createDomain(3));
    okOf(v.attach(1, 3));
    const hostOf = () => v.inspect().groups.find((x) => x.group === bedu.group)?.host;
    assert.equal(hostOf(), 'domain 1', 'split: the group follows the domain holding mappings');
    const p2 = ram.fill(SRC, N, 6);
    dma.fromIova(S, N);
    dma.toIova(X, N);
    assert.deepEqual(
      ram.at(B1, N),
      p2,
      'edu, now in empty domain 3, is still translated by domain 1 (its group-mate’s)',
    );
    // A mapping into domain 3 now would give the group two address spaces with mappings: refused.
    log.length = 0;
    const both = v.map(3, X, B2, PAGE, { read: true, write: true });
    assert.ok(!both.ok && both.status === 'unsupp', JSON.stringify(both));
    for (const s of [`group ${bedu.group}`, 'domain 3', 'domain 1', bedu.bdf, btest.bdf])
      assert.ok(both.reason.includes(s), `the refusal names ${s}: ${both.reason}`);
    assert.deepEqual(log, [both.reason], 'one log line');
    assert.equal(v.inspect().domains.find((d) => d.id === 3)?.mappings, 0, 'nothing half-mapped');
    assert.equal(hostOf(), 'domain 1');
    okOf(v.attach(2, 3)); // the move ends: the group is whole in domain 3 (empty: no DMA)
    assert.equal(hostOf(), 'domain 3');
    okOf(v.map(3, S, SRC, PAGE, { read: true, write: false }));
    okOf(v.map(3, X, B2, PAGE, { read: true, write: true }));
    const p3 = ram.fill(SRC, N, 7);
    dma.fromIova(S, N);
    dma.toIova(X, N);
    assert.deepEqual(ram.at(B2, N), p3, 'the whole group moved: edu DMAs through domain 3');
    assert.deepEqual(ram.at(B1, N), p2, "domain 1's buffer untouched");
    assert.deepEqual(
      v.inspect().endpoints.map((x) => x.target),
      ['domain 3', 'domain 3'],
    );
    // Back into domain 1 while domain 3 holds mappings would split the group again: refused.
    const back = v.attach(1, 1);
    assert.ok(!back.ok && back.status === 'unsupp', JSON.stringify(back));
    okOf(v.destroyDomain(3));
    assert.deepEqual(
      v.inspect().endpoints.map((x) => x.target),
      ['blocked', 'blocked'],
      'destroying a domain blocks its endpoints',
    );
    okOf(v.destroyDomain(1));
  } finally {
    v.close();
    backend.close();
    ram.close();
  }
  assert.equal(pinned(), pinned0, 'every pinned page released');
  assert.equal(openFds(), fds0, 'every fd closed');
}

/**
 * The wiring the machine uses: Vfio.open with viommu (legacy: a container of the group's own),
 * Vfio.viommu, a DMA through a domain, then release (the endpoint goes with its device) and
 * close; a group-mate of a vIOMMU device cannot be opened without it.
 */
export async function vfioWiringScenario(
  kind: VfioBackendKind,
  edu: TestHostDevice,
  bedu: TestHostDevice,
  btest: TestHostDevice,
): Promise<void> {
  const fds0 = openFds(),
    pinned0 = pinned();
  const kvm = Kvm.open();
  const vm = new KvmVm(kvm, { irqchip: false });
  const ram = new GuestRam(16 * MiB, vm.memory);
  const log: string[] = [];
  const vfio = new Vfio(vm, { backend: kind, log: (l) => log.push(l) });
  try {
    const a = vfio.open({ host: bedu.bdf, viommu: true });
    assert.equal(a.backend, kind);
    assert.throws(
      () => vfio.open({ host: btest.bdf }),
      (e: Error) => e.message.includes(`share IOMMU group ${bedu.group}`) && e.message.includes('behind the vIOMMU'),
    );
    vfio.viommu.addEndpoint(1, a);
    const dma = new EduDma(a.device);
    okOf(vfio.viommu.createDomain(4));
    okOf(vfio.viommu.map(4, S, SRC, PAGE, { read: true, write: false }));
    okOf(vfio.viommu.map(4, X, B1, PAGE, { read: true, write: true }));
    okOf(vfio.viommu.attach(1, 4));
    // Hot-adding the group-mate while its group is in domain 4 (iommufd: it must join that page table).
    const t = vfio.open({ host: btest.bdf, viommu: true });
    vfio.viommu.addEndpoint(2, t);
    okOf(vfio.viommu.attach(2, 4));
    const p = ram.fill(SRC, N, 6);
    dma.fromIova(S, N);
    dma.toIova(X, N);
    assert.deepEqual(ram.at(B1, N), p);
    assert.ok(
      vfio.viommu.reservedRegions(1).some((r) => r.start === 0xfee00000 && r.type === 'msi'),
      JSON.stringify(vfio.viommu.reservedRegions(1)),
    );
    // A second host group joins the domain: the domain is replayed into its IOMMU address space,
    // and a later map reaches both.
    const e2 = vfio.open({ host: edu.bdf, viommu: true });
    vfio.viommu.addEndpoint(3, e2);
    okOf(vfio.viommu.attach(3, 4));
    const dma2 = new EduDma(e2.device);
    const q = ram.fill(SRC, N, 7);
    dma2.fromIova(S, N);
    dma2.toIova(X, N);
    assert.deepEqual(ram.at(B1, N), q, 'the replayed domain works for the second group');
    okOf(vfio.viommu.map(4, X + PAGE, B2, PAGE, { read: true, write: true }));
    dma.toIova(X + PAGE, N); // bridge-edu's buffer still holds p
    assert.deepEqual(ram.at(B2, N), p, 'a map after the replay reached the first group');
    dma2.toIova(X + PAGE, N);
    assert.deepEqual(ram.at(B2, N), q, 'and the second');
    assert.deepEqual(
      vfio.viommu.inspect().domains.map((d) => [d.id, d.endpoints, d.mappings]),
      [[4, [1, 2, 3], 3]],
    );
    vfio.release(e2);
    vfio.release(t);
    assert.deepEqual(
      vfio.viommu.inspect().endpoints.map((e) => e.endpoint),
      [1],
      'device_del takes its endpoint away',
    );
    vfio.release(a);
    assert.equal(vfio.viommu.inspect().groups.length, 0);
    assert.equal(pinned() - pinned0, 0, 'nothing pinned once the devices are gone');
  } finally {
    vfio.close();
    ram.close();
    vm.close();
    kvm.close();
  }
  assert.equal(pinned(), pinned0);
  assert.equal(openFds(), fds0, 'every fd closed (kvm, vm, devices, groups, containers, iommufd)');
  assert.deepEqual(log, []);
}

/**
 * type1's DMA-entry limit on the real kernel: a container opened while dma_entry_limit is 4
 * takes 4 mappings of a domain; the 5th is refused with the limit named, and the rest still work.
 */
export async function dmaLimitScenario(edu: TestHostDevice): Promise<void> {
  const { VfioViommu } = await import('../../core/vfio/viommu.js');
  const param = '/sys/module/vfio_iommu_type1/parameters/dma_entry_limit';
  const old = readFileSync(param, 'utf8').trim();
  const ram = new GuestRam(16 * MiB);
  const backend = new Backend('legacy', ram);
  const log: string[] = [];
  const v = new VfioViommu(ram.memory, { log: (l) => log.push(l) });
  try {
    writeFileSync(param, '4');
    let a: AssignedDevice;
    try {
      a = backend.open(edu); // the container copies the limit when it is opened
    } finally {
      writeFileSync(param, old);
    }
    v.addEndpoint(8, a);
    okOf(v.createDomain(1));
    okOf(v.attach(8, 1));
    for (let i = 0; i < 4; i++) okOf(v.map(1, X + i * PAGE, B1 + i * PAGE, PAGE, { read: true, write: true }));
    const r = v.map(1, S, SRC, PAGE, { read: true, write: false });
    assert.ok(!r.ok && r.status === 'nomem', JSON.stringify(r));
    assert.match(r.reason, /dma_entry_limit 4/);
    assert.deepEqual(log, [r.reason], 'the limit is named in the log');
    const dma = new EduDma(a.device);
    dma.toIova(X + PAGE, N);
    assert.ok(dma.alive(), 'the device and the process carry on');
    okOf(v.unmap(1, X, PAGE));
    okOf(v.map(1, S, SRC, PAGE, { read: true, write: false })); // room again
  } finally {
    v.close();
    backend.close();
    ram.close();
  }
}
