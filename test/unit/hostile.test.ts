// Hostile guests against the vfio-pci model, the PCI bus and KVM memslot bookkeeping,
// on an in-memory fake device and fake KVM (test/helpers/fake-vfio-pci.ts): pure logic. The
// same chains run on the real kernel and devices in test/host/legacy/hostile.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryRegion, type Section } from '../../core/memory/index.js';
import { KvmMemslots } from '../../core/kvm/memslots.js';
import { guestEvents, physAddrLimit, PCI_COMMAND } from '../../hw/pci.js';
import { fakeBoard, FakeKvm, MSI_CAP, MSIX_CAP, PM_CAP } from '../helpers/fake-vfio-pci.js';

/** Captures what guestEvents prints during fn. */
function captureLog<T>(fn: () => T): { result: T; lines: string[] } {
  const lines: string[] = [];
  const sink = guestEvents.sink;
  guestEvents.sink = (l) => {
    lines.push(l);
  };
  guestEvents.counts.clear();
  try {
    return { result: fn(), lines };
  } finally {
    guestEvents.sink = sink;
  }
}

function section(addr: number, size: number): Section {
  const region = MemoryRegion.ramDevice(`bar@${addr.toString(16)}`, size, { hostAddr: 0x7f0000000000n });
  return { addr, size, region, offsetInRegion: 0, readonly: false };
}

test('memslots: a placement KVM refuses gives its slot number back; the limit counts live slots only', () => {
  const kvm = new FakeKvm(2 ** 40);
  const slots = new KvmMemslots(-1, 4, false, kvm.setUserMemoryRegion);
  for (let i = 0; i < 1000; i++) assert.throws(() => slots.regionAdd(section(2 ** 45 + i * 0x1000, 0x1000)), /EINVAL/);
  assert.equal(kvm.refused, 1000);
  assert.equal(slots.numbersInUse, 0, 'no number was kept by a refused placement');
  const ok = [0, 1, 2, 3].map((i) => section(0xc0000000 + i * 0x1000, 0x1000));
  for (const s of ok) slots.regionAdd(s);
  assert.deepEqual(
    slots
      .slots()
      .map((s) => s.slot)
      .sort(),
    [0, 1, 2, 3],
  );
  assert.throws(() => slots.regionAdd(section(0xd0000000, 0x1000)), /out of KVM memslots \(4\)/);
  slots.regionDel(ok[1]!);
  slots.regionAdd(section(0xd0000000, 0x1000));
  assert.equal(slots.numbersInUse, 4);
  assert.deepEqual([...kvm.slots.keys()].sort(), [0, 1, 2, 3], 'KVM and tsvmm agree on the slots');
});

test('physical address width: from CPUID 0x80000008, 36 bits without it', () => {
  assert.equal(
    physAddrLimit([{ function: 0x80000008, index: 0, flags: 0, eax: 0x3028, ebx: 0, ecx: 0, edx: 0 }]),
    2 ** 40,
  );
  assert.equal(physAddrLimit([]), 2 ** 36);
});

test('decoding: BARs over the LAPIC, the IOAPIC, the first MiB, ISA ports or beyond the address width do not decode there', () => {
  const { result: b, lines } = captureLog(() => {
    const b = fakeBoard({ msi64: true, memLimit: 2 ** 40, kvmPhysLimit: 2 ** 46 });
    b.cfgWrite(PCI_COMMAND, 2, 0x3);
    const bar2 = b.dev.bars[2]!,
      bar0 = b.dev.bars[0]!,
      bar4 = b.dev.bars[4]!;
    for (const at of [0xfee00000, 0xfec00000, 0x80000, 0xfee01000]) {
      b.cfgWrite(0x18, 4, at);
      assert.equal(bar2.mappedAt, undefined, `BAR2 at 0x${at.toString(16)} must not decode`);
    }
    b.cfgWrite(0x18, 4, 0xfed00000);
    assert.equal(bar2.mappedAt, 0xfed00000, 'next to them it decodes');
    b.cfgWrite(0x10, 4, 0);
    b.cfgWrite(0x14, 4, 2 ** 18); // BAR0 at 2^50
    assert.equal(bar0.mappedAt, undefined);
    assert.equal(b.kvm.refused, 0, 'no memslot was even attempted beyond the width');
    b.cfgWrite(0x14, 4, 0);
    b.cfgWrite(0x10, 4, 0xc0000000);
    assert.equal(bar0.mappedAt, 0xc0000000);
    b.cfgWrite(0x20, 4, 0xcf8);
    assert.equal(bar4.mappedAt, undefined, 'an I/O BAR over conf1 would cut the guest off config space');
    assert.equal(b.cfgRead(0, 4), 0x00101b36, 'config space still reachable');
    b.cfgWrite(0x20, 4, 0xc000);
    assert.equal(bar4.mappedAt, 0xc000);
    return b;
  });
  assert.equal(b.memory.lookup(0xfee00000), undefined, 'nothing shadows the LAPIC');
  assert.deepEqual(lines, [], 'decode refusals are debug-level: silent without TSVMM_DEBUG');
  assert.ok((guestEvents.counts.get('fake0:bar2:hole:the LAPIC/MSI window') ?? 0) >= 1);
});

