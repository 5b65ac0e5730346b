// In-process fuzzer: the vfio-pci model, its MSI/MSI-X emulation, the PCI bus and host bridge
// (conf1), the memory API and KVM memslot bookkeeping, against the in-memory fake device and
// KVM (fake-vfio-pci.ts). Seeded random accesses of every width at every offset — conf1 ports,
// unaligned direct config writes (ECAM-like), memory/port accesses around the BARs, the LAPIC
// and RAM — with random BAR/command/capability state, and invariants checked as it goes:
//   - nothing the guest does throws;
//   - tsvmm's command register is the device's; no write reaches a byte tsvmm emulates;
//   - each BAR decodes exactly where the rules say (or KVM refused the place), never in D3hot;
//   - tsvmm's memslots are KVM's, numbers in use = live slots ≤ the limit, no overlap;
//   - at teardown no slot, mapping, GSI route, irqfd or fd is left.
import { readdirSync } from 'node:fs';
import { fakeBoard, MSI_CAP, MSIX_CAP, PM_CAP } from './fake-vfio-pci.js';
import { guestEvents, PCI_COMMAND, type PciBar } from '../../hw/pci.js';
import type { VfioPciDevice } from '../../hw/vfio-pci.js';

export interface FuzzResult {
  accesses: number;
  boards: number;
  violations: string[];
  ms: number;
  refusedByKvm: number;
}

/** xorshift128+, so a seed replays exactly. */
class Rng {
  private a: bigint;
  private b: bigint;
  constructor(seed: number) {
    this.a = (BigInt(seed) * 0x9e3779b97f4a7c15n) | 1n;
    this.b = 0x2545f4914f6cdd1dn ^ BigInt(seed);
    for (let i = 0; i < 8; i++) this.next();
  }
  private next(): bigint {
    let x = this.a;
    const y = this.b;
    this.a = y;
    x ^= (x << 23n) & 0xffffffffffffffffn;
    x ^= x >> 17n;
    x ^= y ^ (y >> 26n);
    this.b = x;
    return (x + y) & 0xffffffffffffffffn;
  }
  u32(): number {
    return Number(this.next() >> 32n);
  }
  below(n: number): number {
    return this.u32() % n;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.below(xs.length)]!;
  }
}

const openFds = () => readdirSync('/proc/self/fd').length;
const WIDTHS = [1, 2, 4] as const;
const MEM_WIDTHS = [1, 2, 4, 8] as const;

