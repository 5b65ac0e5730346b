// The vIOMMU's pure logic: the IOVA interval bookkeeping, guest DMA domains resolved against a
// real memory API address space (RAM, MMIO, holes, RAM removed and re-added), all-or-nothing
// maps across listeners, the DMA-entry limit, the group rule (a group moved one function at a
// time, never split across two domains with mappings) and the legacy move plan. The
// listeners here record the host pieces they are given (the kernel side is in test/host).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AddressSpace, MemoryRegion } from '../../core/memory/index.js';
import { IovaMap } from '../../core/memory/iova-map.js';
import { DmaDomains, type DmaDomain, type DomainListener, type HostPiece } from '../../core/memory/dma-domain.js';
import {
  attachDecision,
  firstMapDecision,
  firstMapSole,
  holders,
  hostTarget,
  legacyMovePlan,
  type GroupState,
  type ViommuTarget,
} from '../../core/vfio/viommu-plan.js';
import { dmaEntryLimit } from '../../core/vfio/limits.js';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const MiB = 2 ** 20,
  P = 4096;
const RW = { read: true, write: true };

test('IovaMap: sorted, refuses overlaps, takes only whole mappings', () => {
  const m = new IovaMap<{ iova: number; size: number; tag: string }>();
  assert.equal(m.add({ iova: 0x3000, size: 0x1000, tag: 'c' }), undefined);
  assert.equal(m.add({ iova: 0x1000, size: 0x1000, tag: 'a' }), undefined);
  assert.equal(m.add({ iova: 0x2000, size: 0x1000, tag: 'b' }), undefined, 'adjacent is not overlapping');
  assert.equal(m.add({ iova: 0x2800, size: 0x1000, tag: 'x' })?.tag, 'b');
  assert.equal(m.add({ iova: 0x0, size: 0x10000, tag: 'y' })?.tag, 'a');
  assert.deepEqual(
    m.values().map((x) => x.tag),
    ['a', 'b', 'c'],
  );
  assert.equal(m.at(0x2fff)?.tag, 'b');
  assert.equal(m.at(0x4000), undefined);
  const bad = m.take(0x1800, 0x2000);
  assert.ok(!bad.ok && bad.straddling.tag === 'a');
  assert.equal(m.size, 3, 'a refused take removes nothing');
  const none = m.take(0x10000, 0x1000);
  assert.ok(none.ok && none.taken.length === 0);
  const two = m.take(0x1000, 0x2000);
  assert.ok(two.ok);
  assert.deepEqual(
    two.taken.map((x) => x.tag),
    ['a', 'b'],
  );
  assert.deepEqual(
    m.values().map((x) => x.tag),
    ['c'],
  );
});

class Recorder implements DomainListener {
  readonly held = new Map<number, HostPiece & { write: boolean }>();
  failAt: number | undefined;
  calls = 0;
  constructor(
    readonly name: string,
    private readonly limit = Infinity,
  ) {}
  room(): number {
    return this.limit - this.held.size;
  }
  limitText(): string {
    return `test limit ${this.limit}`;
  }
  map(p: HostPiece, perm: { write: boolean }): void {
    this.calls++;
    if (p.iova === this.failAt) throw new Error('EFAULT: Bad address');
    assert.ok(!this.held.has(p.iova), `${this.name}: mapped twice at ${p.iova}`);
    this.held.set(p.iova, { ...p, write: perm.write });
  }
  unmap(p: HostPiece): void {
    assert.ok(this.held.delete(p.iova), `${this.name}: unmap of ${p.iova} that it does not hold`);
  }
}

function guest() {
  const root = MemoryRegion.container('system', 2 ** 40);
  const low = MemoryRegion.ram('low', 4 * MiB, { hostAddr: 0x7f0000000000n });
  const high = MemoryRegion.ram('high', 4 * MiB, { hostAddr: 0x7f1000000000n });
  const rom = MemoryRegion.ram('bios', 64 * 1024, { hostAddr: 0x7f2000000000n }, { readonly: true });
  const mmio = MemoryRegion.io('edu-bar0', MiB, { read: () => 0, write: () => {} });
  root.addSubregion(0, low);
  root.addSubregion(4 * MiB, high); // contiguous with low: one guest range, two RAM regions
  root.addSubregion(16 * MiB, mmio);
  root.addSubregion(32 * MiB, rom);
  const memory = new AddressSpace('memory', root);
  const domains = new DmaDomains(memory);
  return { root, low, high, mmio, memory, domains };
}

