// Pure logic of booting Linux: the bzImage header checks, boot_params layout, page tables and
// GDT, the MP table and ACPI tables (checksums, pointers, AML), the initramfs archive, the config.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  BOOT_PARAMS_ADDR,
  CMDLINE_ADDR,
  GDT_ADDR,
  GDT_ENTRIES,
  KERNEL_LOAD_ADDR,
  PML4_ADDR,
  isBzImage,
  linuxCmdline,
  loadLinux,
  parseBzImage,
} from '../../machine/loader/linux.js';
import { LoaderError } from '../../machine/loader/multiboot.js';
import { buildInitramfs, cpioNewc, INIT_SCRIPT } from '../../machine/loader/initramfs.js';
import { buildMpTable, checksum, MP_TABLE_ADDR } from '../../hw/mptable.js';
import { amlPkgLength, buildAcpiTables, dsdtAml, eisaId, ACPI_TABLES_ADDR } from '../../hw/acpi.js';
import { checkConfig, ConfigError } from '../../machine/config/config.js';
import { fakeBzImage } from '../helpers/images.js';

const MiB = 2 ** 20;

const e820 = (ram: number) => [
  { addr: 0, size: 0x9fc00, type: 1 as const },
  { addr: 0x9fc00, size: 0x60400, type: 2 as const },
  { addr: 0x100000, size: ram - 0x100000, type: 1 as const },
];

test('bzImage header: parsed, and refused with the reason when unusable', () => {
  const h = parseBzImage(fakeBzImage(), 'k');
  assert.equal(h.version, 0x020f);
  assert.equal(h.kernelOffset, 5 * 512);
  assert.equal(h.headerEnd, 0x26c);
  assert.equal(h.initSize, 2 * MiB);
  assert.equal(h.prefAddress, 0x1000000);
  assert.ok(isBzImage(fakeBzImage()));
  const elf = new Uint8Array(4096);
  elf.set([0x7f, 0x45, 0x4c, 0x46]);
  assert.throws(() => parseBzImage(elf, 'vmlinux'), /not a bzImage.*ELF file \(vmlinux\?\)/);
  assert.ok(!isBzImage(elf));
  assert.throws(() => parseBzImage(fakeBzImage({ version: 0x020b }), 'old'), /boot protocol 2\.11 is too old.*2\.12/);
  assert.throws(() => parseBzImage(fakeBzImage({ xloadflags: 0 }), 'k32'), /XLF_KERNEL_64/);
  assert.throws(() => parseBzImage(fakeBzImage({ loadflags: 0 }), 'z'), /zImage/);
});