export function fuzzVfioPci(opts: {
  seed: number;
  count: number;
  boardEvery?: number;
  progress?: (done: number) => void;
}): FuzzResult {
  const rng = new Rng(opts.seed);
  const violations: string[] = [];
  const started = Date.now();
  const sink = guestEvents.sink;
  guestEvents.sink = () => {}; // counted, not printed: the fuzzer makes every kind of event
  const fds0 = openFds();
  let done = 0,
    boards = 0,
    refusedByKvm = 0;
  const violate = (what: string) => {
    if (violations.length < 20) violations.push(`seed ${opts.seed} access ${done}: ${what}`);
  };
  try {
    while (done < opts.count) {
      boards++;
      const kvmLimit = 2 ** 46;
      const b = fakeBoard({
        msi64: rng.below(2) === 0,
        msiMask: rng.below(2) === 0,
        memLimit: rng.below(2) ? kvmLimit : 2 ** 52, // sometimes tsvmm tries what KVM refuses
        kvmPhysLimit: kvmLimit,
        maxSlots: 3 + rng.below(6),
        maxGsi: 24 + rng.below(12),
      });
      const { dev, fake, memslots, kvm, memory, io } = b;
      guestEvents.counts.clear();
      const barValues = (bar: PciBar): number[] => [
        0,
        0xffffffff,
        0xfee00000,
        0xfec00000,
        0xfed00000,
        0x80000,
        0x100000 + rng.below(0xf00) * 0x1000,
        0xc0000000,
        0xc0000000 + rng.below(64) * 0x1000,
        rng.u32(),
        bar.type === 'io' ? 0xcf8 : 0xc0004000,
        0xc000 + rng.below(64) * 32,
      ];
      const hiValues = [0, 0, 1, 0x3fff, 0x4000, 0x40000, 0xffffffff];
      const interesting = (): number => {
        const bars = dev.bars.filter((x): x is PciBar => !!x && x.type !== 'io');
        const bar = rng.pick(bars);
        const base = bar.mappedAt ?? dev.barAddress(bar);
        return rng.pick([
          base + rng.below(Math.max(bar.size, 0x1000) + 16) - 8,
          base + 0x2000 + rng.below(0x90),
          base + 0x3000 + rng.below(16),
          0xfee00000 + rng.below(0x1000),
          rng.below(0x1000000),
          rng.u32(),
          0xc0000000 + rng.below(0x5000),
        ]);
      };
      const boardEnd = Math.min(opts.count, done + (opts.boardEvery ?? 50000));
      for (; done < boardEnd; done++) {
        const op = rng.below(16);
        try {
          if (op < 7) {
            // conf1: any register, any width at any port of the data window (splits included)
            const reg = rng.below(256),
              w = rng.pick(WIDTHS);
            if (op < 3) b.cfgRead(reg, w);
            else {
              const bar = dev.bars.find((x) => x && reg >= 0x10 + 4 * x.index && reg < 0x18 + 4 * x.index);
              let v = rng.u32();
              if (bar && w === 4 && (reg & 3) === 0)
                v = (reg - 0x10) / 4 === bar.index ? rng.pick(barValues(bar)) : rng.pick(hiValues);
              else if (reg >= PCI_COMMAND && reg < PCI_COMMAND + 4)
                v = rng.u32() & (rng.below(2) ? 0x0507 : 0xffffffff);
              b.cfgWrite(reg, w, v);
            }
          } else if (op < 9) {
            // direct config write, any alignment (what an ECAM access or a buggy bridge could do)
            const w = rng.pick(WIDTHS);
            const off = rng.pick([
              rng.below(257 - w),
              MSI_CAP + rng.below(26) - 1,
              MSIX_CAP + rng.below(14) - 1,
              PCI_COMMAND - 1 + rng.below(4),
              PM_CAP + 3 + rng.below(3),
            ]);
            if (off >= 0 && off + w <= 256) dev.configWrite(off, w, rng.u32());
            else dev.configRead(Math.max(0, Math.min(off, 256 - w)), w);
          } else if (op < 13) {
            const addr = interesting(),
              w = rng.pick(MEM_WIDTHS);
            if (op < 11) memory.read(addr, w);
            else
              memory.write(
                addr,
                w,
                w === 8 ? (BigInt(rng.u32()) << 32n) | BigInt(rng.u32()) : rng.u32() % 2 ** (8 * w),
              );
          } else if (op < 15) {
            const bar4 = dev.bars[4]!,
              port = (bar4.mappedAt ?? 0xc000) + rng.below(40) - 4,
              w = rng.pick(WIDTHS);
            if (port >= 0 && port + w <= 0x10000) {
              if (op === 13) io.read(port, w);
              else io.write(port, w, rng.u32() % 2 ** (8 * w));
            }
          } else if (rng.below(64) === 0) {
            dev.reset(); // system_reset
          } else {
            // a burst of sane set-up, so that traffic also runs with everything decoding
            b.cfgWrite(0x10, 4, 0xc0000000);
            b.cfgWrite(0x14, 4, 0);
            b.cfgWrite(0x18, 4, 0xc0004000);
            b.cfgWrite(0x20, 4, 0xc000);
            b.cfgWrite(PCI_COMMAND, 2, 0x7);
            b.cfgWrite(PM_CAP + 4, 2, 0);
          }
        } catch (e) {
          violate(`exception escaped (op ${op}): ${(e as Error).stack ?? String(e)}`);
        }
        if ((dev.command & 0x547) !== (fake.command & 0x547))
          violate(`command: tsvmm 0x${dev.command.toString(16)} device 0x${fake.command.toString(16)}`);
        if (fake.violations.length) {
          violate(fake.violations.join('; '));
          fake.violations.length = 0;
        }
        if ((done & 63) === 0 || op === 15) checkState(dev, b, kvmLimit, violate);
        if (opts.progress && (done + 1) % 1000000 === 0) opts.progress(done + 1);
      }
      refusedByKvm += kvm.refused;
      // Teardown as hot-unplug does: nothing may be left behind.
      try {
        b.bus.detach(dev);
        dev.destroy();
      } catch (e) {
        violate(`teardown threw: ${(e as Error).message}`);
      }
      if (memslots.slots().length !== 1 || kvm.slots.size !== 1)
        violate(`slots left after teardown: ${JSON.stringify(memslots.slots())}`);
      if (memslots.numbersInUse !== 1) violate(`memslot numbers leaked: ${memslots.numbersInUse} in use for 1 slot`);
      if (fake.liveMappings !== 0) violate(`${fake.liveMappings} BAR mmaps left`);
      if (kvm.msiRoutes.size || kvm.irqfds.size)
        violate(`left: ${kvm.msiRoutes.size} MSI routes, ${kvm.irqfds.size} irqfds`);
      memory.destroy();
      io.destroy();
      if (openFds() !== fds0) violate(`fds: ${openFds() - fds0} leaked`);
    }
  } finally {
    guestEvents.sink = sink;
  }
  return { accesses: done, boards, violations, ms: Date.now() - started, refusedByKvm };
}