function made(d: DmaDomain | { ok: false; reason: string }): DmaDomain {
  assert.ok(!('ok' in d), 'reason' in d ? d.reason : '');
  return d as DmaDomain;
}

test('a domain maps IOVA → guest RAM pieces at the right host addresses, one per RAM section crossed', () => {
  const { domains } = guest();
  const d = made(domains.create(1));
  const l = new Recorder('c1');
  assert.ok(d.addListener(l).ok);
  assert.ok(d.map(0x100000, 0x3ff000, 2 * P, RW).ok);
  assert.deepEqual(
    [...l.held.values()].map((p) => [p.iova, p.size, p.vaddr, p.region]),
    [
      [0x100000, P, 0x7f0000000000n + 0x3ff000n, 'low'],
      [0x101000, P, 0x7f1000000000n, 'high'],
    ],
  );
  assert.equal(d.pieceCount, 2);
  assert.equal(d.mappings.size, 1);
  assert.ok(domains.create(1).hasOwnProperty('ok'), 'a second domain 1 is refused');
});

test('maps over MMIO, holes, beyond RAM, unaligned, overlapping or writing ROM are refused with a reason, nothing mapped', () => {
  const { domains } = guest();
  const d = made(domains.create(7));
  const l = new Recorder('c');
  d.addListener(l);
  assert.ok(d.map(0, 0, P, RW).ok);
  const cases: [number, number, number, { read: boolean; write: boolean }, string, RegExp][] = [
    [0x10000, 16 * MiB, P, RW, 'inval', /MMIO \(edu-bar0\)/],
    [0x10000, 8 * MiB - P, 2 * P, RW, 'inval', /0x800000 is a hole.*edu-bar0 at 0x1000000/],
    [0x10000, 64 * MiB, P, RW, 'inval', /beyond guest RAM \(which ends at 0x2010000\)/],
    [0x10000, 32 * MiB, P, RW, 'inval', /read-only memory \(bios\)/],
    [0x10001, 0, P, RW, 'inval', /4 KiB pages/],
    [0x10000, 0, 0, RW, 'inval', /4 KiB pages/],
    [0, P, P, RW, 'inval', /overlaps the mapping at IOVA 0x0/],
    [0x10000, 0, P, { read: false, write: false }, 'inval', /neither read nor write/],
    [2 ** 53, 0, P, RW, 'range', /2\^53/],
  ];
  for (const [iova, gpa, size, perm, status, re] of cases) {
    const r = d.map(iova, gpa, size, perm);
    assert.ok(!r.ok, `${iova}/${gpa} was accepted`);
    assert.equal(r.status, status, r.reason);
    assert.match(r.reason, re);
  }
  assert.ok(d.map(0x10000, 32 * MiB, P, { read: true, write: false }).ok, 'reading ROM is fine');
  assert.equal(l.held.size, 2);
  assert.equal(d.stats.refused, cases.length);
});

test('unmap: whole mappings only, none is fine, a straddled one refuses the lot', () => {
  const { domains } = guest();
  const d = made(domains.create(1));
  const l = new Recorder('c');
  d.addListener(l);
  for (let i = 0; i < 4; i++) assert.ok(d.map(i * 2 * P, i * P, 2 * P, RW).ok);
  const split = d.unmap(P, 4 * P);
  assert.ok(!split.ok && split.status === 'range', JSON.stringify(split));
  assert.equal(l.held.size, 4);
  const r = d.unmap(2 * P, 4 * P);
  assert.ok(r.ok && r.unmapped === 2);
  assert.deepEqual([...l.held.keys()], [0, 6 * P]);
  const none = d.unmap(0x100000, P);
  assert.ok(none.ok && none.unmapped === 0);
  assert.equal(d.stats.unmaps, 2);
});

