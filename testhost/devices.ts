// The emulated PCI devices the test host can carry, each at a fixed address so BDFs stay stable across runs.
// Device sets (what --devices takes) expand to one or more devices (the map's entries).
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { TestHostError } from './util.js';

export interface DeviceDef {
  /** Key in TSVMM_TESTHOST_DEVICES. */
  name: string;
  /** vendor:device as lspci prints it, checked inside the host. */
  id: string;
  /** Root-bus slot ("03.0"), or "<bridge slot>/<slot behind it>" ("06.0/01.0"). */
  path: string;
  /** Bind to vfio-pci (false for the bridge itself). */
  vfio: boolean;
  qemu: string[];
}

export interface DeviceContext {
  runDir: string;
  /** Env vars for the inner command (e.g. the nvme image path and digest). */
  env: Record<string, string>;
}

interface DeviceSet {
  help: string;
  make(ctx: DeviceContext): DeviceDef[];
}

/** Size of the nvme backing image. */
export const NVME_IMAGE_BYTES = 16 * 2 ** 20;

/**
 * Deterministic nvme image content. Each 512-byte sector n: bytes 0..7 "TSVMMNV1", bytes 8..15 n (u64 LE),
 * byte i (16..511) = (n * 7 + i * 13) & 0xff — a guest can check any sector it reads without the file.
 */
export function nvmePattern(bytes = NVME_IMAGE_BYTES): Buffer {
  const b = Buffer.alloc(bytes);
  for (let n = 0; n * 512 < bytes; n++) {
    const o = n * 512;
    b.write('TSVMMNV1', o, 'latin1');
    b.writeBigUInt64LE(BigInt(n), o + 8);
    for (let i = 16; i < 512; i++) b[o + i] = (n * 7 + i * 13) & 0xff;
  }
  return b;
}

const SETS: Record<string, DeviceSet> = {
  edu: {
    help: 'QEMU edu (1234:11e8) at 00:03.0: MMIO, INTx/MSI, DMA through the IOMMU',
    make: () => [{ name: 'edu', id: '1234:11e8', path: '03.0', vfio: true, qemu: ['-device', 'edu,addr=03.0'] }],
  },
  nvme: {
    help: 'nvme (1b36:0010) at 00:04.0 on a 16 MiB raw image with a known pattern (env TSVMM_TESTHOST_NVME_IMAGE/_SHA256)',
    make: (ctx) => {
      const img = join(ctx.runDir, 'nvme.img');
      const data = nvmePattern();
      writeFileSync(img, data);
      ctx.env.TSVMM_TESTHOST_NVME_IMAGE = img;
      ctx.env.TSVMM_TESTHOST_NVME_SHA256 = createHash('sha256').update(data).digest('hex');
      ctx.env.TSVMM_TESTHOST_NVME_BYTES = String(data.length);
      return [
        {
          name: 'nvme',
          id: '1b36:0010',
          path: '04.0',
          vfio: true,
          qemu: [
            '-drive',
            `if=none,id=nvme0,file=${img},format=raw`,
            '-device',
            'nvme,serial=tsvmm-nvme,drive=nvme0,addr=04.0',
          ],
        },
      ];
    },
  },
  e1000e: {
    help: 'e1000e (8086:10d3) at 00:05.0, MSI-X in its own BAR; backend: isolated user net',
    make: () => [
      {
        name: 'e1000e',
        id: '8086:10d3',
        path: '05.0',
        vfio: true,
        qemu: ['-netdev', 'user,id=net0,restrict=on', '-device', 'e1000e,netdev=net0,mac=52:54:00:12:34:56,addr=05.0'],
      },
    ],
  },
  bridge: {
    help: 'pci-bridge at 00:06.0 with edu (bridge-edu, slot 01.0) and pci-testdev (bridge-testdev, slot 02.0) behind it: one IOMMU group, two devices',
    make: () => [
      {
        name: 'pci-bridge',
        id: '1b36:0001',
        path: '06.0',
        vfio: false,
        qemu: ['-device', 'pci-bridge,id=br0,chassis_nr=1,shpc=off,addr=06.0'],
      },
      {
        name: 'bridge-edu',
        id: '1234:11e8',
        path: '06.0/01.0',
        vfio: true,
        qemu: ['-device', 'edu,bus=br0,addr=01.0'],
      },
      {
        name: 'bridge-testdev',
        id: '1b36:0005',
        path: '06.0/02.0',
        vfio: true,
        qemu: ['-device', 'pci-testdev,bus=br0,addr=02.0'],
      },
    ],
  },
  testdev: {
    help: 'pci-testdev (1b36:0005) at 00:07.0: MMIO and I/O BAR forwarding checks',
    make: () => [
      { name: 'testdev', id: '1b36:0005', path: '07.0', vfio: true, qemu: ['-device', 'pci-testdev,addr=07.0'] },
    ],
  },
  ivshmem: {
    help: 'ivshmem-plain (1af4:1110) at 00:08.0 on a 1 MiB shared file (env TSVMM_TESTHOST_IVSHMEM_PATH)',
    make: (ctx) => {
      const file = join(ctx.runDir, 'ivshmem.bin');
      writeFileSync(file, Buffer.alloc(2 ** 20));
      ctx.env.TSVMM_TESTHOST_IVSHMEM_PATH = file;
      return [
        {
          name: 'ivshmem',
          id: '1af4:1110',
          path: '08.0',
          vfio: true,
          qemu: [
            '-object',
            `memory-backend-file,id=ivshm0,share=on,mem-path=${file},size=1M`,
            '-device',
            'ivshmem-plain,memdev=ivshm0,addr=08.0',
          ],
        },
      ];
    },
  },
};