test('loadLinux: kernel at 1 MiB, boot_params (header, e820, cmdline, initrd), identity page tables, GDT', () => {
  const ramSize = 32 * MiB;
  const ram = new Uint8Array(ramSize);
  const image = fakeBzImage();
  const initrd = new Uint8Array(5000).fill(0xab);
  const l = loadLinux(ram, {
    image,
    path: 'k',
    cmdline: 'console=ttyS0 quiet',
    initrd,
    e820: e820(ramSize),
    lowRamEnd: ramSize,
    acpiRsdp: 0xe0000,
  });
  assert.equal(l.entry, KERNEL_LOAD_ADDR + 0x200);
  assert.deepEqual(ram.subarray(KERNEL_LOAD_ADDR, KERNEL_LOAD_ADDR + 4096), image.subarray(5 * 512));
  const bp = new DataView(ram.buffer, BOOT_PARAMS_ADDR, 4096);
  assert.equal(bp.getUint32(0x202, true), 0x53726448, 'setup header copied');
  assert.equal(bp.getUint8(0x210), 0xff, 'type_of_loader');
  assert.equal(bp.getUint32(0x228, true), CMDLINE_ADDR);
  assert.equal(new TextDecoder().decode(ram.subarray(CMDLINE_ADDR, CMDLINE_ADDR + 19)), 'console=ttyS0 quiet');
  assert.equal(ram[CMDLINE_ADDR + 19], 0);
  assert.equal(bp.getBigUint64(0x070, true), 0xe0000n, 'acpi_rsdp_addr');
  // initrd: page-aligned, at the top of RAM, where ramdisk_image/size say.
  assert.equal(l.initrd!.addr % 4096, 0);
  assert.ok(l.initrd!.addr + initrd.length <= ramSize && l.initrd!.addr + initrd.length > ramSize - 4096);
  assert.equal(bp.getUint32(0x218, true), l.initrd!.addr);
  assert.equal(bp.getUint32(0x21c, true), 5000);
  assert.equal(ram[l.initrd!.addr], 0xab);
  // e820
  assert.equal(bp.getUint8(0x1e8), 3);
  assert.equal(bp.getBigUint64(0x2d0 + 2 * 20, true), 0x100000n);
  assert.equal(bp.getBigUint64(0x2d0 + 2 * 20 + 8, true), BigInt(ramSize - 0x100000));
  assert.equal(bp.getUint32(0x2d0 + 20 + 16, true), 2);
  // Page tables: PML4 → PDPT → 4 PDs of 2 MiB pages mapping physical = virtual.
  const pt = new DataView(ram.buffer);
  assert.equal(pt.getBigUint64(PML4_ADDR, true), BigInt(PML4_ADDR + 0x1000) | 3n);
  assert.equal(pt.getBigUint64(PML4_ADDR + 0x1000 + 3 * 8, true), BigInt(PML4_ADDR + 0x2000 + 3 * 0x1000) | 3n);
  const pde = (i: number) => pt.getBigUint64(PML4_ADDR + 0x2000 + 8 * i, true);
  assert.equal(pde(0), 0x83n);
  assert.equal(pde(2047), (2047n << 21n) | 0x83n, 'the last 2 MiB below 4 GiB');
  GDT_ENTRIES.forEach((e, i) => assert.equal(pt.getBigUint64(GDT_ADDR + 8 * i, true), e));
  assert.equal((GDT_ENTRIES[2]! >> 53n) & 1n, 1n, '__BOOT_CS (0x10) is a 64-bit code segment');
});

test('loadLinux: an initrd or kernel that does not fit, or a long command line, is an actionable error', () => {
  const ram = new Uint8Array(32 * MiB);
  const image = fakeBzImage({ initSize: 8 * MiB }); // needs RAM up to 24 MiB
  assert.throws(
    () =>
      loadLinux(ram, {
        image,
        path: 'k',
        cmdline: '',
        initrd: new Uint8Array(10 * MiB),
        initrdName: 'big.cpio',
        e820: e820(32 * MiB),
        lowRamEnd: 32 * MiB,
      }),
    (e: Error) =>
      e instanceof LoaderError &&
      /big\.cpio/.test(e.message) &&
      /^give it more memory \(at least \d+M\)$/.test(e.fix ?? ''),
  );
  assert.throws(
    () =>
      loadLinux(ram, {
        image: fakeBzImage({ initSize: 40 * MiB }),
        path: 'k',
        cmdline: '',
        e820: e820(32 * MiB),
        lowRamEnd: 32 * MiB,
      }),
    (e: LoaderError) => /init_size/.test(e.message) && /^give it more memory/.test(e.fix ?? ''),
  );
  assert.throws(
    () => loadLinux(ram, { image, path: 'k', cmdline: 'x'.repeat(2047), e820: e820(32 * MiB), lowRamEnd: 32 * MiB }),
    /at most 2046/,
  );
  assert.equal(linuxCmdline('  console=ttyS0 \n quiet '), 'console=ttyS0 quiet');
});