/** A listener that can unmap a range of whole pieces in one call (VFIO type1, iommufd). */
class RangeRecorder extends Recorder {
  readonly ranges: string[] = [];
  failRanges = false;
  unmapRange(iova: number, size: number, count: number): void {
    if (this.failRanges) throw new Error('EINVAL: Invalid argument');
    const inside = [...this.held.values()].filter((p) => p.iova >= iova && p.iova + p.size <= iova + size);
    assert.equal(inside.length, count, `${this.name}: range 0x${iova.toString(16)}+0x${size.toString(16)}`);
    assert.equal(
      inside.reduce((n, p) => n + p.size, 0),
      size,
      'the pieces cover the range exactly',
    );
    for (const p of inside) this.held.delete(p.iova);
    this.ranges.push(`0x${iova.toString(16)}+0x${size.toString(16)}`);
  }
}

test('unmap of many mappings: one host call per IOVA-contiguous run where the listener can; piece by piece when it fails', () => {
  const { domains } = guest();
  const d = made(domains.create(1));
  const l = new RangeRecorder('c'),
    plain = new Recorder('p');
  d.addListener(l);
  d.addListener(plain);
  // IOVA 0..4 pages and 6..8 pages (a gap at 4..6), scattered guest pages; one mapping crosses low → high RAM.
  for (const [iova, gpa] of [
    [0, 9 * P],
    [P, 3 * P],
    [2 * P, 4 * MiB - P],
    [6 * P, 20 * P],
    [7 * P, 2 * P],
  ] as const)
    assert.ok(d.map(iova, gpa, iova === 2 * P ? 2 * P : P, RW).ok);
  assert.equal(l.held.size, 6, 'the mapping across two RAM regions is two pieces');
  const r = d.unmap(0, 8 * P);
  assert.ok(r.ok && r.unmapped === 5, JSON.stringify(r));
  assert.deepEqual(l.ranges, ['0x0+0x4000', '0x6000+0x2000']);
  assert.equal(l.held.size + plain.held.size, 0, 'both listeners emptied');
  for (let i = 0; i < 3; i++) assert.ok(d.map(i * P, i * P, P, RW).ok);
  l.failRanges = true;
  const again = d.unmap(0, 3 * P);
  assert.ok(again.ok && again.unmapped === 3);
  assert.equal(l.held.size, 0, 'the failed range call fell back to piece by piece');
  assert.equal(d.stats.unmaps, 8);
});

test('unmap of many mappings when the range call and then one piece fail: that mapping stays (a retry finishes it), the others go', () => {
  const { domains } = guest();
  const d = made(domains.create(1));
  const l = new RangeRecorder('c');
  d.addListener(l);
  // Four IOVA-contiguous mappings; the third is two pieces (it crosses low → high RAM).
  assert.ok(d.map(0, 8 * P, P, RW).ok);
  assert.ok(d.map(P, 9 * P, P, RW).ok);
  assert.ok(d.map(2 * P, 4 * MiB - P, 2 * P, RW).ok);
  assert.ok(d.map(4 * P, 10 * P, P, RW).ok);
  l.failRanges = true;
  const unmap = l.unmap.bind(l);
  l.unmap = (p) => {
    if (p.iova === 3 * P) throw new Error('EBUSY: Device or resource busy');
    unmap(p);
  };
  const r = d.unmap(0, 5 * P);
  assert.ok(!r.ok && r.status === 'devErr' && /EBUSY/.test(r.reason), JSON.stringify(r));
  assert.deepEqual(
    d.mappings.values().map((m) => m.iova),
    [2 * P],
    'only the mapping with the failed piece is kept',
  );
  assert.deepEqual([...l.held.keys()], [3 * P], 'its other piece was unmapped');
  assert.equal(d.stats.unmaps, 3);
});

test('a map is all or nothing across listeners: a kernel error rolls back the listeners already done', () => {
  const { domains } = guest();
  const d = made(domains.create(1));
  const a = new Recorder('a'),
    b = new Recorder('b');
  d.addListener(a);
  d.addListener(b);
  b.failAt = 0x1000 + P; // the second piece (high RAM) fails in b
  const r = d.map(0x1000, 4 * MiB - P, 2 * P, RW);
  assert.ok(!r.ok && r.status === 'devErr' && /b: EFAULT/.test(r.reason), JSON.stringify(r));
  assert.equal(a.held.size + b.held.size, 0, 'nothing half-mapped');
  assert.equal(d.mappings.size, 0);
});

