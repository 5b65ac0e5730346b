// In-process fuzzer of the virtio-iommu over the virtio-pci transport and its split virtqueue:
// seeded random requests (well-formed ones over a small pool of domains, endpoints and addresses
// so that they meet; then mutated fields, random bytes, short and long buffers) in random
// descriptor layouts (direct, indirect, split across buffers, and corrupted: bad indexes, loops,
// addresses beyond RAM, wrong flags, avail index jumps), with random resets and bypass writes.
// Checked after every request:
//   - nothing escapes as an exception (the guest can only break the device: NEEDS_RESET);
//   - the device's mapping count is the host side's (RecordingIommuHost, a test double of it),
//     and the host side saw no call out of order (violations);
//   - the device's domains are the host's, with the same mapping counts;
//   - after every reset no domain and no mapping is left on either side.
// Random register accesses anywhere in the virtio BAR are mixed in (status, features, queue set-up).
import { VirtioIommu, VIRTIO_IOMMU_T_ATTACH, VIRTIO_IOMMU_T_MAP, VIRTIO_IOMMU_T_UNMAP } from '../../hw/virtio/iommu.js';
import { RecordingIommuHost } from '../../hw/virtio/iommu-host-recording.js';
import { guestEvents } from '../../hw/pci.js';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1 } from '../../hw/virtio/device.js';
import { VirtioTestDriver, RAM_SIZE, type Buf } from './virtio-driver.js';
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../hw/virtio/virtqueue.js';

export interface VirtioIommuFuzzResult {
  requests: number;
  resets: number;
  needsReset: number;
  maxMappings: number;
  violations: string[];
  ms: number;
}

/** xorshift32: fast, and a seed replays exactly. */
class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = (seed ^ 0x9e3779b9) >>> 0 || 1;
  }
  u32(): number {
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (this.s = x >>> 0);
  }
  below(n: number): number {
    return this.u32() % n;
  }
  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.below(xs.length)]!;
  }
  bytes(n: number): Uint8Array {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
}

const ENDPOINTS = [0x08, 0x10, 0x11, 0x18];
const FEATURES = VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC | 0x57n; // the device's five

function request(r: Rng): Uint8Array {
  const type = r.chance(0.05) ? r.below(8) : r.pick([1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 5]);
  const size = r.chance(0.05) ? r.below(90) : ([4, 20, 20, 36, 28, 72][type] ?? 20);
  const b = r.chance(0.03) ? r.bytes(size) : new Uint8Array(size);
  const v = new DataView(b.buffer);
  b[0] = type;
  const put32 = (at: number, x: number) => at + 4 <= size && v.setUint32(at, x >>> 0, true);
  const put64 = (at: number, x: bigint) => at + 8 <= size && v.setBigUint64(at, BigInt.asUintN(64, x), true);
  const domain = r.chance(0.02) ? r.u32() : r.below(4);
  const ep = r.chance(0.05) ? r.u32() & 0xffff : r.pick(ENDPOINTS);
  const page = 0x1000n;
  const iova = () => (r.chance(0.02) ? BigInt(r.u32()) * 2n ** 32n + BigInt(r.u32()) : BigInt(r.below(512)) * page);
  switch (type) {
    case VIRTIO_IOMMU_T_ATTACH:
    case 2:
      put32(4, domain);
      put32(8, ep);
      put32(12, r.chance(0.1) ? r.below(4) : 0);
      break;
    case VIRTIO_IOMMU_T_MAP: {
      const s = iova();
      const n = r.chance(0.05) ? BigInt(r.u32()) : BigInt(1 + r.below(8)) * page - (r.chance(0.03) ? 1n : 0n);
      put32(4, domain);
      put64(8, s);
      put64(16, s + n - 1n);
      put64(24, r.chance(0.03) ? BigInt(r.u32()) * 2n ** 32n : BigInt(r.below(4096)) * page);
      put32(32, r.chance(0.05) ? r.below(16) : 1 + r.below(3));
      break;
    }
    case VIRTIO_IOMMU_T_UNMAP: {
      const s = iova();
      put32(4, domain);
      put64(8, s);
      put64(16, r.chance(0.1) ? 0xffff_ffff_ffff_ffffn : s + BigInt(1 + r.below(16)) * page - 1n);
      break;
    }
    default:
      put32(4, ep);
  }
  return b;
}

/** Splits `data` into 1-3 readable buffers. */
function split(r: Rng, data: Uint8Array): Buf[] {
  if (data.length < 2 || r.chance(0.7)) return [{ data }];
  const cut = 1 + r.below(data.length - 1);
  return [{ data: data.subarray(0, cut) }, { data: data.subarray(cut) }];
}

