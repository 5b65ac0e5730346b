// The virtio-iommu's request path in-process, natively, without a guest or a kernel: the device
// model over the virtio-pci transport (a test driver rings the doorbell through the BAR, as a
// guest's write would arrive), the machine's adapter, VfioViommu with one legacy host group
// behind it and the DMA domains over a memory-API address space. Only the kernel is missing: the
// group's container is a stand-in whose map and unmap do nothing (a real one makes one ioctl each,
// as QEMU does). Requests come as Linux sends them: a 2-buffer chain in an indirect table.
//   pairs  MAP one page, UNMAP it, one doorbell each (strict mode: every 4 KiB read)
//   seq    128 MAPs of scattered pages behind one doorbell, then one UNMAP of the range (a 512 KiB read)
//   first  seq then pairs, twice: the first time runs as a launch's first seconds do (V8's baseline
//          tier while TurboFan compiles the path); the second, warm
// Prints µs per request spent in the doorbell write (the device's work; the driver's is excluded) and
// the process's CPU by thread (V8 compiles on the others). For the baseline tier alone: node --no-opt.
// `taskset -c 0` puts the compiler on the same CPU as the requests, as in the 1-vCPU test host.
//
//   node dist/bench/viommu-inprocess.js [pairs N | seq N | first] [--dist DIR]   (DIR: another build's dist/, to compare)
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { runIfMain } from './entry.js';
import { snapshot } from './vmm.js';
import { req } from '../test/helpers/virtio-iommu-requests.js';

type Mod = Record<string, any>;

const IOVA = 0x1_0000_0000,
  PAGE = 4096,
  MiB = 2 ** 20;
const F_INDIRECT = 1n << 28n,
  F_EVENT_IDX = 1n << 29n,
  F_VERSION_1 = 1n << 32n;

/** CPU ms of this process's main thread and of all its others (bench/vmm.ts's per-thread ticks, USER_HZ). */
function threadCpu(): { main: number; others: number } {
  let main = 0,
    others = 0;
  for (const [k, [user, sys]] of Object.entries(snapshot(process.pid).threadCpu)) {
    const ms = (user + sys) * 10;
    if (Number(k.split(' ')[0]) === process.pid) main += ms;
    else others += ms;
  }
  return { main, others };
}

export async function runInProcess(mode: string, n: number, dist: string): Promise<string[]> {
  const load = (p: string): Promise<Mod> => import(pathToFileURL(resolve(dist, p)).href);
  const [{ VirtioIommu }, driver, memory, { AddressSpaceMemory }, { VfioViommu }, { vfioIommuHost }] =
    await Promise.all([
      load('hw/virtio/iommu.js'),
      load('test/helpers/virtio-driver.js'),
      load('core/memory/index.js'),
      load('hw/virtio/guest-memory.js'),
      load('core/vfio/viommu.js'),
      load('machine/viommu.js'),
    ]);
  const root = memory.MemoryRegion.container('system', 2 ** 40);
  const bytes = new Uint8Array(64 * MiB);
  root.addSubregion(0, memory.MemoryRegion.ram('ram', 64 * MiB, { hostAddr: 0x7f00_0000_0000n, bytes }));
  const space = new memory.AddressSpace('memory', root);
  let hostCalls = 0;
  const container = {
    isolated: true,
    dmaLimit: 65535,
    mappings: new Map(),
    canUnmapAll: true,
    attach() {},
    detach() {},
    mapRaw() {
      hostCalls++;
    },
    unmapRaw(_iova: number, size: number) {
      hostCalls++;
      return size;
    },
    unmapAllRaw() {
      return true;
    },
  };
  const log: string[] = [];
  const viommu = new VfioViommu(space, { log: (l: string) => log.push(l) });
  viommu.addEndpoint(8, {
    host: { name: 'nvme', group: 5 },
    device: {},
    backend: 'legacy',
    group: { container },
    viommu: true,
  });
  const iommu = new VirtioIommu({ host: vfioIommuHost(() => viommu), endpoints: [8] });
  const d = new driver.VirtioTestDriver(iommu, new AddressSpaceMemory(space));
  if (!d.init(F_VERSION_1 | F_EVENT_IDX | F_INDIRECT | iommu.features, 2))
    throw new Error('feature negotiation failed');
  const submit = (r: Uint8Array) => d.submit(0, [{ data: r }, { writeLen: 4 }], { kick: false, indirect: true });
  submit(req.attach(1, 8));
  d.kick(0);
  d.takeUsed(0);
  const map = (iova: number, gpa: number) => req.map(1, iova, iova + PAGE - 1, gpa);
  const unmap = (iova: number, size: number) => req.unmap(1, iova, iova + size - 1);
  let inDevice = 0,
    requests = 0,
    bad = 0;
  const kick = () => {
    const t0 = performance.now();
    d.kick(0);
    inDevice += performance.now() - t0;
    for (const u of d.takeUsed(0)) if (u.len !== 4) bad++;
  };
  const pairs = (count: number) => {
    for (let i = 0; i < count; i++) {
      submit(map(IOVA, 2 * MiB + (i % 4096) * PAGE));
      kick();
      submit(unmap(IOVA, PAGE));
      kick();
      requests += 2;
    }
  };
  const seq = (count: number) => {
    for (let i = 0; i < count; i++) {
      for (let j = 0; j < 128; j++) submit(map(IOVA + j * PAGE, 2 * MiB + ((i * 131 + j * 7) % 8192) * PAGE));
      kick();
      submit(unmap(IOVA, 128 * PAGE));
      kick();
      requests += 129;
    }
  };
  const out: string[] = [];
  const phase = (name: string, f: () => void) => {
    const k0 = inDevice,
      r0 = requests;
    f();
    out.push(`${name}: ${((1000 * (inDevice - k0)) / (requests - r0)).toFixed(2)} µs per request (${requests - r0})`);
  };
  if (mode === 'pairs') phase('pairs', () => pairs(n));
  else if (mode === 'seq') phase('seq', () => seq(n));
  else {
    phase('seq, first', () => seq(120));
    phase('pairs, first', () => pairs(2000));
    phase('seq, warm', () => seq(120));
    phase('pairs, warm', () => pairs(2000));
  }
  const st = iommu.inspect();
  if (iommu.mappings !== 0 || st.refused || bad || log.length)
    throw new Error(
      `requests went wrong: ${iommu.mappings} mappings left, ${st.refused} refused, ${bad} bad answers, log ${log.join('; ')}`,
    );
  const cpu = threadCpu();
  out.push(`host calls ${hostCalls}; CPU: main thread ${cpu.main} ms, other threads ${cpu.others} ms`);
  return out;
}

runIfMain(import.meta.url, 'viommu-inprocess', async () => {
  const a = process.argv.slice(2);
  const at = a.indexOf('--dist');
  const dist = at >= 0 ? a.splice(at, 2)[1]! : new URL('..', import.meta.url).pathname;
  const mode = a[0] ?? 'first';
  if (!['pairs', 'seq', 'first'].includes(mode)) throw new Error(`mode ${mode}: pairs, seq or first`);
  const n = Number(a[1] ?? (mode === 'seq' ? 200 : 20000));
  for (const line of await runInProcess(mode, n, dist)) console.log(line);
});