function checkState(
  dev: VfioPciDevice,
  b: ReturnType<typeof fakeBoard>,
  kvmLimit: number,
  violate: (s: string) => void,
): void {
  const { memslots, kvm, bus } = b;
  // Each BAR decodes where the rules say, unless KVM refused the place (then nowhere).
  for (const bar of dev.bars) {
    if (!bar) continue;
    const on = bar.type === 'io' ? dev.command & 1 : dev.command & 2;
    const addr = dev.barAddress(bar);
    const limit = bar.type === 'io' ? 0xffff : bar.type === 'mem32' ? 0xffffffff : bus.memLimit;
    const holes = bar.type === 'io' ? bus.ioHoles : bus.memHoles;
    const ok =
      on &&
      !b.fake.d3 &&
      addr !== 0 &&
      addr + bar.size - 1 < limit &&
      !holes.some((h) => addr < h.end && h.start < addr + bar.size);
    if (bar.mappedAt !== undefined && (!ok || bar.mappedAt !== addr))
      violate(
        `BAR${bar.index} decodes at 0x${bar.mappedAt.toString(16)}; the rules say ${ok ? `0x${addr.toString(16)}` : 'nowhere'}`,
      );
    // A placement that failed (out of memslots) is not retried until the guest touches the BAR
    // or the command register again, as QEMU's: counted by guestEvents.
    if (
      bar.mappedAt === undefined &&
      ok &&
      addr + bar.size <= kvmLimit &&
      !guestEvents.counts.get(`${dev.name}:bar${bar.index}:map`)
    ) {
      violate(`BAR${bar.index} at 0x${addr.toString(16)} should decode (KVM can map it, slots are free)`);
    }
    if ((bar.mappedAt !== undefined) !== (bar.region.parent !== null))
      violate(`BAR${bar.index}: mappedAt and the memory tree disagree`);
  }
  // tsvmm's memslots are KVM's.
  const mine = memslots.slots();
  if (mine.length > memslots.maxSlots) violate(`${mine.length} slots > limit ${memslots.maxSlots}`);
  if (memslots.numbersInUse !== mine.length)
    violate(`memslot numbers in use ${memslots.numbersInUse} != live slots ${mine.length}`);
  if (mine.length !== kvm.slots.size) violate(`tsvmm has ${mine.length} slots, KVM ${kvm.slots.size}`);
  for (const s of mine) {
    const k = kvm.slots.get(s.slot);
    if (!k || k.gpa !== s.gpa || k.size !== s.size)
      violate(`slot ${s.slot}: tsvmm 0x${s.gpa.toString(16)}+0x${s.size.toString(16)}, KVM ${JSON.stringify(k)}`);
  }
}