export function fuzzVirtioIommu(o: {
  seed: number;
  count: number;
  progress?: (n: number) => void;
}): VirtioIommuFuzzResult {
  const r = new Rng(o.seed);
  const res: VirtioIommuFuzzResult = { requests: 0, resets: 0, needsReset: 0, maxMappings: 0, violations: [], ms: 0 };
  const t0 = Date.now();
  const sink = guestEvents.sink;
  guestEvents.sink = () => {};
  const host = new RecordingIommuHost([{ start: 0xfed00000, end: 0xfed00fff }]);
  host.record = false;
  host.maxMappings = 200;
  const iommu = new VirtioIommu({ host, endpoints: ENDPOINTS, maxMappings: 150 });
  const d = new VirtioTestDriver(iommu);
  const violation = (what: string) => {
    if (res.violations.length < 20) res.violations.push(`request ${res.requests}: ${what}`);
  };
  const checkClean = (when: string) => {
    if (host.mappingCount !== 0 || host.domains.size !== 0 || iommu.mappings !== 0)
      violation(
        `${when}: ${host.mappingCount} host mappings, ${host.domains.size} host domains, ${iommu.mappings} device mappings left`,
      );
  };
  const bringUp = () => {
    d.status(0);
    checkClean('after a reset');
    d.init(FEATURES, 2);
  };

  try {
    bringUp();
    for (; res.requests < o.count; res.requests++) {
      if (o.progress && res.requests % 200000 === 0 && res.requests) o.progress(res.requests);
      try {
        const roll = r.below(1000);
        if (roll < 3) {
          d.status(0);
          res.resets++;
          checkClean('after a virtio reset');
          bringUp();
        } else if (roll < 4) {
          d.dev.reset();
          res.resets++;
          checkClean('after a system reset');
          bringUp();
        } else if (roll < 8) {
          d.writeConfig(36, 1, r.below(2));
        } else if (roll < 14) {
          // A register access anywhere in the virtio BAR: status, features, queue set-up, doorbells.
          const size = r.pick([1, 2, 4]);
          const off = r.below(0x3010) & ~(size - 1);
          if (r.chance(0.5)) d.read(off, size);
          else d.write(off, size, r.chance(0.5) ? r.below(16) : r.u32() >>> (32 - 8 * size));
          if (!(d.status() & 4)) {
            // The driver stopped driving the device (status 0 is a reset): what it held is gone.
            if (d.status() === 0) checkClean('after a reset through the status register');
            bringUp();
          }
        } else if (roll < 40) {
          corrupt(r, d);
        } else {
          const req = split(r, request(r));
          const w = r.chance(0.03) ? r.below(8) : req[0]!.data![0] === 5 ? 516 : 4;
          const bufs: Buf[] = [...req, ...(w || r.chance(0.5) ? [{ writeLen: w }] : [])];
          if (r.chance(0.02)) bufs.reverse();
          d.submit(0, bufs, { indirect: r.chance(0.3) });
          d.takeUsed(0);
        }
        if (d.dev.needsResetSet) {
          res.needsReset++;
          d.status(0);
          checkClean('after NEEDS_RESET and a reset');
          bringUp();
        }
      } catch (e) {
        violation(`threw: ${(e as Error).stack ?? String(e)}`);
        bringUp();
      }
      res.maxMappings = Math.max(res.maxMappings, iommu.mappings);
      if (iommu.mappings !== host.mappingCount)
        violation(`device has ${iommu.mappings} mappings, host ${host.mappingCount}`);
      if (host.violations.length) violation(`host side: ${host.violations.splice(0).join('; ')}`);
      const doms = iommu.inspect().domains;
      if (doms.length !== host.domains.size || doms.some((x) => host.domains.get(x.id)?.mappings.size !== x.mappings))
        violation(`domains differ: device ${JSON.stringify(doms)}, host ${[...host.domains.keys()].join(',')}`);
      if (res.violations.length >= 20) break;
    }
    d.status(0);
    checkClean('at the end');
  } finally {
    guestEvents.sink = sink;
  }
  res.ms = Date.now() - t0;
  return res;
}

/** A chain the driver got wrong: random descriptors, flags, indexes, addresses; or a jumping avail idx. */
function corrupt(r: Rng, d: VirtioTestDriver): void {
  const ring = d.ring(0);
  const head = r.below(ring.n + 2);
  const n = 1 + r.below(4);
  for (let i = 0; i < n; i++) {
    const idx = (head + i) % ring.n;
    const addr = r.pick([0x80000, RAM_SIZE - 8, RAM_SIZE, r.u32(), 2 ** 52, ring.desc]);
    const len = r.pick([0, 4, 16, 20, 36, 0xffffffff, r.u32()]);
    const flags = r.below(8) | (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0);
    d.writeDesc(
      ring.desc,
      idx,
      addr,
      len,
      flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_INDIRECT),
      r.chance(0.2) ? r.below(0x10000) : (idx + 1) % ring.n,
    );
  }
  if (r.chance(0.1)) d.w16(ring.avail + 2, r.u32() & 0xffff);
  else d.publish(0, head);
  d.takeUsed(0);
}