test('the DMA-entry limit refuses with the limit named; replay into a listener checks it first', () => {
  const { domains } = guest();
  const d = made(domains.create(1));
  const small = new Recorder('the VFIO container of host group 9', 3);
  d.addListener(small);
  for (let i = 0; i < 3; i++) assert.ok(d.map(i * P, i * P, P, RW).ok);
  const r = d.map(3 * P, 3 * P, P, RW);
  assert.ok(!r.ok && r.status === 'nomem' && /room for 0 more .*test limit 3/.test(r.reason), JSON.stringify(r));
  const other = made(domains.create(2));
  for (let i = 0; i < 4; i++) assert.ok(other.map(i * P, i * P, P, RW).ok, 'no listener: only bookkeeping');
  const tiny = new Recorder('tiny', 2);
  const rr = other.addListener(tiny);
  assert.ok(!rr.ok && rr.status === 'nomem' && /4 host mappings/.test(rr.reason));
  assert.equal(tiny.calls, 0, 'refused before any kernel call');
  const failing = new Recorder('failing');
  failing.failAt = 3 * P;
  const rf = other.addListener(failing);
  assert.ok(!rf.ok && rf.status === 'devErr');
  assert.equal(failing.held.size, 0, 'a failed replay leaves nothing behind');
  assert.ok(other.addListener(new Recorder('fine')).ok);
});

test('guest RAM removed unmaps the mappings into it (kept, orphaned); re-added maps them again', () => {
  const { root, high, domains } = guest();
  const d = made(domains.create(1));
  const l = new Recorder('c');
  d.addListener(l);
  assert.ok(d.map(0, 0, P, RW).ok); // low
  assert.ok(d.map(P, 4 * MiB, 2 * P, RW).ok); // high
  assert.ok(d.map(8 * P, 4 * MiB - P, 2 * P, RW).ok); // straddles low/high
  root.removeSubregion(high);
  assert.deepEqual([...l.held.keys()], [0], 'only the low mapping is still in the host');
  assert.equal(d.mappings.size, 3, 'the guest still has its mappings');
  assert.equal(d.stats.orphaned, 2);
  assert.ok(d.unmap(P, 2 * P).ok, 'an orphan is unmapped without a host call');
  root.addSubregion(4 * MiB, high);
  assert.deepEqual([...l.held.keys()].sort(), [0, 8 * P, 9 * P].sort());
  assert.equal(d.stats.remapped, 1);
});

test('MMIO placed over mapped RAM (a BAR move) unmaps; moving it away maps again', () => {
  const { mmio, domains } = guest();
  const d = made(domains.create(1));
  const l = new Recorder('c');
  d.addListener(l);
  assert.ok(d.map(0x5000, 2 * MiB, P, RW).ok);
  mmio.setAddress(2 * MiB - 0x1000); // now covers [2 MiB - 4 KiB, 3 MiB - 4 KiB) over low RAM (container: same priority, added later wins)
  assert.equal(l.held.size, 0, 'a DMA into what is now MMIO is no longer mapped');
  mmio.setAddress(16 * MiB);
  assert.equal(l.held.size, 1, 'RAM again: mapped again');
  assert.equal(d.stats.remapped, 1);
});

test('destroying a domain unmaps everything from its listeners; close stops following memory', () => {
  const { memory, root, high, domains } = guest();
  const d = made(domains.create(3));
  const l = new Recorder('c');
  d.addListener(l);
  assert.ok(d.map(0, 0, P, RW).ok);
  assert.ok(d.map(P, 4 * MiB, P, RW).ok);
  domains.destroy(3);
  assert.equal(l.held.size, 0);
  assert.equal(domains.get(3), undefined);
  const gone = d.map(0, 0, P, RW);
  assert.ok(!gone.ok && gone.status === 'noent');
  domains.close();
  root.removeSubregion(high); // no listener left to call
  assert.ok(memory.flatView().length > 0);
});

