// `tsvmm validate` runs every check that needs no KVM and no host device, and `tsvmm run` runs the
// same ones first: each bad config below exits 2 from both, with the JSON pointer and the fix.
// (run stops at the config: no /dev/kvm is needed for these.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectRoot } from '../../core/paths.js';
import { guestPaths } from '../../guest/index.js';
import { fakeBzImage, fakeMultibootElf } from '../helpers/images.js';
import { MULTIBOOT_INFO_ADDR } from '../../machine/board.js';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-validate-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const cli = join(projectRoot, 'dist/bin/tsvmm.cjs');
const MiB = 2 ** 20;

const file = (name: string, data: Uint8Array | string) => {
  writeFileSync(join(dir, name), data);
  return join(dir, name);
};
const elf = join(dir, 'guest.elf');
copyFileSync(guestPaths().elf, elf);

function both(
  name: string,
  config: object,
): { validate: ReturnType<typeof spawnSync>; run: ReturnType<typeof spawnSync> } {
  const cfg = file(`${name}.json`, JSON.stringify(config));
  return {
    validate: spawnSync(process.execPath, [cli, 'validate', cfg], { encoding: 'utf8' }),
    run: spawnSync(process.execPath, [cli, 'run', cfg], { encoding: 'utf8', timeout: 20000 }),
  };
}

function refused(name: string, config: object, ...patterns: RegExp[]): void {
  const r = both(name, config);
  for (const [cmd, p] of Object.entries(r)) {
    assert.equal(p.status, 2, `${cmd} ${name}: exit ${p.status}\n${String(p.stderr)}`);
    assert.match(String(p.stderr), /invalid configuration/, `${cmd} ${name}`);
    for (const re of patterns) assert.match(String(p.stderr), re, `${cmd} ${name}`);
  }
}

const vfio = (extra: object) => ({ type: 'vfio-pci', ...extra });

test('validate: duplicate device ids (explicit, and an explicit one equal to a default)', () => {
  refused(
    'dup-id',
    { kernel: { path: elf }, devices: [vfio({ id: 'a', host: '00:03.0' }), vfio({ id: 'a', host: '00:04.0' })] },
    /\/devices\/1\/id: id "a" is also the id of \/devices\/0: give each device its own "id"/,
  );
  refused(
    'dup-default-id',
    { kernel: { path: elf }, devices: [vfio({ host: '00:03.0' }), vfio({ id: 'vfio0', host: '00:04.0' })] },
    /\/devices\/1\/id: id "vfio0" is also the id of \/devices\/0/,
  );
});

test('validate: the same host device twice, however it is spelled', () => {
  refused(
    'dup-host',
    { kernel: { path: elf }, devices: [vfio({ host: '00:03.0' }), vfio({ host: '0000:00:03.0' })] },
    /\/devices\/1: 0000:00:03\.0 is already assigned by \/devices\/0: a host device can be assigned once; remove one of them/,
  );
  refused(
    'dup-sysfs',
    {
      kernel: { path: elf },
      devices: [vfio({ host: '0000:00:03.0' }), vfio({ sysfsdev: '/sys/bus/pci/devices/0000:00:03.0/' })],
    },
    /\/devices\/1: 0000:00:03\.0 is already assigned by \/devices\/0/,
  );
});

test('validate: more devices than PCI slots', () => {
  const devices = Array.from({ length: 32 }, (_, i) => vfio({ host: `0000:01:${i.toString(16).padStart(2, '0')}.0` }));
  refused(
    'slots',
    { kernel: { path: elf }, devices },
    /\/devices: 32 devices, but the PCI bus has 31 slots for them \(1-31; slot 0 is the host bridge\): remove 1/,
  );
});

test('validate: an empty kernel file', () => {
  refused(
    'empty',
    { kernel: { path: file('empty.bin', '') } },
    /\/kernel\/path: .*empty\.bin is empty \(0 bytes\): tsvmm boots a multiboot ELF32 kernel, a Linux bzImage, or a raw binary with "format": "flat"/,
  );
});

test('validate: a garbage image, and an ELF without a multiboot header', () => {
  refused(
    'garbage',
    { kernel: { path: file('garbage.img', 'this is not a kernel at all') } },
    /\/kernel\/path: .*garbage\.img is neither a multiboot ELF nor a Linux bzImage \(it starts 74 68 69 73\): if it is a raw binary to run at loadAddress, set "format": "flat"/,
  );
  const vmlinux = fakeMultibootElf(MiB);
  vmlinux.fill(0, 84); // no multiboot header
  refused(
    'vmlinux',
    { kernel: { path: file('vmlinux', vmlinux) } },
    /\/kernel\/path: .*vmlinux is an ELF file without a multiboot header/,
  );
  refused(
    'not-multiboot',
    { kernel: { path: file('raw.bin', 'xyz'), format: 'multiboot' } },
    /\/kernel\/path: .*raw\.bin is not an ELF file: multiboot images must be ELF32/,
  );
  refused(
    'not-linux',
    { kernel: { path: elf, format: 'linux' } },
    /\/kernel: .*guest\.elf: not a bzImage \(no "HdrS" boot protocol header at 0x202\): this is an ELF file/,
  );
});