test('the SIGBUS chain: a BAR KVM cannot map never splits tsvmm from the device; trapped pieces use pread, refused ones read all-ones', () => {
  const { result: b, lines } = captureLog(() => {
    // memLimit above what (fake) KVM maps: tsvmm tries, KVM_SET_USER_MEMORY_REGION says EINVAL.
    const b = fakeBoard({ msi64: true, memLimit: 2 ** 52, kvmPhysLimit: 2 ** 46 });
    b.cfgWrite(0x10, 4, 0x4);
    b.cfgWrite(0x14, 4, 2 ** 18); // BAR0 (mem64) at 2^50
    for (let i = 0; i < 50; i++) {
      b.cfgWrite(PCI_COMMAND, 4, 0x6); // memory decode + bus master, and the status half
      assert.equal(b.fake.command & 0x6, 0x6, 'the command write reached the device');
      assert.equal(b.dev.command & 0x6, 0x6, "and tsvmm's copy");
      assert.equal(b.cfgRead(PCI_COMMAND, 2) & 0x6, 0x6, 'the guest reads what it wrote');
      assert.equal(b.dev.bars[0]!.mappedAt, undefined, 'BAR0 does not decode where KVM cannot map it');
      b.cfgWrite(PCI_COMMAND, 2, 0);
    }
    assert.equal(b.memslots.numbersInUse, b.memslots.slots().length, 'no memslot number leaked');
    assert.deepEqual(new Set(b.memslots.slots().map((s) => s.slot)), new Set(b.kvm.slots.keys()));
    // Back to a sane address: it decodes, the direct part is a memslot, emulated reads use pread.
    b.cfgWrite(0x14, 4, 0);
    b.cfgWrite(0x10, 4, 0xc0000000);
    b.cfgWrite(PCI_COMMAND, 2, 0x6);
    assert.equal(b.dev.bars[0]!.mappedAt, 0xc0000000);
    assert.ok(
      b.memslots.slots().some((s) => s.gpa === 0xc0000000),
      'BAR0 registers are a memslot',
    );
    assert.equal(
      Number(b.memory.read(0xc0000010, 4)),
      Number(b.fake.read(0, 0x10, 4)),
      "an emulated access to the mmap'd piece reads the device",
    );
    assert.equal(
      Number(b.memory.read(0xc0002800, 4)),
      Number(b.fake.read(0, 0x2800, 4)),
      'the trapped part past the MSI-X table too',
    );
    // The device stops decoding behind tsvmm's back (reset, D3): reads are all-ones, nothing throws.
    b.fake.config[4] = 0;
    assert.equal(Number(b.memory.read(0xc0000010, 4)), 0xffffffff);
    assert.equal(b.memory.read(0xc0000018, 8), 0xffffffffffffffffn);
    b.memory.write(0xc0000010, 4, 0x1234);
    return b;
  });
  assert.equal(
    lines.filter((l) => /BAR0 cannot decode at 0x4000000000000/.test(l)).length,
    1,
    `logged once:\n${lines.join('\n')}`,
  );
  assert.equal(guestEvents.counts.get('fake0:bar0:map'), 50);
  assert.equal(lines.filter((l) => /BAR0 read .* failed/.test(l)).length, 1, lines.join('\n'));
  assert.deepEqual(b.fake.violations, []);
});