test('host target: the one place that reaches memory, else an empty domain (the current one first), else blocked', () => {
  const none = () => false;
  const some =
    (...ds: number[]) =>
    (d: number) =>
      ds.includes(d);
  assert.equal(hostTarget(['bypass', 'blocked'], none), 'bypass');
  assert.equal(hostTarget(['blocked', 'blocked'], none), 'blocked');
  assert.equal(hostTarget(['bypass', 5, 'blocked'], some(5)), 5, 'a domain with mappings translates its group-mates');
  assert.equal(hostTarget(['blocked', 5], some(5)), 5);
  // bypass is all of RAM: next to an empty domain it is what the group reaches (the guest gave it).
  assert.equal(hostTarget(['bypass', 5], none), 'bypass');
  assert.equal(hostTarget([5, 'blocked'], none), 5, 'an empty domain is no reach: the group waits there');
  assert.equal(hostTarget([5, 6], none, 6), 6, 'between empty domains the group stays where it is');
  assert.equal(hostTarget([5, 6], none, 'blocked'), 5);
  assert.equal(hostTarget([5, 6], some(6), 5), 6, 'the one holding mappings wins');
  assert.equal(hostTarget(['bypass', 5], some(5)), 5, 'two reaching (a hot-added function): the smaller reach');
  assert.deepEqual(holders(['bypass', 5, 6, 5, 'blocked', 'bypass'], some(5)), ['bypass', 5]);
});

const bridge = (e: ViommuTarget, t: ViommuTarget, current: ViommuTarget = 'bypass'): GroupState => ({
  group: 12,
  members: [
    { endpoint: 8, name: '0000:01:01.0', target: e },
    { endpoint: 9, name: '0000:01:02.0', target: t },
  ],
  current,
});

test('group rule: an attach is refused only when two of the group’s places would reach memory', () => {
  const mapped = new Set<number>([1, 2]);
  const holds = (d: number) => mapped.has(d);
  assert.deepEqual(attachDecision(bridge(1, 'bypass', 1), 9, 1, holds), { host: 1 }, 'joining the group-mate');
  assert.deepEqual(attachDecision(bridge(1, 1, 1), 9, 'blocked', holds), { host: 1 }, 'leaving for blocked');
  assert.deepEqual(attachDecision(bridge(1, 1, 1), 8, 3, holds), { host: 1 }, 'to an empty domain: a move begins');
  assert.deepEqual(attachDecision(bridge(3, 1, 1), 9, 3, holds), { host: 3 }, 'the move ends: the group is whole');
  assert.deepEqual(attachDecision(bridge(1, 'blocked', 1), 8, 2, holds), { host: 2 }, 'the only one reaching moves');
  const split = attachDecision(bridge(1, 1, 1), 9, 2, holds);
  assert.ok('refuse' in split);
  assert.match(
    split.refuse,
    /^host IOMMU group 12 cannot be split: 0000:01:02\.0 cannot join domain 2, which holds mappings, while 0000:01:01\.0 is in domain 1, which holds mappings;/,
  );
  assert.match(
    split.refuse,
    /members: 0000:01:01\.0 \(endpoint 8, domain 1\), 0000:01:02\.0 \(endpoint 9, domain 1\)\)$/,
  );
  const toBypass = attachDecision(bridge(1, 1, 1), 8, 'bypass', holds);
  assert.ok(
    'refuse' in toBypass &&
      /cannot join bypass \(all of guest RAM\) while 0000:01:02\.0 is in domain 1/.test(toBypass.refuse),
  );
  const intoMapped = attachDecision(bridge('bypass', 'bypass'), 9, 1, holds);
  assert.ok('refuse' in intoMapped && /while 0000:01:01\.0 is in bypass \(all of guest RAM\)/.test(intoMapped.refuse));
  assert.deepEqual(
    attachDecision(bridge('bypass', 'bypass'), 9, 3, holds),
    { host: 'bypass' },
    'an empty domain next to bypass',
  );
});