test('MP table: floating pointer and table checksum to 0; CPUs, buses, IOAPIC, ISA and PCI INTx entries', () => {
  const t = buildMpTable(MP_TABLE_ADDR, {
    cpus: 2,
    cpuSignature: 0x800f12,
    cpuFeatures: 0x178bfbff,
    pciIrqs: [{ slot: 3, pin: 1, ioapicPin: 17 }],
  });
  const v = new DataView(t.buffer);
  assert.equal(new TextDecoder().decode(t.subarray(0, 4)), '_MP_');
  assert.equal(checksum(t.subarray(0, 16)), 0);
  assert.equal(v.getUint32(4, true), MP_TABLE_ADDR + 16);
  const len = v.getUint16(16 + 4, true);
  assert.equal(16 + len, t.length);
  assert.equal(new TextDecoder().decode(t.subarray(16, 20)), 'PCMP');
  assert.equal(checksum(t.subarray(16, 16 + len)), 0);
  assert.equal(v.getUint32(16 + 36, true), 0xfee00000);
  // Walk the entries: count by type; the PCI entry encodes slot<<2 | (pin-1) → pin 17.
  const count = v.getUint16(16 + 34, true);
  const kinds = [0, 0, 0, 0, 0];
  let p = 16 + 44,
    pci;
  for (let i = 0; i < count; i++) {
    const type = t[p]!;
    kinds[type]!++;
    if (type === 3 && t[p + 4] === 0) pci = { busIrq: t[p + 5], pin: t[p + 7], flags: v.getUint16(p + 2, true) };
    p += type === 0 ? 20 : 8;
  }
  assert.equal(p, t.length);
  assert.deepEqual(kinds, [2, 2, 1, 15 + 1, 2]);
  assert.deepEqual(pci, { busIrq: (3 << 2) | 0, pin: 17, flags: 0x0d });
  assert.equal(t[16 + 44 + 3], 3, 'CPU 0 is enabled and the BSP');
  assert.equal(t[16 + 44 + 20 + 3], 1, 'CPU 1 is enabled');
});

test('ACPI: RSDP/RSDT/XSDT/FADT/MADT/DSDT checksums, pointers, hardware-reduced FADT with sleep and reset registers', () => {
  const a = buildAcpiTables({
    cpus: 2,
    pciMmio32: { base: 0xc0000000, end: 0xfec00000 },
    pciIrqs: [
      { slot: 1, pin: 1, gsi: 16 },
      { slot: 2, pin: 1, gsi: 17 },
    ],
  });
  const at = (addr: number) => addr - ACPI_TABLES_ADDR;
  const b = a.bytes,
    v = new DataView(b.buffer);
  const sig = (addr: number) => new TextDecoder().decode(b.subarray(at(addr), at(addr) + 4));
  const sum = (off: number, len: number) => checksum(b.subarray(off, off + len));
  assert.equal(new TextDecoder().decode(b.subarray(0, 8)), 'RSD PTR ');
  assert.equal(sum(0, 20), 0);
  assert.equal(sum(0, 36), 0);
  const rsdt = v.getUint32(16, true),
    xsdt = Number(v.getBigUint64(24, true));
  assert.equal(sig(rsdt), 'RSDT');
  assert.equal(sig(xsdt), 'XSDT');
  for (const [name, addr] of Object.entries(a.tables)) {
    assert.equal(sig(addr), name);
    assert.equal(sum(at(addr), v.getUint32(at(addr) + 4, true)), 0, `${name} checksum`);
  }
  const xEntries = [Number(v.getBigUint64(at(xsdt) + 36, true)), Number(v.getBigUint64(at(xsdt) + 44, true))];
  assert.deepEqual(xEntries.map(sig), ['FACP', 'APIC']);
  const f = at(a.tables.FACP!);
  assert.equal(v.getUint32(f + 4, true), 276);
  assert.equal(Number(v.getBigUint64(f + 140, true)), a.tables.DSDT, 'X_DSDT');
  assert.equal(v.getUint32(f + 40, true), a.tables.DSDT, 'DSDT');
  assert.ok(v.getUint32(f + 112, true) & (1 << 20), 'HW_REDUCED_ACPI');
  assert.ok(v.getUint32(f + 112, true) & (1 << 10), 'RESET_REG_SUP');
  assert.equal(v.getUint16(f + 109, true) & 0x0a, 0, 'IAPC_BOOT_ARCH: no 8042 claimed, MSI not disabled');
  assert.deepEqual(
    [b[f + 116], b[f + 117], Number(v.getBigUint64(f + 120, true)), b[f + 128]],
    [1, 8, 0xcf9, 6],
    'reset register: 6 to I/O 0xCF9',
  );
  assert.deepEqual(
    [b[f + 244], Number(v.getBigUint64(f + 248, true)), b[f + 256], Number(v.getBigUint64(f + 260, true))],
    [1, 0x600, 1, 0x601],
  );
  // MADT: 2 local APICs, an IOAPIC at 0xfec00000, IRQ0 → GSI 2.
  const m = at(a.tables.APIC!);
  const types: number[] = [];
  for (let p = m + 44; p < m + v.getUint32(m + 4, true); p += b[p + 1]!) types.push(b[p]!);
  assert.deepEqual(types, [0, 0, 1, 2, 4]);
});