for (const msi64 of [false, true]) {
  test(`MSI (${msi64 ? '64' : '32'}-bit): a dword write over the end of the capability sets the data register`, () => {
    const b = fakeBoard({ msi64 });
    const data = MSI_CAP + (msi64 ? 0x0c : 0x08);
    b.cfgWrite(MSI_CAP + 4, 4, 0xfee00000);
    if (msi64) b.cfgWrite(MSI_CAP + 8, 4, 0);
    b.fake.configWrites.length = 0;
    b.cfgWrite(data, 4, 0xabcd0041); // data 0x41; the upper half lies past the capability
    assert.equal(b.cfgRead(data, 2), 0x41);
    b.cfgWrite(MSI_CAP + 2, 2, 0x1); // enable
    const routes = [...b.kvm.msiRoutes.values()];
    assert.deepEqual(
      routes,
      [{ addressLo: 0xfee00000, addressHi: 0, data: 0x41 }],
      'the vector is routed with the data written',
    );
    assert.deepEqual(
      b.fake.configWrites,
      [
        [data + 2, 0xcd],
        [data + 3, 0xab],
      ],
      'the bytes past the capability went to the device',
    );
    assert.deepEqual(b.fake.violations, []);
  });
}

test("MSI-X: accesses at the capability's edges reach the emulation for its bytes and the device for the others", () => {
  const b = fakeBoard({ msi64: true });
  b.cfgWrite(MSIX_CAP, 4, 0x80000000); // enable, through a dword starting at the capability ID
  assert.equal(b.dev.msixCap!.enabled, true);
  b.fake.configWrites.length = 0;
  b.dev.configWrite(MSIX_CAP + 11, 2, 0x5aa5); // last byte of the capability (read-only) + the next one
  assert.deepEqual(b.fake.configWrites, [[MSIX_CAP + 12, 0x5a]]);
  b.dev.configWrite(MSIX_CAP + 3, 1, 0x00);
  assert.equal(b.dev.msixCap!.enabled, false);
  b.dev.configWrite(MSIX_CAP - 1, 4, 0x00800000); // crossing the start: byte 0x42 (control low) only
  assert.equal(b.cfgRead(MSIX_CAP, 4) >>> 16, 0x0007, 'control keeps its read-only table size');
  assert.deepEqual(b.fake.violations, []);
});

test('no guest action throws into the exit loop: GSI exhaustion on MSI-X table writes is contained and logged once', () => {
  const { result: b, lines } = captureLog(() => {
    const b = fakeBoard({ msi64: true, maxGsi: 26 });
    b.cfgWrite(0x10, 4, 0xc0000000);
    b.cfgWrite(PCI_COMMAND, 2, 0x6);
    b.cfgWrite(MSIX_CAP + 2, 2, 0x8000);
    for (let v = 0; v < 8; v++) {
      b.memory.write(0xc0002000 + v * 16, 4, 0xfee00000);
      b.memory.write(0xc0002000 + v * 16 + 8, 4, 0x40 + v);
      b.memory.write(0xc0002000 + v * 16 + 12, 4, 0); // unmask: use the vector
    }
    return b;
  });
  assert.equal(b.kvm.msiRoutes.size, 2, 'two GSIs were free');
  assert.equal(lines.filter((l) => /out of GSIs/.test(l)).length, 1, lines.join('\n'));
});

test('D3hot through the PM capability: the BARs stop decoding (no memslot on a refused mmap), and decode again in D0', () => {
  const b = fakeBoard({ msi64: true });
  b.cfgWrite(0x10, 4, 0xc0000000);
  b.cfgWrite(PCI_COMMAND, 2, 0x6);
  assert.equal(b.dev.bars[0]!.mappedAt, 0xc0000000);
  const slots = b.memslots.slots().length;
  b.cfgWrite(PM_CAP + 4, 4, 0x3); // PMCSR: D3hot
  assert.equal(b.fake.d3, true, 'PMCSR reached the device');
  assert.equal(b.dev.bars[0]!.mappedAt, undefined);
  assert.ok(
    b.memslots.slots().every((s) => s.gpa < 0xc0000000),
    'no memslot left on the BAR',
  );
  assert.equal(Number(b.memory.read(0xc0000010, 4)), 0xffffffff);
  b.cfgWrite(PM_CAP + 4, 2, 0x0);
  assert.equal(b.dev.bars[0]!.mappedAt, 0xc0000000);
  assert.equal(b.memslots.slots().length, slots);
});