test('group rule: a first mapping is refused when a group-mate is elsewhere with mappings; the group follows it otherwise', () => {
  const holds = (d: number) => d === 1;
  assert.equal(firstMapDecision(bridge(1, 1, 1), 4, holds), undefined, 'no member in the domain: no say');
  assert.deepEqual(firstMapDecision(bridge(3, 'blocked', 'blocked'), 3, holds), { host: 3 });
  assert.deepEqual(
    firstMapDecision(bridge(3, 4, 4), 3, holds),
    { host: 3 },
    'the other is empty: the group follows the map',
  );
  const both = firstMapDecision(bridge(3, 1, 1), 3, holds)!;
  assert.ok('refuse' in both);
  assert.match(
    both.refuse,
    /^host IOMMU group 12 cannot be split: a mapping in domain 3 \(where 0000:01:01\.0 is\) is refused while 0000:01:02\.0 is in domain 1, which holds mappings;/,
  );
  assert.match(both.refuse, /0000:01:01\.0 \(endpoint 8, domain 3\), 0000:01:02\.0 \(endpoint 9, domain 1\)/);
  const byp = firstMapDecision(bridge(3, 'bypass'), 3, () => false)!;
  assert.ok('refuse' in byp && /0000:01:02\.0 is in bypass/.test(byp.refuse));
});

test('group rule: the first map’s fast decision agrees with the full one wherever it decides (every group of up to 3 functions)', () => {
  const places: ViommuTarget[] = ['bypass', 'blocked', 1, 2, 3];
  const counts = { sole: 0, none: 0, undecided: 0 };
  // Domain 3 is the one mapped into (empty, as a first map's is); domains 1 and 2 hold mappings or not.
  for (const held of [[], [1], [2], [1, 2]] as number[][]) {
    const holds = (d: number) => held.includes(d);
    for (let n = 1; n <= 3; n++)
      for (let k = 0; k < places.length ** n; k++) {
        const targets = Array.from(
          { length: n },
          (_, i) => places[Math.floor(k / places.length ** i) % places.length]!,
        );
        for (const current of [...places, 'blocked'] as ViommuTarget[]) {
          const g: GroupState = {
            group: 12,
            members: targets.map((target, i) => ({ endpoint: 8 + i, name: `f${i}`, target })),
            current,
          };
          const fast = firstMapSole(g.members, 3, holds);
          const full = firstMapDecision(g, 3, holds);
          if (fast === 'none') assert.equal(full, undefined, JSON.stringify(g));
          else if (fast === 'sole') assert.deepEqual(full, { host: 3 }, JSON.stringify(g));
          counts[fast ?? 'undecided']++;
        }
      }
  }
  assert.ok(counts.sole > 0 && counts.none > 0 && counts.undecided > 0, JSON.stringify(counts));
});

/**
 * A guest driving one host group through the rules, as VfioViommu applies them: targets,
 * domains' mappings, the host's place, and every host move (with the legacy plan of each).
 */
class GuestGroup {
  readonly mapped = new Map<number, number>();
  state = bridge('bypass', 'bypass');
  readonly moves: { from: ViommuTarget; to: ViommuTarget; window: boolean }[] = [];
  readonly holds = (d: number) => (this.mapped.get(d) ?? 0) > 0;
  private move(to: ViommuTarget): void {
    const from = this.state.current;
    if (from === to) return;
    const reaches = (t: ViommuTarget) => t === 'bypass' || (typeof t === 'number' && this.holds(t));
    // An unmapped window (legacy) only hurts where both sides reach memory.
    this.moves.push({ from, to, window: legacyMovePlan(from, to).window && reaches(from) && reaches(to) });
    this.state = { ...this.state, current: to };
  }
  attach(ep: number, to: ViommuTarget): string | undefined {
    const d = attachDecision(this.state, ep, to, this.holds);
    if ('refuse' in d) return d.refuse;
    this.move(d.host);
    this.state = {
      ...this.state,
      members: this.state.members.map((m) => (m.endpoint === ep ? { ...m, target: to } : m)),
    };
    return undefined;
  }
  map(domain: number): string | undefined {
    if (!this.holds(domain)) {
      const d = firstMapDecision(this.state, domain, this.holds);
      if (d && 'refuse' in d) return d.refuse;
      if (d) this.move(d.host);
    }
    this.mapped.set(domain, (this.mapped.get(domain) ?? 0) + 1);
    return undefined;
  }
  unmapAll(domain: number): void {
    this.mapped.delete(domain);
  }
  get targets(): ViommuTarget[] {
    return this.state.members.map((m) => m.target);
  }
}

