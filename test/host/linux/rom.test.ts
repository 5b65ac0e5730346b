// Runs INSIDE the test host: the expansion ROM through the ROM BAR. A Linux guest reads its
// device's ROM from sysfs (Linux enables the ROM BAR, maps it and reads the images), which tsvmm
// serves from VFIO's ROM region or from a romfile; the bytes match the source.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { hostDevice } from '../../helpers/testhost-env.js';
import { describe, sampleConfig, tsvmmRun } from '../../helpers/linux.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** A guest script that prints "rom: <sha256> <bytes>" for the device vendor:device. */
const readRom = (vendor: string, device: string) =>
  [
    'for d in /sys/bus/pci/devices/*; do',
    `  if [ "$(cat $d/vendor)" = ${vendor} ] && [ "$(cat $d/device)" = ${device} ]; then`,
    '    if [ -e $d/rom ]; then echo 1 > $d/rom; echo "rom: $(sha256sum < $d/rom | cut -d" " -f1) $(wc -c < $d/rom)"; echo 0 > $d/rom; else echo "rom: none"; fi',
    '  fi',
    'done',
  ].join('\n');

/** The host's own view of a device's ROM (sysfs, as the guest reads it). */
function hostRom(bdf: string): Buffer {
  const f = `/sys/bus/pci/devices/${bdf}/rom`;
  writeFileSync(f, '1');
  try {
    return readFileSync(f);
  } finally {
    writeFileSync(f, '0');
  }
}

test(
  "e1000e's option ROM: the guest reads the same bytes through the ROM BAR as the host reads from the device",
  { timeout: 240_000 },
  async () => {
    const e = hostDevice('e1000e');
    const rom = hostRom(e.bdf);
    assert.ok(rom.length > 0, `the test host's e1000e has no ROM to compare with (${e.bdf})`);
    const r = await tsvmmRun(
      sampleConfig('linux-e1000e', (c) => {
        c.kernel.initramfs.script = readRom('0x8086', '0x10d3');
      }),
    );
    assert.equal(r.code, 0, describe(r));
    const m = /^rom: ([0-9a-f]{64}) (\d+)$/m.exec(r.stdout);
    assert.ok(m, `the guest found no ROM\n${describe(r)}`);
    assert.equal(Number(m[2]), rom.length, 'same length');
    assert.equal(m[1], sha(rom), 'same bytes');
  },
);

test('romfile gives edu (which has no ROM) one; rombar=false hides the ROM', { timeout: 240_000 }, async () => {
  const edu = hostDevice('edu');
  // A valid one-image PCI ROM (Linux checks the 0xaa55 and PCIR signatures and the image length).
  const img = Buffer.alloc(4096);
  for (let i = 0; i < img.length; i++) img[i] = (i * 13 + 5) & 0xff;
  img.writeUInt16LE(0xaa55, 0);
  img[2] = img.length / 512;
  img.writeUInt16LE(0x1c, 0x18);
  img.write('PCIR', 0x1c, 'latin1');
  img.writeUInt16LE(0x1234, 0x1c + 4);
  img.writeUInt16LE(0x11e8, 0x1c + 6);
  img.writeUInt16LE(0x18, 0x1c + 0xa); // PCIR length
  img.writeUInt16LE(img.length / 512, 0x1c + 0x10);
  img[0x1c + 0x15] = 0x80; // last image
  const file = join(process.env.TSVMM_TESTHOST_RUN_DIR!, `edu-rom-${process.pid}.bin`);
  writeFileSync(file, img);
  const r = await tsvmmRun(
    sampleConfig('linux-nvme', (c) => {
      c.devices = [{ type: 'vfio-pci', id: 'edu', host: edu.bdf, romfile: file }];
      c.kernel.initramfs.script = readRom('0x1234', '0x11e8');
    }),
  );
  assert.equal(r.code, 0, describe(r));
  assert.match(r.stdout, new RegExp(`^rom: ${sha(img)} ${img.length}$`, 'm'), describe(r));

  const hidden = await tsvmmRun(
    sampleConfig('linux-e1000e', (c) => {
      c.devices[0].rombar = false;
      c.kernel.initramfs.script = readRom('0x8086', '0x10d3');
    }),
  );
  assert.equal(hidden.code, 0, describe(hidden));
  assert.match(hidden.stdout, /^rom: none$/m, describe(hidden));
});
