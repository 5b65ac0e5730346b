// Guest RAM: the host memory behind a VM's RAM, as the config's `memory.backing` asks (QEMU's
// memory backends): anonymous private memory (the default, as QEMU's -m, with MADV_HUGEPAGE so
// transparent huge pages back it), a memfd (shareable by fd; shmem THP where the host enables it,
// or hugetlb pages), or a file on a hugetlbfs mount. What the host cannot give is a
// RamBackingError (a config error: exit 2) with the fix, found before anything is mapped.
// JS reaches the memory through views of at most 1 GiB (V8 cannot hold one over 4 GiB).
import {
  closeSync,
  existsSync,
  ftruncateSync,
  openSync,
  readFileSync,
  statSync,
  statfsSync,
  unlinkSync,
} from 'node:fs';
import { availableParallelism } from 'node:os';
import type { Worker } from 'node:worker_threads';
import {
  native,
  ADDON_PATH,
  isSyscallError,
  PROT_READ,
  PROT_WRITE,
  MAP_SHARED,
  MAP_PRIVATE,
  MAP_ANONYMOUS,
  MAP_NORESERVE,
  MAP_HUGETLB,
  MAP_HUGE_SHIFT,
  MFD_CLOEXEC,
  MFD_HUGETLB,
  MADV_HUGEPAGE,
  MADV_DONTFORK,
  MADV_POPULATE_WRITE,
} from './native.js';
import { ConfigError } from './errors.js';
import type { RamChunks } from './memory/index.js';

/** Guest RAM as the config asks for it (machine/config normalises `memory` to this). */
export type RamBackend = 'anonymous' | 'memfd' | 'hugetlbfs';
export interface MemoryConfig {
  size: number;
  backing: RamBackend;
  /** thp: transparent huge pages required; 2M/1G: hugetlb pages; absent: THP where the host has it. */
  hugepages?: 'thp' | '2M' | '1G';
  /** hugetlbfs: the mount. */
  path?: string;
  prealloc: boolean;
}

/** JS views of guest RAM are this big (a power of two, so no aligned access straddles two). */
export const RAM_VIEW_CHUNK = 2 ** 30;
const HUGETLBFS_MAGIC = 0x958458f6;
const RESIDENT_HEADROOM = 256 * 2 ** 20;
const THP = '/sys/kernel/mm/transparent_hugepage';

/** A backing the host cannot give: one line, and the fix; exits 2 like any config error. */
export class RamBackingError extends ConfigError {
  constructor(problem: string, fix: string) {
    super('memory', [problem], { fix });
    this.message = `/memory: ${problem}`;
  }
}

const mib = (n: number) =>
  n >= 2 ** 30 && n % 2 ** 30 === 0 ? `${n / 2 ** 30} GiB` : `${Math.round(n / 2 ** 20)} MiB`;

/** The bracketed choice of a sysfs THP setting ('always [madvise] never' → 'madvise'), or undefined. */
export function thpMode(file: 'enabled' | 'shmem_enabled'): string | undefined {
  try {
    return /\[(\w+)\]/.exec(readFileSync(`${THP}/${file}`, 'utf8'))?.[1];
  } catch {
    return undefined;
  }
}

function meminfo(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of readFileSync('/proc/meminfo', 'utf8').matchAll(/^(\w+):\s+(\d+) kB$/gm))
    out[m[1]!] = Number(m[2]) * 1024;
  return out;
}

function hugePageDir(page: number): string {
  return `/sys/kernel/mm/hugepages/hugepages-${page / 1024}kB`;
}
function readNum(path: string): number {
  return Number(readFileSync(path, 'utf8').trim());
}

export interface RamPlan {
  /** Page size of the backing when hugetlb (2 MiB or 1 GiB), else undefined. */
  hugetlbPage: number | undefined;
  /** Transparent huge pages asked for with MADV_HUGEPAGE (anonymous or memfd). */
  thp: boolean;
  /** hugetlbfs: the mount. */
  path: string | undefined;
  /** What the VM gets, in words (progress lines, bench notes). */
  describe: string;
  /** A stated fallback: the VM runs, but slower than the user may expect. */
  note: string | undefined;
}

/**
 * Host checks for a RAM config, before anything is mapped: size against the host's memory (all
 * of it resident when `resident`: pinned for device assignment or preallocated), huge pages
 * reserved, the hugetlbfs mount, transparent huge pages when asked for.
 */