test('validate: a flat image loaded beyond RAM, over the boot information, or entered outside RAM', () => {
  const img = file('big.bin', new Uint8Array(3 * MiB));
  refused(
    'flat-beyond',
    { memory: 2, kernel: { path: img, format: 'flat' } },
    /\/kernel\/loadAddress: .*big\.bin \(3145728 bytes\) at 0x100000 ends at 0x400000, beyond the VM's 2 MiB of RAM below 3 GiB: give the VM more memory or load it lower/,
  );
  refused(
    'flat-high',
    { memory: 64, kernel: { path: file('small.bin', 'ab'), format: 'flat', loadAddress: 64 * MiB } },
    /ends at 0x4000002, beyond the VM's 64 MiB/,
  );
  refused(
    'flat-info',
    { memory: 64, kernel: { path: file('low.bin', new Uint8Array(0x2000)), format: 'flat', loadAddress: 0x8000 } },
    new RegExp(
      `/kernel/loadAddress: 8192 bytes at 0x8000 overlap the boot information at 0x${MULTIBOOT_INFO_ADDR.toString(16)}: load at 0x100000 or above`,
    ),
  );
  refused(
    'flat-entry',
    { memory: 64, kernel: { path: file('e.bin', 'ab'), format: 'flat', entry: 128 * MiB } },
    /\/kernel\/entry: 0x8000000 is not in RAM/,
  );
});

test('validate: a kernel bigger than RAM (multiboot segment, Linux init_size, Linux + initrd)', () => {
  refused(
    'mb-beyond',
    { memory: 64, kernel: { path: file('high.elf', fakeMultibootElf(100 * MiB)) } },
    /\/kernel\/path: .*high\.elf: segment 0 at 0x6400000 \(\+0x60\) does not fit in 64 MiB of RAM: give the VM more memory/,
  );
  refused(
    'linux-big',
    { memory: 16, kernel: { path: file('bz', fakeBzImage({ initSize: 64 * MiB })), format: 'linux' } },
    /\/kernel: .*bz: the kernel needs RAM up to 80\.0 MiB .*, but the VM has 16\.0 MiB below 4 GiB: give it more memory \(at least 96M\)/,
  );
  refused(
    'linux-initrd',
    { memory: 24, kernel: { path: file('bz2', fakeBzImage()), initrd: file('initrd', new Uint8Array(8 * MiB)) } },
    /\/kernel: .*bz2: the kernel needs RAM up to 18\.0 MiB .* plus 8\.0 MiB of initrd .*give it more memory \(at least 42M\)/,
  );
});

test('validate: an initrd with a multiboot kernel, and an empty initrd', () => {
  refused(
    'mb-initrd',
    { kernel: { path: elf, initrd: file('i.cpio', 'x') } },
    /\/kernel\/initrd: .*guest\.elf is a multiboot image; an initrd or initramfs needs a Linux bzImage: remove it \(or boot a bzImage\)/,
  );
  refused(
    'flat-initramfs',
    { kernel: { path: file('f.bin', 'ab'), format: 'flat', initramfs: { script: 'true' } } },
    /\/kernel\/initramfs: .*f\.bin loads as a flat image; an initrd or initramfs needs a Linux bzImage/,
  );
  refused(
    'empty-initrd',
    { memory: 64, kernel: { path: file('bz3', fakeBzImage()), initrd: file('e.cpio', '') } },
    /\/kernel\/initrd: .*e\.cpio is empty \(0 bytes\)/,
  );
});

test('validate: good configs pass (samples, a Linux kernel with an initrd, a flat image that fits)', () => {
  for (const c of ['demo.json', 'demo-flat.json', 'edu-vfio.json', 'edu-iommufd.json', 'nvme-msix.json']) {
    const r = spawnSync(process.execPath, [cli, 'validate', join(projectRoot, 'configs', c)], { encoding: 'utf8' });
    assert.equal(r.status, 0, `${c}: ${r.stderr}`);
  }
  const ok = file(
    'ok.json',
    JSON.stringify({
      memory: 64,
      kernel: { path: file('bz4', fakeBzImage()), initrd: file('ok.cpio', 'x') },
      devices: [
        vfio({ host: '00:03.0' }),
        vfio({ sysfsdev: '/sys/bus/pci/devices/0000:00:04.0' }),
        vfio({ id: 'x', cdev: '/dev/vfio/devices/vfio3' }),
      ],
    }),
  );
  const r = spawnSync(process.execPath, [cli, 'validate', ok], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /valid \(tsvmm: 64 MiB, 1 vCPU, 3 device\(s\)\)/);
});

test('validate: a bzImage is checked from its setup header (a 4 MiB one passes; a truncated one is refused); a multiboot image past 256 KiB is checked whole', () => {
  const big = file(
    'big.json',
    JSON.stringify({ memory: 64, kernel: { path: file('bz-big', fakeBzImage({ kernelBytes: 4 * MiB })) } }),
  );
  const r = spawnSync(process.execPath, [cli, 'validate', big], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const cut = fakeBzImage().slice(0, 0x300); // the header says 4 setup sectors: the kernel would start at 0xa00
  refused(
    'bz-cut',
    { memory: 64, kernel: { path: file('bz-cut', cut), format: 'linux' } },
    /\/kernel: .*bz-cut: truncated/,
  );
  // A multiboot segment that lies past 256 KiB of the file: the loader's checks read it.
  const mb = new Uint8Array(300 * 1024);
  mb.set(fakeMultibootElf(100 * MiB));
  refused(
    'mb-big-beyond',
    { memory: 64, kernel: { path: file('big.elf', mb) } },
    /\/kernel\/path: .*big\.elf: segment 0 at 0x6400000 .*does not fit in 64 MiB of RAM/,
  );
});
