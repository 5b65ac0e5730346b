// RLIMIT_MEMLOCK and CAP_IPC_LOCK as the type1 IOMMU driver sees them: pinned guest RAM is
// charged to the locked-memory limit unless the process has CAP_IPC_LOCK.
import { readFileSync } from 'node:fs';

const CAP_IPC_LOCK = 14n;

export function hasCapIpcLock(): boolean {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return !!m && ((BigInt('0x' + m[1]) >> CAP_IPC_LOCK) & 1n) === 1n;
}

/** The soft RLIMIT_MEMLOCK in bytes (Infinity when unlimited). */
export function memlockLimit(): number {
  const m = /^Max locked memory\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  if (!m || m[1] === 'unlimited') return Infinity;
  return Number(m[1]);
}

/** Bytes the kernel counts as locked by this process (VmLck: includes VFIO-pinned pages). */
export function lockedBytes(pid: number | 'self' = 'self'): number {
  const m = /^VmLck:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

export function fmtBytes(n: number): string {
  if (n === Infinity) return 'unlimited';
  for (const [u, s] of [
    ['G', 2 ** 30],
    ['M', 2 ** 20],
    ['K', 2 ** 10],
  ] as const)
    if (n >= s && n % s === 0) return `${n / s}${u}`;
  return `${n} bytes`;
}

/** Bytes pinned by iommufd in its per-process mode (VmPin: mm->pinned_vm, where type1 uses VmLck). */
export function pinnedBytes(pid: number | 'self' = 'self'): number {
  const m = /^VmPin:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

export const DMA_ENTRY_LIMIT_PATH = '/sys/module/vfio_iommu_type1/parameters/dma_entry_limit';
/** vfio_iommu_type1's default dma_entry_limit (U16_MAX). */
export const DEFAULT_DMA_ENTRY_LIMIT = 65535;

/**
 * DMA mappings one type1 container may hold. `avail` is what VFIO_IOMMU_GET_INFO's DMA_AVAIL said
 * of the container before anything was mapped: the kernel copies dma_entry_limit into each
 * container when it is opened, so that is exact even if the parameter changed since. Without it,
 * the module parameter where it is readable, else the default.
 */
export function dmaEntryLimit(avail?: number, path = DMA_ENTRY_LIMIT_PATH): { limit: number; source: string } {
  if (avail !== undefined)
    return {
      limit: avail,
      source: `vfio_iommu_type1 dma_entry_limit ${avail} (the container's DMA_AVAIL when opened)`,
    };
  try {
    const v = Number(readFileSync(path, 'utf8').trim());
    if (Number.isSafeInteger(v) && v >= 0) return { limit: v, source: `vfio_iommu_type1 dma_entry_limit ${v}` };
  } catch {
    /* not readable: the module is built in without sysfs parameters, or a sandbox hides it */
  }
  return {
    limit: DEFAULT_DMA_ENTRY_LIMIT,
    source: `vfio_iommu_type1 dma_entry_limit (default ${DEFAULT_DMA_ENTRY_LIMIT})`,
  };
}