test("Linux moving a group one device at a time (default domain → VFIO's blocking domain → VFIO's domain and back) is followed, never split", () => {
  const g = new GuestGroup();
  // Boot: the DMA API's default domain 1, attached function by function, then its mappings.
  assert.equal(g.attach(8, 1), undefined);
  assert.equal(g.state.current, 'bypass', 'function 1 still bypasses: the group reaches all of RAM');
  assert.equal(g.attach(9, 1), undefined);
  assert.equal(g.state.current, 1);
  assert.equal(g.map(1), undefined);
  // The guest's VFIO claims the group: the blocking domain 2 (empty), one function at a time.
  assert.equal(g.attach(8, 2), undefined);
  assert.equal(g.state.current, 1, 'split: the group follows the domain that holds mappings');
  assert.equal(g.attach(9, 2), undefined);
  assert.equal(g.state.current, 2, 'whole in the empty blocking domain: nothing reachable');
  // VFIO_GROUP_SET_CONTAINER / iommu_attach_group: type1's domain 3, then VFIO_IOMMU_MAP_DMA.
  assert.equal(g.attach(8, 3), undefined);
  assert.equal(g.attach(9, 3), undefined);
  assert.equal(g.state.current, 3);
  assert.equal(g.map(3), undefined);
  assert.deepEqual(g.targets, [3, 3]);
  // A mapping into another domain while a function is there and domain 3 holds mappings: refused.
  assert.equal(g.attach(9, 2), undefined, 'to the empty blocking domain: allowed');
  assert.match(g.map(2) ?? '', /cannot be split: a mapping in domain 2 .* while 0000:01:01\.0 is in domain 3/);
  assert.equal(g.state.current, 3, 'nothing moved');
  // Release: back to the blocking domain, then the default domain (its mappings replayed on attach).
  assert.equal(g.attach(8, 2), undefined);
  assert.equal(g.state.current, 2);
  g.unmapAll(3);
  assert.equal(g.attach(8, 1), undefined);
  assert.equal(g.state.current, 1, 'the default domain still holds its mappings');
  assert.equal(g.attach(9, 1), undefined);
  assert.deepEqual(g.targets, [1, 1]);
  assert.equal(g.state.current, 1);
  assert.deepEqual(
    g.moves.filter((m) => m.window),
    [],
    'legacy: no move replaced mappings with mappings (no DMA window); iommufd replaces atomically anyway',
  );
  assert.deepEqual(
    g.moves.map((m) => `${String(m.from)}→${String(m.to)}`),
    ['bypass→1', '1→2', '2→3', '3→2', '2→1'],
  );
});

test('moving fn0 then fn1 to an empty domain that gets mappings during the split; detach and an empty domain', () => {
  const g = new GuestGroup();
  g.attach(8, 1);
  g.attach(9, 1);
  g.map(1);
  assert.equal(g.attach(8, 5), undefined, 'fn0 to an empty domain');
  assert.match(
    g.map(5) ?? '',
    /host IOMMU group 12 cannot be split: a mapping in domain 5/,
    'both would hold mappings',
  );
  g.unmapAll(1);
  assert.equal(g.map(5), undefined, 'domain 1 emptied: domain 5 may hold mappings');
  assert.equal(g.state.current, 5, 'the group followed the mapping');
  assert.match(g.attach(9, 'bypass') ?? '', /cannot join bypass/, 'bypass next to a domain with mappings');
  assert.equal(g.attach(9, 'blocked'), undefined, 'detach (blocked): fine');
  assert.equal(g.state.current, 5, 'blocked next to a domain with mappings is translated by it');
  assert.equal(g.attach(8, 'blocked'), undefined);
  assert.equal(g.state.current, 'blocked', 'both detached: no DMA');
  assert.equal(g.attach(8, 'bypass'), undefined);
  assert.equal(g.state.current, 'bypass');
});

