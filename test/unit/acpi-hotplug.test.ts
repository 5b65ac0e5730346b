// ACPI hot-plug and power button: the DSDT's slot objects, PHPR and GED (checked by ACPICA's own
// disassembler and compiler, an oracle independent of our encoder), and the registers' semantics.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildAcpiTables, ACPI_TABLES_ADDR } from '../../hw/acpi.js';
import { GenericEventDevice, GED_EVENT_PCI_HOTPLUG, GED_EVENT_POWER_BUTTON } from '../../hw/ged.js';
import { AcpiPciHotplug } from '../../hw/pci-hotplug.js';
import { AddressSpace, MemoryRegion } from '../../core/memory/index.js';
import { ensurePackages } from '../../testhost/packages.js';

const opts = { cpus: 2, pciMmio32: { base: 0xc000_0000, end: 0xfec0_0000 }, pciIrqs: [{ slot: 1, pin: 1, gsi: 17 }] };

function dsdtOf(hotplugSlots?: number[]): Uint8Array {
  const t = buildAcpiTables({ ...opts, ...(hotplugSlots ? { hotplugSlots } : {}) });
  const at = t.tables.DSDT! - ACPI_TABLES_ADDR;
  const len = new DataView(t.bytes.buffer, t.bytes.byteOffset).getUint32(at + 4, true);
  return t.bytes.subarray(at, at + len);
}