export const DEVICE_SETS = Object.keys(SETS);
export const DEFAULT_DEVICES = ['edu', 'nvme', 'e1000e', 'bridge'];

export function deviceHelp(): string {
  return DEVICE_SETS.map((n) => `  ${n.padEnd(8)} ${SETS[n]!.help}`).join('\n');
}

/** Accepts ["edu,nvme", "bridge"] or ["all"]; throws listing the valid names on a typo. */
export function parseDeviceSets(list: string[]): string[] {
  const names = list
    .flatMap((s) => s.split(','))
    .map((s) => s.trim())
    .filter(Boolean);
  if (names.includes('all')) return DEVICE_SETS;
  if (names.includes('none')) return [];
  const bad = names.filter((n) => !SETS[n]);
  if (bad.length)
    throw new TestHostError(
      `unknown test-host device${bad.length > 1 ? 's' : ''} ${bad.map((b) => `'${b}'`).join(', ')}; valid: ${DEVICE_SETS.join(', ')}, all, none`,
    );
  return [...new Set(names)];
}

export function buildDevices(sets: string[], ctx: DeviceContext): DeviceDef[] {
  return parseDeviceSets(sets).flatMap((s) => SETS[s]!.make(ctx));
}

/** One line per device for the host's /init: "name path vendor:device vfio(0|1)". */
export function devicesConf(devs: DeviceDef[]): string {
  return devs.map((d) => `${d.name} ${d.path} ${d.id} ${d.vfio ? 1 : 0}\n`).join('');
}

/** What TSVMM_TESTHOST_DEVICES holds, per device. */
export interface HostDevice {
  bdf: string;
  id: string;
  /** IOMMU group number, or null if the device has none. */
  group: number | null;
  /** Bound driver ("vfio-pci"), or null. */
  driver: string | null;
  /** /dev/vfio/<group> when bound to vfio-pci. */
  vfioGroup: string | null;
  /** /dev/vfio/devices/vfioN (iommufd kernel: VFIO cdev), or null. */
  vfioCdev: string | null;
}