test('legacy move plan: an unmapped window whenever something mapped is replaced', () => {
  assert.deepEqual(legacyMovePlan('bypass', 1), { leave: 'identity', enter: 'domain', window: true });
  assert.deepEqual(legacyMovePlan(1, 2), { leave: 'domain', enter: 'domain', window: true });
  assert.deepEqual(legacyMovePlan('blocked', 1), { leave: 'none', enter: 'domain', window: false });
  assert.deepEqual(legacyMovePlan(1, 'blocked'), { leave: 'domain', enter: 'none', window: false });
  assert.deepEqual(legacyMovePlan(3, 3), { leave: 'none', enter: 'none', window: false });
});

test("dma_entry_limit: the container's own DMA_AVAIL, else the module parameter, else the default", () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-dma-limit-'));
  writeFileSync(join(dir, 'dma_entry_limit'), '1000\n');
  assert.equal(dmaEntryLimit(7, join(dir, 'dma_entry_limit')).limit, 7);
  assert.match(dmaEntryLimit(7, join(dir, 'dma_entry_limit')).source, /dma_entry_limit 7 /);
  assert.deepEqual(dmaEntryLimit(undefined, join(dir, 'dma_entry_limit')), {
    limit: 1000,
    source: 'vfio_iommu_type1 dma_entry_limit 1000',
  });
  assert.deepEqual(dmaEntryLimit(undefined, join(dir, 'none')), {
    limit: 65535,
    source: 'vfio_iommu_type1 dma_entry_limit (default 65535)',
  });
});

test('random maps, unmaps, RAM changes and replays keep every listener equal to the live mappings (seeded)', () => {
  let seed = 0x2545f491;
  const rnd = (n: number) => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) % n;
  };
  const { root, high, mmio, domains } = guest();
  const ds = [made(domains.create(1)), made(domains.create(2))];
  const ls = [new Recorder('a', 40), new Recorder('b')];
  ds[0]!.addListener(ls[0]!);
  ds[1]!.addListener(ls[1]!);
  let highIn = true;
  const expect = (d: DmaDomain) =>
    d.mappings
      .values()
      .flatMap((m) => m.pieces ?? [])
      .map((p) => [p.iova, p.vaddr])
      .sort((x, y) => Number(x[0]) - Number(y[0]));
  for (let i = 0; i < 5000; i++) {
    const d = ds[rnd(2)]!;
    const op = rnd(100);
    if (op < 50) d.map(rnd(64) * P, rnd(2600) * P, (1 + rnd(4)) * P, { read: true, write: rnd(4) > 0 });
    else if (op < 90) d.unmap(rnd(64) * P, (1 + rnd(8)) * P);
    else if (op < 94) {
      if (highIn) root.removeSubregion(high);
      else root.addSubregion(4 * MiB, high);
      highIn = !highIn;
    } else if (op < 97) mmio.setAddress(rnd(2) ? 16 * MiB : rnd(8) * MiB);
    else {
      // a listener leaves and comes back (a group moving away and back): replay
      const j = rnd(2);
      ds[j]!.removeListener(ls[j]!);
      assert.equal(ls[j]!.held.size, 0);
      assert.ok(ds[j]!.addListener(ls[j]!).ok || ls[j]!.room() < ds[j]!.pieceCount);
    }
    for (const j of [0, 1]) {
      const held = [...ls[j]!.held.values()].map((p) => [p.iova, p.vaddr]).sort((x, y) => Number(x[0]) - Number(y[0]));
      if (!ds[j]!.hasListener(ls[j]!)) continue;
      assert.deepEqual(held, expect(ds[j]!), `step ${i}: listener ${j} differs from domain ${j + 1}`);
    }
    const all = ds.flatMap((d) => d.mappings.values());
    for (const m of all) assert.ok(m.size > 0);
  }
  for (const j of [0, 1]) {
    const st = ds[j]!.stats;
    assert.ok(st.maps > 100 && st.unmaps > 50 && st.orphaned > 0 && st.remapped > 0, JSON.stringify(st));
  }
  domains.close();
  assert.equal(ls[0]!.held.size + ls[1]!.held.size, 0, 'closing unmaps everything');
});