/** iasl -d, then iasl again on the disassembly: both must succeed with no error. */
function disassemble(table: Uint8Array): string {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-dsdt-'));
  writeFileSync(join(dir, 'dsdt.dat'), table);
  execFileSync('iasl', ['-d', 'dsdt.dat'], { cwd: dir, stdio: 'pipe' });
  const dsl = readFileSync(join(dir, 'dsdt.dsl'), 'utf8');
  const out = execFileSync('iasl', ['-p', 'again', 'dsdt.dsl'], { cwd: dir, stdio: 'pipe', encoding: 'utf8' });
  assert.match(out, /Compilation successful\. 0 Errors/);
  // Comments out, white space folded: one line to match against.
  return dsl
    .replace(/\/\/[^\n]*/g, '')
    .replace(/\/\*[\s\S]*?\*\//g, '')
    .replace(/\s+/g, ' ');
}

test('DSDT with hot-plug slots: ACPICA reads slot objects, PHPR, GED with its interrupt, power button', async () => {
  await ensurePackages(['acpica-tools']);
  const dsl = disassemble(dsdtOf([0, 3, 31]));
  for (const [slot, seg] of [
    [0, 'S00'],
    [3, 'S03'],
    [31, 'S1F'],
  ] as const) {
    assert.ok(
      dsl.includes(
        `Device (${seg}) { Name (_ADR, ${slot === 0 ? 'Zero' : `0x00${slot.toString(16).toUpperCase().padStart(2, '0')}0000`})`,
      ),
      `${seg} _ADR`,
    );
    assert.ok(
      dsl.includes(
        `\\_SB.PHPR.PCEJ (${slot === 0 ? 'Zero' : `0x${slot.toString(16).toUpperCase().padStart(2, '0')}`})`,
      ),
      `${seg} _EJ0 calls PCEJ`,
    );
    const bit = `0x${(2 ** slot).toString(16).toUpperCase().padStart(2, '0')}`;
    const b = slot === 0 ? 'One' : bit;
    assert.ok(dsl.includes(`If ((Local0 & ${b})) { Notify (\\_SB.PCI0.${seg}, One) }`), `${seg} device check`);
    assert.ok(dsl.includes(`If ((Local1 & ${b})) { Notify (\\_SB.PCI0.${seg}, 0x03) }`), `${seg} eject request`);
  }
  assert.ok(!dsl.includes('Device (S01)'), 'only the slots asked for');
  assert.match(
    dsl,
    /OperationRegion \(PCST, SystemIO, 0xAE00, 0x0C\) Field \(PCST, DWordAcc, NoLock, WriteAsZeros\) \{ PCIU, 32, PCID, 32, B0EJ, 32 \}/,
  );
  assert.match(dsl, /Method \(PCEJ, 1, Serialized\) \{ B0EJ = \(One << Arg0\) \}/);
  assert.match(
    dsl,
    /Name \(_HID, "ACPI0013" .*?Interrupt \(ResourceConsumer, Level, ActiveHigh, Exclusive, ,, \) \{ 0x00000005, \}/,
  );
  assert.match(
    dsl,
    /Method \(_EVT, 1, Serialized\) .*?Local0 = GDAT .*?If \(\(Local0 & One\)\) \{ \\_SB.PHPR.PSCN \(\) \} If \(\(Local0 & 0x02\)\) \{ Notify \(\\_SB.PWRB, 0x80\)/,
  );
  assert.match(dsl, /Device \(PWRB\) \{ Name \(_HID, EisaId \("PNP0C0C"\)/);
  assert.match(
    dsl,
    /EisaId \("PNP0C02"\).*?IO \(Decode16, 0xAE00, 0xAE00, 0x01, 0x0C, \) IO \(Decode16, 0xAF00, 0xAF00, 0x01, 0x04, \)/,
  );
});

test('DSDT without hot-plug: no GED, no slot objects', async () => {
  await ensurePackages(['acpica-tools']);
  const dsl = disassemble(dsdtOf());
  assert.ok(!/ACPI0013|PHPR|PWRB|Device \(S0/.test(dsl));
  assert.match(dsl, /Device \(PCI0\)/);
});

function space(...regions: [number, MemoryRegion][]): AddressSpace {
  const io = new AddressSpace('io', MemoryRegion.container('io', 0x10000));
  for (const [at, r] of regions) io.root.addSubregion(at, r);
  return io;
}

test('GED: an event raises the line until the guest reads it; the read returns and clears the events', () => {
  const levels: boolean[] = [];
  const ged = new GenericEventDevice({ setLevel: (l) => levels.push(l) });
  const io = space([0xaf00, ged.region]);
  ged.notify(GED_EVENT_PCI_HOTPLUG);
  ged.notify(GED_EVENT_POWER_BUTTON);
  assert.deepEqual(levels, [true, true]);
  assert.equal(io.read(0xaf01, 1), 0xff, 'a byte read is not a valid access: all-ones, events kept');
  assert.equal(Number(io.read(0xaf00, 4)), GED_EVENT_PCI_HOTPLUG | GED_EVENT_POWER_BUTTON);
  assert.equal(levels.at(-1), false, 'line lowered by the read');
  assert.equal(Number(io.read(0xaf00, 4)), 0);
  ged.notify(0);
  assert.equal(levels.at(-1), false, 'no event, no interrupt');
});

test('PCI hot-plug registers: up/down bits read-clear, B0EJ ejects each slot written, each change notifies', () => {
  let notified = 0;
  const ejected: number[] = [];
  const hp = new AcpiPciHotplug(
    () => {
      notified++;
    },
    (s) => ejected.push(s),
  );
  const io = space([0xae00, hp.region]);
  hp.plugged(4);
  hp.plugged(31);
  hp.requestUnplug(2);
  assert.equal(notified, 3);
  assert.equal(Number(io.read(0xae00, 4)) >>> 0, ((1 << 4) | (1 << 31)) >>> 0);
  assert.equal(Number(io.read(0xae00, 4)), 0, 'PCIU cleared by the read');
  assert.equal(Number(io.read(0xae04, 4)), 1 << 2);
  assert.equal(Number(io.read(0xae04, 4)), 0, 'PCID cleared by the read');
  io.write(0xae08, 4, ((1 << 2) | (1 << 30)) >>> 0);
  assert.deepEqual(ejected, [2, 30]);
  io.write(0xae08, 1, 0xff);
  assert.deepEqual(ejected, [2, 30], 'a byte write is not a valid access');
  hp.plugged(1);
  hp.requestUnplug(5);
  hp.reset();
  assert.equal(Number(io.read(0xae00, 4)), 0, 'reset clears pending changes');
  assert.equal(Number(io.read(0xae04, 4)), 0);
});
