// Multiboot entry state on /dev/kvm: the flat GDT QEMU's loader and GRUB leave loaded (a guest
// that reloads its segments or takes an interrupt before installing its own GDT must not
// triple-fault), and an ELF without a multiboot header refused with a message.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createVm } from '../../lib/index.js';
import { Machine } from '../../machine/machine.js';
import { ConfigError, checkConfig } from '../../machine/config/config.js';
import { LoaderError } from '../../machine/loader/multiboot.js';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-mb-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

const le16 = (v: number) => [v & 0xff, (v >> 8) & 0xff];
const le32 = (v: number) => [v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >>> 24) & 0xff];
const LOAD = 0x100000,
  CODE = 96;

/** Reloads DS/ES/SS and CS from the loader's GDT, installs an IDT whose gate for vector 0x80
 *  uses selector 0x08, and takes `int 0x80`: the handler exits 42 through port 0xf4. */
function code(): number[] {
  const head = (after: number) => [
    0x66,
    0xb8,
    0x10,
    0x00,
    0x8e,
    0xd8,
    0x8e,
    0xc0,
    0x8e,
    0xd0, // mov ax,0x10; mov ds/es/ss,ax
    0xbc,
    ...le32(0x80000), // mov esp,0x80000
    0xea,
    ...le32(after),
    ...le16(0x08), // ljmp 0x08:after
  ];
  const headLen = head(0).length;
  const mid = (handler: number) => [
    0xc7,
    0x05,
    ...le32(0xa00),
    ...le32(((0x08 << 16) | (handler & 0xffff)) >>> 0), // gate 0x80, low half
    0xc7,
    0x05,
    ...le32(0xa04),
    ...le32(((handler & 0xffff0000) | 0x8e00) >>> 0), // present, 32-bit interrupt gate
    0x66,
    0xc7,
    0x05,
    ...le32(0x5f0),
    ...le16(0x7ff), // IDTR limit
    0xc7,
    0x05,
    ...le32(0x5f2),
    ...le32(0x600), // IDTR base
    0x0f,
    0x01,
    0x1d,
    ...le32(0x5f0), // lidt [0x5f0]
    0xcd,
    0x80, // int 0x80
    0xb8,
    ...le32(1),
    0xe7,
    0xf4,
    0xf4, // (not reached) exit 1
  ];
  const start = LOAD + CODE;
  const handler = start + headLen + mid(0).length;
  return [...head(start + headLen), ...mid(handler), 0xb8, ...le32(42), 0xe7, 0xf4, 0xf4];
}

function elf32(withMultiboot: boolean): string {
  const body = code();
  const size = CODE + body.length;
  const f = new Uint8Array(size);
  f.set([0x7f, 0x45, 0x4c, 0x46, 1, 1, 1], 0);
  f.set(
    [
      ...le16(2),
      ...le16(3),
      ...le32(1),
      ...le32(LOAD + CODE),
      ...le32(52),
      ...le32(0),
      ...le32(0),
      ...le16(52),
      ...le16(32),
      ...le16(1),
      ...le16(40),
      ...le16(0),
      ...le16(0),
    ],
    16,
  );
  f.set(
    [...le32(1), ...le32(0), ...le32(LOAD), ...le32(LOAD), ...le32(size), ...le32(size), ...le32(7), ...le32(0x1000)],
    52,
  );
  if (withMultiboot) f.set([...le32(0x1badb002), ...le32(0), ...le32(-0x1badb002 >>> 0)], 84);
  f.set(body, CODE);
  const p = join(dir, withMultiboot ? 'mb.elf' : 'plain.elf');
  writeFileSync(p, f);
  return p;
}

test('multiboot entry: a flat GDT is loaded (segments reload, an interrupt through selector 0x08 works)', async () => {
  await using vm = await createVm({ memory: 16, kernel: { path: elf32(true) } });
  vm.start();
  const r = await vm.waitForExit({ timeoutMs: 10000 });
  assert.equal(r.status, 42, `${r.reason}\n${vm.serial}`);
});

test('an ELF without a multiboot header is refused with a message, not run from its first byte', () => {
  // validate (and run, before anything starts) refuses it as a config problem…
  assert.throws(
    () => checkConfig({ memory: 16, kernel: { path: elf32(false) } }, 'test', dir),
    (e: unknown) =>
      e instanceof ConfigError &&
      /plain\.elf is an ELF file without a multiboot header .*"format": "flat"/.test(e.message),
  );
  // …and the loader itself refuses it too, whoever builds the machine.
  const ok = checkConfig({ memory: 16, kernel: { path: elf32(true) } }, 'test', dir);
  const cfg = { ...ok, kernel: { ...ok.kernel, path: elf32(false) } };
  assert.throws(
    () => new Machine(cfg),
    (e: unknown) => {
      assert.ok(e instanceof LoaderError, String(e));
      assert.match(
        e.message,
        /plain\.elf: an ELF file without a multiboot header .*add a multiboot header, or set kernel\.format to "flat"/,
      );
      return true;
    },
  );
});