export function planRam(cfg: MemoryConfig, opts: { resident: boolean }): RamPlan {
  const mi = meminfo();
  const total = mi.MemTotal ?? Infinity,
    avail = mi.MemAvailable ?? total;
  if (cfg.size > total + (mi.SwapTotal ?? 0)) {
    throw new RamBackingError(
      `${mib(cfg.size)} of guest RAM is more than this host has (${mib(total)} of RAM${mi.SwapTotal ? ` + ${mib(mi.SwapTotal)} swap` : ''})`,
      'give the VM less memory',
    );
  }
  // Resident RAM (pinned or preallocated) must leave the host some room: the VMM's own memory,
  // page tables, and the rest of the system; else the OOM killer ends it half-way through.
  if (opts.resident && cfg.size > avail - RESIDENT_HEADROOM) {
    throw new RamBackingError(
      `${mib(cfg.size)} of guest RAM must be resident (${cfg.prealloc ? 'prealloc' : 'pinned for device assignment'}), but the host has ${mib(avail)} available (MemAvailable), and tsvmm keeps ${mib(RESIDENT_HEADROOM)} of it for itself and the host`,
      'give the VM less memory or free memory on the host',
    );
  }
  const huge = cfg.hugepages === '2M' ? 2 ** 21 : cfg.hugepages === '1G' ? 2 ** 30 : undefined;
  let hugetlbPage = huge;
  let path: string | undefined;
  if (cfg.backing === 'hugetlbfs') {
    path = cfg.path ?? '/dev/hugepages';
    if (!existsSync(path))
      throw new RamBackingError(
        `hugetlbfs mount ${path} does not exist`,
        `mount one (mkdir -p ${path} && mount -t hugetlbfs${huge ? ` -o pagesize=${cfg.hugepages}` : ''} none ${path}) or name it in memory.path`,
      );
    if (!statSync(path).isDirectory())
      throw new RamBackingError(
        `hugetlbfs mount ${path} is not a directory`,
        'name a hugetlbfs mount point in memory.path',
      );
    const fs = statfsSync(path);
    if (fs.type !== HUGETLBFS_MAGIC)
      throw new RamBackingError(
        `${path} is not a hugetlbfs mount`,
        `mount one there (mount -t hugetlbfs none ${path}) or name one in memory.path`,
      );
    if (huge && fs.bsize !== huge)
      throw new RamBackingError(
        `${path} has ${mib(fs.bsize)} pages, not the ${cfg.hugepages} memory.hugepages asks for`,
        `mount one with -o pagesize=${cfg.hugepages} or change memory.hugepages`,
      );
    hugetlbPage = fs.bsize;
  }
  if (hugetlbPage !== undefined) {
    const name = hugetlbPage === 2 ** 30 ? '1G' : hugetlbPage === 2 ** 21 ? '2M' : mib(hugetlbPage);
    if (cfg.size % hugetlbPage)
      throw new RamBackingError(
        `${mib(cfg.size)} is not a multiple of the ${name} huge page`,
        `make memory.size a multiple of ${name}`,
      );
    const dir = hugePageDir(hugetlbPage);
    if (!existsSync(dir))
      throw new RamBackingError(
        `this host has no ${name} huge pages (no ${dir})`,
        `use ${name === '1G' ? '"2M"' : 'another page size'} or a CPU/kernel that has them`,
      );
    const need = cfg.size / hugetlbPage;
    const free = readNum(`${dir}/free_hugepages`) - readNum(`${dir}/resv_hugepages`);
    if (need > free) {
      const nr = readNum(`${dir}/nr_hugepages`);
      throw new RamBackingError(
        `${mib(cfg.size)} of guest RAM needs ${need} free ${name} huge pages, but ${Math.max(free, 0)} of ${nr} reserved are free`,
        `reserve them (echo ${nr + need - Math.max(free, 0)} > ${dir}/nr_hugepages, as root${name === '1G' ? '; 1G pages are best reserved at boot: hugepagesz=1G hugepages=N' : ''})`,
      );
    }
  }
  // Transparent huge pages: anonymous memory follows `enabled`, a memfd follows `shmem_enabled`.
  let thp = false,
    note: string | undefined;
  if (hugetlbPage === undefined) {
    const file = cfg.backing === 'memfd' ? 'shmem_enabled' : 'enabled';
    const mode = thpMode(file);
    thp = mode !== undefined && mode !== 'never' && mode !== 'deny';
    if (!thp) {
      const fix = cfg.backing === 'memfd' ? `echo advise > ${THP}/shmem_enabled` : `echo madvise > ${THP}/enabled`;
      if (cfg.hugepages === 'thp')
        throw new RamBackingError(
          `memory.hugepages "thp" asks for transparent huge pages, but ${THP}/${file} is ${mode ?? 'missing'}`,
          `${fix} (as root), or use hugetlb pages ("2M"/"1G")`,
        );
      note = `guest RAM gets 4 KiB pages (${THP}/${file} is ${mode ?? 'missing'}): pinning it for DMA is slower (${fix}, as root, gives it huge pages; or use hugetlb pages: memory.hugepages "2M")`;
    }
  }
  const what =
    hugetlbPage !== undefined
      ? `${mib(hugetlbPage).replace(' MiB', 'M').replace(' GiB', 'G')} hugetlb pages`
      : thp
        ? 'transparent huge pages'
        : '4 KiB pages';
  return {
    hugetlbPage,
    thp,
    path,
    note,
    describe: `${cfg.backing}${cfg.backing === 'hugetlbfs' ? ` ${path}` : ''}, ${what}`,
  };
}