test('AML: PkgLength encodings, EISA IDs, and the DSDT names (PCI0 with _PRT per device, COM1, _S5_)', () => {
  assert.deepEqual(amlPkgLength(0), [1]);
  assert.deepEqual(amlPkgLength(62), [63]);
  assert.deepEqual(amlPkgLength(63), [0x40 | (65 & 0xf), 65 >> 4]);
  assert.deepEqual(amlPkgLength(4000), [0x40 | (4002 & 0xf), 4002 >> 4]);
  assert.deepEqual(amlPkgLength(5000), [0x80 | (5003 & 0xf), (5003 >> 4) & 0xff, 5003 >> 12]);
  assert.equal(eisaId('PNP0A03'), 0x030ad041);
  assert.equal(eisaId('PNP0501'), 0x0105d041);
  const aml = dsdtAml({
    cpus: 1,
    pciMmio32: { base: 0xc0000000, end: 0xfec00000 },
    pciIrqs: [{ slot: 5, pin: 2, gsi: 19 }],
  });
  const text = Buffer.from(aml).toString('latin1');
  for (const n of ['_SB_', 'PCI0', '_HID', '_CRS', '_PRT', 'COM1', '_S5_']) assert.ok(text.includes(n), n);
  // The _PRT entry: Package(4) { 0x0005FFFF, 1 (INTB), 0, 19 }.
  const entry = [0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x05, 0x00, 0x01, 0x00, 0x0a, 19];
  assert.ok(text.includes(Buffer.from(entry).toString('latin1')), 'the _PRT entry for slot 5 INTB → GSI 19');
});

/** Reads a newc archive back: name, mode, rdev, data; checks alignment and the trailer. */
function readCpio(a: Uint8Array): { name: string; mode: number; rdevMajor: number; data: Uint8Array }[] {
  const out: { name: string; mode: number; rdevMajor: number; data: Uint8Array }[] = [];
  let p = 0;
  const dec = new TextDecoder();
  for (;;) {
    assert.equal(p % 4, 0);
    assert.equal(dec.decode(a.subarray(p, p + 6)), '070701');
    const f = (i: number) => parseInt(dec.decode(a.subarray(p + 6 + 8 * i, p + 14 + 8 * i)), 16);
    const mode = f(1),
      size = f(6),
      rdevMajor = f(9),
      nameSize = f(11);
    const name = dec.decode(a.subarray(p + 110, p + 110 + nameSize - 1));
    assert.equal(a[p + 110 + nameSize - 1], 0);
    let d = p + 110 + nameSize;
    d += (4 - (d % 4)) % 4;
    if (name === 'TRAILER!!!') {
      assert.equal(d, a.length);
      return out;
    }
    out.push({ name, mode, rdevMajor, data: a.subarray(d, d + size) });
    p = d + size;
    p += (4 - (p % 4)) % 4;
  }
}

test('cpio newc: entries round-trip with 4-byte alignment and a trailer', () => {
  const a = cpioNewc([
    { name: 'bin', mode: 0o40755 },
    { name: 'dev/console', mode: 0o20600, rdev: { major: 5, minor: 1 } },
    { name: 'init', mode: 0o100755, data: new TextEncoder().encode('abc') },
  ]);
  const e = readCpio(a);
  assert.deepEqual(
    e.map((x) => [x.name, x.mode.toString(8), x.data.length]),
    [
      ['bin', '40755', 0],
      ['dev/console', '20600', 0],
      ['init', '100755', 3],
    ],
  );
  assert.equal(e[1]!.rdevMajor, 5);
  assert.equal(new TextDecoder().decode(e[2]!.data), 'abc');
});

