// Synthetic guest images for tests of the loaders and of `tsvmm validate`.

const MiB = 2 ** 20;

/** A synthetic bzImage: 4 setup sectors + a "kernel" of `kernelBytes`, with a 2.15 header. */
export function fakeBzImage(
  o: { version?: number; xloadflags?: number; loadflags?: number; initSize?: number; kernelBytes?: number } = {},
): Uint8Array {
  const img = new Uint8Array(5 * 512 + (o.kernelBytes ?? 4096));
  const v = new DataView(img.buffer);
  img[0x1f1] = 4;
  v.setUint16(0x1fe, 0xaa55, true);
  img[0x200] = 0xeb;
  img[0x201] = 0x6a; // jmp: header ends at 0x26c
  v.setUint32(0x202, 0x53726448, true);
  v.setUint16(0x206, o.version ?? 0x020f, true);
  img[0x211] = o.loadflags ?? 0x01;
  v.setUint32(0x22c, 0x7fffffff, true);
  v.setUint16(0x236, o.xloadflags ?? 0x7f, true);
  v.setUint32(0x238, 2047, true);
  v.setBigUint64(0x258, 0x1000000n, true);
  v.setUint32(0x260, o.initSize ?? 2 * MiB, true);
  for (let i = 5 * 512; i < img.length; i++) img[i] = i & 0xff;
  return img;
}

/** A minimal multiboot ELF32: one PT_LOAD segment of `memsz` bytes at `paddr`, the header after it. */
export function fakeMultibootElf(paddr: number, memsz = 96): Uint8Array {
  const img = new Uint8Array(96);
  const v = new DataView(img.buffer);
  img.set([0x7f, 0x45, 0x4c, 0x46, 1, 1, 1]);
  v.setUint16(16, 2, true);
  v.setUint16(18, 3, true);
  v.setUint32(20, 1, true);
  v.setUint32(24, paddr, true);
  v.setUint32(28, 52, true);
  v.setUint16(40, 52, true);
  v.setUint16(42, 32, true);
  v.setUint16(44, 1, true);
  v.setUint32(52, 1, true);
  v.setUint32(56, 0, true);
  v.setUint32(60, paddr, true);
  v.setUint32(64, paddr, true);
  v.setUint32(68, 96, true);
  v.setUint32(72, memsz, true);
  v.setUint32(76, 5, true);
  v.setUint32(84, 0x1badb002, true);
  v.setUint32(88, 0, true);
  v.setUint32(92, -0x1badb002 >>> 0, true);
  return img;
}