/** Host memory for guest RAM: one mapping of `size` bytes at `hostAddr`, viewed in chunks. */
export class GuestRam {
  readonly hostAddr: bigint;
  /** memfd or hugetlbfs file; undefined for anonymous memory. */
  readonly fd: number | undefined;
  private readonly views: Uint8Array[] = [];
  private closed = false;

  private constructor(
    readonly size: number,
    readonly plan: RamPlan,
    hostAddr: bigint,
    fd: number | undefined,
  ) {
    this.hostAddr = hostAddr;
    this.fd = fd;
  }

  /** Checks (planRam), then maps the RAM. Nothing is left mapped or open when it throws. */
  static create(cfg: MemoryConfig, name: string, opts: { resident: boolean }): GuestRam {
    const plan = planRam(cfg, opts);
    const n = native();
    const page = plan.hugetlbPage;
    const hugeFlag = page !== undefined ? Math.log2(page) << MAP_HUGE_SHIFT : 0;
    let fd: number | undefined;
    let addr: bigint | undefined;
    try {
      if (cfg.backing === 'memfd') {
        fd = n.memfdCreate(`tsvmm-ram-${name}`, MFD_CLOEXEC | (page !== undefined ? MFD_HUGETLB | hugeFlag : 0));
      } else if (cfg.backing === 'hugetlbfs') {
        const file = `${plan.path}/tsvmm-${name}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
        fd = openSync(file, 'wx+', 0o600);
        unlinkSync(file); // anonymous from here on, as QEMU's mkstemp + unlink
      }
      if (fd !== undefined) ftruncateSync(fd, cfg.size);
      addr =
        fd !== undefined
          ? n.mmapAddr(0, cfg.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
          : n.mmapAddr(
              0,
              cfg.size,
              PROT_READ | PROT_WRITE,
              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (page !== undefined ? MAP_HUGETLB | hugeFlag : 0),
              -1,
              0,
            );
      if (plan.thp) n.madvise(addr, cfg.size, MADV_HUGEPAGE);
      // A fork (node spawns children) must not make pinned private pages copy-on-write (QEMU does the same).
      n.madvise(addr, cfg.size, MADV_DONTFORK);
    } catch (e) {
      if (addr !== undefined) n.munmapAddr(addr);
      if (fd !== undefined) closeSync(fd);
      if (isSyscallError(e, 'ENOMEM') && page !== undefined)
        throw new RamBackingError(
          `the kernel could not reserve ${cfg.size / page} huge pages for ${mib(cfg.size)} of guest RAM (${(e as Error).message})`,
          `reserve more in ${hugePageDir(page)}/nr_hugepages`,
        );
      throw e;
    }
    return new GuestRam(cfg.size, plan, addr, fd);
  }

  /** A JS view of [offset, offset+length) (within one chunk, or ≤ 4 GiB at any offset). */
  view(offset: number, length: number): Uint8Array {
    if (this.closed) throw new Error('guest RAM is unmapped');
    if (offset < 0 || length < 0 || offset + length > this.size)
      throw new RangeError(
        `guest RAM view 0x${offset.toString(16)}+0x${length.toString(16)} is outside its ${mib(this.size)}`,
      );
    const i = Math.floor(offset / RAM_VIEW_CHUNK);
    if (offset + length <= (i + 1) * RAM_VIEW_CHUNK)
      return this.chunk(i).subarray(offset - i * RAM_VIEW_CHUNK, offset - i * RAM_VIEW_CHUNK + length);
    return new Uint8Array(native().mapView(this.hostAddr + BigInt(offset), length));
  }

  private chunk(i: number): Uint8Array {
    return (this.views[i] ??= new Uint8Array(
      native().mapView(
        this.hostAddr + BigInt(i * RAM_VIEW_CHUNK),
        Math.min(RAM_VIEW_CHUNK, this.size - i * RAM_VIEW_CHUNK),
      ),
    ));
  }

  /** The part [offset, offset+length) as memory-API chunks (for a region bigger than one view). */
  chunks(offset: number, length: number): RamChunks {
    if (offset % RAM_VIEW_CHUNK) throw new RangeError('guest RAM chunks start on a chunk boundary');
    return {
      size: RAM_VIEW_CHUNK,
      get: (i) => this.view(offset + i * RAM_VIEW_CHUNK, Math.min(RAM_VIEW_CHUNK, length - i * RAM_VIEW_CHUNK)),
    };
  }

  /**
   * Faults every page in now (MADV_POPULATE_WRITE), in parallel on worker threads where the host
   * has cores (QEMU's prealloc threads): pinning prefaulted memory for DMA is quicker, and
   * `prealloc` VMs fail here, not later. Blocks (the machine is set up synchronously); `progress`
   * is called once if it takes more than ~1 s. Returns false when the kernel lacks
   * MADV_POPULATE_WRITE (Linux < 5.14): nothing is prefaulted then.
   */
  prefault(opts: { threads?: number; progress?: (threads: number) => void } = {}): boolean {
    const chunk = Math.max(this.plan.hugetlbPage ?? 0, 2 ** 27); // 128 MiB pieces
    const pieces = Math.ceil(this.size / chunk);
    const threads = Math.max(1, Math.min(opts.threads ?? availableParallelism(), pieces, 16));
    // [next piece, pieces done, first errno]
    const state = new Int32Array(new SharedArrayBuffer(12));
    const workers: Worker[] = [];
    const start = Date.now();
    let told = false;
    const tell = () => {
      if (!told && Date.now() - start > 1000) {
        told = true;
        opts.progress?.(threads);
      }
    };
    try {
      // Loaded only here: worker_threads' modules cost start-up time to every VM that prefaults on one thread.
      const { Worker } = threads > 1 ? process.getBuiltinModule('node:worker_threads') : ({} as never);
      for (let t = 1; t < threads; t++) {
        workers.push(
          new Worker(PREFAULT_WORKER, {
            eval: true,
            workerData: { addon: ADDON_PATH, state, base: this.hostAddr, size: this.size, chunk, pieces },
          }),
        );
      }
      // The main thread takes pieces too, then waits for the workers' last ones. After an error
      // the rest are only counted, so `done` always reaches `pieces`.
      const n = native();
      for (let i; (i = Atomics.add(state, 0, 1)) < pieces; ) {
        if (Atomics.load(state, 2) === 0) {
          try {
            n.madvise(this.hostAddr + BigInt(i * chunk), Math.min(chunk, this.size - i * chunk), MADV_POPULATE_WRITE);
          } catch (e) {
            Atomics.compareExchange(state, 2, 0, (e as { errno?: number }).errno ?? 1);
          }
        }
        Atomics.add(state, 1, 1);
        tell();
      }
      for (let done; (done = Atomics.load(state, 1)) < pieces; ) {
        Atomics.wait(state, 1, done, 250);
        tell();
      }
    } finally {
      for (const w of workers) void w.terminate();
    }
    const errno = Atomics.load(state, 2);
    if (errno === 22) return false; // EINVAL: no MADV_POPULATE_WRITE on this kernel
    if (errno !== 0) {
      throw new RamBackingError(
        `prefaulting ${mib(this.size)} of guest RAM (${this.plan.describe}) failed with errno ${errno}${errno === 12 || errno === 14 ? ' (out of memory or huge pages)' : ''}`,
        'give the VM less memory or free memory on the host',
      );
    }
    return true;
  }

  /** Unmaps the RAM (every view is detached first) and closes its fd. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.views.length = 0;
    native().munmapAddr(this.hostAddr);
    if (this.fd !== undefined) closeSync(this.fd);
  }
}

// A prefault worker: loads only the addon and takes pieces until none are left.
const PREFAULT_WORKER = `
const { workerData: w } = require('node:worker_threads');
const n = require(w.addon);
const s = w.state;
for (let i; (i = Atomics.add(s, 0, 1)) < w.pieces;) {
  if (Atomics.load(s, 2) === 0) {
    try { n.madvise(w.base + BigInt(i * w.chunk), Math.min(w.chunk, w.size - i * w.chunk), ${MADV_POPULATE_WRITE}); }
    catch (e) { Atomics.compareExchange(s, 2, 0, e.errno || 1); }
  }
  Atomics.add(s, 1, 1);
  Atomics.notify(s, 1);
}`;