test('initramfs: a dynamic or missing busybox, or a modules dir without modules.order, is refused with the fix', () => {
  assert.throws(
    () => buildInitramfs({ script: 'true', busybox: '/nonexistent/busybox' }),
    /apt-get install busybox-static/,
  );
  // node itself is a dynamically linked ELF.
  assert.throws(
    () => buildInitramfs({ script: 'true', busybox: process.execPath }),
    /dynamically linked.*busybox-static/,
  );
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-mod-'));
  // A minimal static ELF64 header (no program headers) stands in for busybox.
  const fake = new Uint8Array(64);
  fake.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  writeFileSync(join(dir, 'busybox'), fake);
  assert.throws(
    () => buildInitramfs({ script: 'true', busybox: join(dir, 'busybox'), modulesDir: dir }),
    /modules\.order not found/,
  );
  writeFileSync(join(dir, 'modules.order'), 'a.ko\n');
  writeFileSync(join(dir, 'a.ko'), 'module');
  const e = readCpio(buildInitramfs({ script: 'uname -r', busybox: join(dir, 'busybox'), modulesDir: dir }));
  const byName = new Map(e.map((x) => [x.name, x]));
  assert.equal(new TextDecoder().decode(byName.get('script')!.data), 'uname -r\n');
  assert.equal(new TextDecoder().decode(byName.get('init')!.data), INIT_SCRIPT);
  assert.equal(new TextDecoder().decode(byName.get('modules/a.ko')!.data), 'module');
  assert.equal(byName.get('dev/console')!.mode, 0o20600);
  assert.match(INIT_SCRIPT, /poweroff -f/);
});

test('config: format linux with initramfs, ${ENV} in kernel paths, and the linux-only options checked', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-cfg-'));
  writeFileSync(join(dir, 'bzImage'), fakeBzImage());
  process.env.TSVMM_TEST_KDIR = dir;
  const c = checkConfig(
    {
      kernel: {
        path: '${TSVMM_TEST_KDIR}/bzImage',
        format: 'linux',
        initramfs: { script: 'uname -r', modules: '${TSVMM_TEST_KDIR}' },
      },
    },
    't',
    '/',
  );
  assert.equal(c.kernel.path, join(dir, 'bzImage'));
  assert.deepEqual(c.kernel.initramfs, { script: 'uname -r', modules: dir });
  delete process.env.TSVMM_TEST_KDIR;
  assert.throws(
    () => checkConfig({ kernel: { path: '${TSVMM_TEST_KDIR}/bzImage' } }, 't', '/'),
    (e: Error) => e instanceof ConfigError && /environment variable TSVMM_TEST_KDIR is not set/.test(e.message),
  );
  assert.throws(
    () =>
      checkConfig(
        { kernel: { path: join(dir, 'bzImage'), initrd: join(dir, 'bzImage'), initramfs: { script: 'x' } } },
        't',
        '/',
      ),
    /either "initrd".*or "initramfs"/,
  );
  assert.throws(
    () =>
      checkConfig(
        { kernel: { path: join(dir, 'bzImage'), format: 'multiboot', initrd: join(dir, 'bzImage') } },
        't',
        '/',
      ),
    /\/kernel\/initrd: .* loads as a multiboot image; an initrd or initramfs needs a Linux bzImage/,
  );
  assert.throws(
    () => checkConfig({ kernel: { path: join(dir, 'bzImage'), initrd: join(dir, 'nope') } }, 't', '/'),
    /\/kernel\/initrd: .* does not exist/,
  );
});

test('configs/linux samples are valid (with a stand-in kernel and modules dir in TSVMM_LINUX_KERNEL/_MODULES)', async () => {
  const { loadConfig } = await import('../../machine/config/config.js');
  const { projectRoot } = await import('../../core/paths.js');
  const { readdirSync } = await import('node:fs');
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-lx-'));
  writeFileSync(join(dir, 'vmlinuz'), fakeBzImage());
  writeFileSync(join(dir, 'modules.order'), '');
  process.env.TSVMM_LINUX_KERNEL = join(dir, 'vmlinuz');
  process.env.TSVMM_LINUX_MODULES = dir;
  try {
    const files = readdirSync(join(projectRoot, 'configs/linux')).filter((f) => f.endsWith('.json'));
    assert.deepEqual(files.sort(), ['linux-e1000e.json', 'linux-nvme-viommu.json', 'linux-nvme.json', 'linux.json']);
    for (const f of files) {
      const c = loadConfig(join(projectRoot, 'configs/linux', f));
      assert.equal(c.kernel.format, 'linux', f);
      assert.ok(c.kernel.initramfs?.script, f);
    }
  } finally {
    delete process.env.TSVMM_LINUX_KERNEL;
    delete process.env.TSVMM_LINUX_MODULES;
  }
});
