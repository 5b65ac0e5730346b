// Typed view of the native addon (build/Release/tsvmm_native.node, built by `npm install`).
import { createRequire } from 'node:module';
import { projectRoot } from './paths.js';
import { TsvmmError } from './errors.js';
import type { NativeConstants } from './native-constants.js';

export interface Mapping {
  addr: bigint;
  buffer: ArrayBuffer;
}
export type U64 = number | bigint;

export interface Regs {
  rax: U64;
  rbx: U64;
  rcx: U64;
  rdx: U64;
  rsi: U64;
  rdi: U64;
  rsp: U64;
  rbp: U64;
  r8: U64;
  r9: U64;
  r10: U64;
  r11: U64;
  r12: U64;
  r13: U64;
  r14: U64;
  r15: U64;
  rip: U64;
  rflags: U64;
}
export interface Segment {
  base: U64;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
}
export interface DTable {
  base: U64;
  limit: number;
}
export interface Sregs {
  cs: Segment;
  ds: Segment;
  es: Segment;
  fs: Segment;
  gs: Segment;
  ss: Segment;
  tr: Segment;
  ldt: Segment;
  gdt: DTable;
  idt: DTable;
  cr0: U64;
  cr2: U64;
  cr3: U64;
  cr4: U64;
  cr8: U64;
  efer: U64;
  apic_base: U64;
}
export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}
export type GsiRoute =
  | { gsi: number; type: 'msi'; addressLo: number; addressHi: number; data: number }
  | { gsi: number; type: 'irqchip'; irqchip: number; pin: number };

export type KvmStateName =
  | 'regs'
  | 'sregs'
  | 'fpu'
  | 'lapic'
  | 'mpState'
  | 'vcpuEvents'
  | 'xcrs'
  | 'irqchip'
  | 'pit2'
  | 'xsave'
  | 'debugregs'
  | 'clock';

export interface KvmRunLayout {
  immediateExit: number;
  exitReason: number;
  ioDirection: number;
  ioSize: number;
  ioPort: number;
  ioCount: number;
  ioDataOffset: number;
  mmioPhysAddr: number;
  mmioData: number;
  mmioLen: number;
  mmioIsWrite: number;
  failEntryReason: number;
  internalSuberror: number;
  internalNdata: number;
  internalData: number;
  systemEventType: number;
}

// VFIO (vfio.cc: container and group; vfio-device.cc: device, regions, IRQs)
export interface VfioIommuInfo {
  flags: number;
  /** Bitmap of supported IOMMU page sizes (0 unless VFIO_IOMMU_INFO_PGSIZES). */
  iovaPgsizes: bigint;
  /** VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: usable IOVA ranges, `end` inclusive. */
  iovaRanges?: { start: bigint; end: bigint }[];
  /** VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: DMA mappings still allowed. */
  dmaAvail?: number;
}
export interface VfioDeviceInfo {
  flags: number;
  numRegions: number;
  numIrqs: number;
}
export interface VfioRegionInfo {
  index: number;
  flags: number;
  size: bigint;
  offset: bigint;
  caps: {
    /** VFIO_REGION_INFO_CAP_SPARSE_MMAP: the only mmap-able areas (offsets within the region). */
    sparseMmap?: { offset: bigint; size: bigint }[];
    /** VFIO_REGION_INFO_CAP_TYPE (device-specific regions). */
    type?: { type: number; subtype: number };
    /** VFIO_REGION_INFO_CAP_MSIX_MAPPABLE present. */
    msixMappable: boolean;
  };
}
export interface VfioIrqInfo {
  index: number;
  flags: number;
  count: number;
}
/** DATA_EVENTFD needs fds (-1 de-assigns), DATA_BOOL needs bools, DATA_NONE needs count; count, if given with fds/bools, must equal their length. */
export interface VfioIrqSet {
  index: number;
  start: number;
  flags: number;
  fds?: number[];
  bools?: boolean[];
  count?: number;
}
export interface VfioHotResetInfo {
  flags: number;
  /** groupId for group-opened devices; devid (0 owned, -1 not owned, >0 id) when flags has VFIO_PCI_HOT_RESET_FLAG_DEV_ID. */
  devices: { groupId?: number; devid?: number; segment: number; bus: number; devfn: number }[];
}
// iommufd (iommufd.cc)
export interface IommuIovaRanges {
  ranges: { start: bigint; last: bigint }[];
  outIovaAlignment: bigint;
}
// fd passing (socket.cc)
export interface RecvFdsResult {
  data: Uint8Array;
  fds: number[];
  truncated: boolean;
}

export interface Native {
  constants: NativeConstants;
  kvmRunLayout: KvmRunLayout;
  // mman
  mmap(addrHint: U64, length: U64, prot: number, flags: number, fd: number, offset: U64): Mapping;
  munmap(buffer: ArrayBuffer): void;
  /** Any length; JS reaches the memory through mapView() (each view ≤ 4 GiB, V8's limit). */
  mmapAddr(addrHint: U64, length: U64, prot: number, flags: number, fd: number, offset: U64): bigint;
  /** An ArrayBuffer over part of a live mmapAddr() mapping; detached by munmapAddr(). */
  mapView(addr: U64, length: U64): ArrayBuffer;
  /** Sets the bit of each all-zero 4 KiB page of [addr, addr+length) (an mmapAddr() mapping) in zeroBits; returns how many. */
  memZeroPages(addr: U64, length: number, zeroBits: Uint32Array): number;
  /** Copies [addr, addr+length) of an mmapAddr() mapping into dst at dstOffset (any thread: no view needed). */
  memCopy(addr: U64, length: number, dst: Uint8Array, dstOffset: number): void;
  /** Writes all of data to fd on the calling thread (poll while full); gives up (code ESTOPPED) once stop[index] is set. */
  writeFully(fd: number, data: Uint8Array, stop: Int32Array, index: number): void;
  /** fcntl(F_DUPFD_CLOEXEC). */
  dupFd(fd: number): number;
  munmapAddr(addr: U64): void;
  memfdCreate(name: string, flags: number): number;
  madvise(addr: U64, length: U64, advice: number): void;
  // eventfd
  eventfd(initval: number, flags: number): number;
  // fd readiness on the event loop (fdwatch.cc): callback(status, events) while readable
  fdWatch(fd: number, callback: (status: number, events: number) => void, ref?: boolean): number;
  fdUnwatch(id: number): void;
  // vCPU kick
  /** Installs the kick handler; unblocks signo in this thread, or with block blocks it (taken only inside KVM_RUN). */
  threadPrepareKick(signo: number, block?: boolean): bigint;
  threadKick(thread: bigint, signo: number): void;
  /** Takes every pending instance of a blocked signo; returns how many. */
  threadEatSignal(signo: number): number;
  // seccomp (seccomp.cc): the sandbox's filter on every thread, and the SIGSYS report
  /** program: struct sock_filter[]; names by syscall number; hint printed after the syscall; the exit status. */
  seccompInstall(program: Buffer, names: (string | undefined)[], hint: string, status: number): void;
  // loop watcher (loop-watcher.cc): kicks the thread running vCPU 0 when the event loop has work
  loopWatcherCreate(runPage: ArrayBuffer, immediateExitOffset: number, thread: bigint, signo: number): unknown;
  /** Returns the loop's timeout it watches with (ms, -1 none). maxWaitMs caps the wait from the first
   *  refresh (code ran on the loop's thread), or from the arm with capNow. */
  loopWatcherArm(h: unknown, maxWaitMs?: number, capNow?: boolean, budgetMs?: number): number;
  /** Code ran on the loop's thread: starts the cap, and watches for a timer it started if that is
   *  due earlier; true when the deadline moved. */
  loopWatcherRefresh(h: unknown): boolean;
  /** The vCPU loopWatcherKvmRun runs, with its local-reads handle (localReadsCreate) if any. */
  loopWatcherBind(h: unknown, vcpuFd: number, reads?: unknown): void;
  /** As kvmRun on the bound vCPU, after a refresh unless it is the first run since the arm (the exit
   *  handler's code ran); with local reads, the reads it answers go straight back into KVM_RUN, until
   *  the arm's budgetMs have passed: then 1 after an answered read (nothing left to handle). */
  loopWatcherKvmRun(h: unknown): number;
  /** Returns whether it fired since the arm; no kick follows. */
  loopWatcherDisarm(h: unknown): boolean;
  loopWatcherFired(h: unknown): boolean;
  loopWatcherDestroy(h: unknown): void;
  // KVM state blobs (kvm-state.cc), for snapshot/restore on reset
  kvmGetState(fd: number, name: KvmStateName, chipId?: number): Uint8Array;
  kvmSetState(fd: number, name: KvmStateName, bytes: Uint8Array): void;
  /** The MSRs KVM can save and restore (on the /dev/kvm fd). */
  kvmGetMsrIndexList(kvmFd: number): number[];
  /** Values of `indexes` in order; shorter than the list when KVM stops at one it cannot read. */
  kvmGetMsrs(vcpuFd: number, indexes: number[]): BigUint64Array;
  /** KVM_GET_DIRTY_LOG: a bit per page of the slot written since the last call (cleared by it). */
  kvmGetDirtyLog(vmFd: number, slot: number, bitmap: Uint8Array): void;
  /** KVM_CLEAR_DIRTY_LOG (manual protection): clears and write-protects the pages set in `bitmap` from firstPage (a multiple of 64). */
  kvmClearDirtyLog(vmFd: number, slot: number, firstPage: number, numPages: number, bitmap: Uint32Array): void;
  /** KVM_ENABLE_CAP on a VM fd, args[0] = arg0. */
  kvmEnableCap(vmFd: number, cap: number, arg0: number): void;

  kvmGetTscKhz(vcpuFd: number): number;
  kvmSetTscKhz(vcpuFd: number, khz: number): void;
  /** KVM_RUN runs with this thread's signal mask minus these signals. */
  kvmSetSignalMask(vcpuFd: number, unblock: number[]): void;
  // KVM system / VM
  kvmGetApiVersion(kvmFd: number): number;
  kvmCreateVm(kvmFd: number, type: number): number;
  kvmCheckExtension(fd: number, cap: number): number;
  kvmGetVcpuMmapSize(kvmFd: number): number;
  kvmGetSupportedCpuid(kvmFd: number): CpuidEntry[];
  kvmCreateVcpu(vmFd: number, id: number): number;
  kvmSetTssAddr(vmFd: number, addr: number): void;
  kvmSetIdentityMapAddr(vmFd: number, addr: U64): void;
  kvmCreateIrqchip(vmFd: number): void;
  kvmCreatePit2(vmFd: number, flags: number): void;
  kvmSetUserMemoryRegion(
    vmFd: number,
    r: { slot: number; flags: number; guestPhysAddr: U64; memorySize: U64; userspaceAddr: U64 },
  ): void;
  kvmIrqfd(vmFd: number, r: { fd: number; gsi: number; flags: number; resamplefd?: number }): void;
  kvmIoeventfd(vmFd: number, r: { datamatch?: U64; addr: U64; len: number; fd: number; flags: number }): void;
  kvmSetGsiRouting(vmFd: number, routes: GsiRoute[]): void;
  kvmSignalMsi(vmFd: number, msi: { addressLo: number; addressHi: number; data: number }): number;
  kvmIrqLine(vmFd: number, irq: number, level: number): void;
  kvmCreateDevice(vmFd: number, type: number): number;
  kvmSetDeviceAttr(devFd: number, group: number, attr: U64, value: number): void;
  // vCPU
  kvmRun(vcpuFd: number): number;
  // local reads (local-reads.cc): a port read of a published register (core/kvm/register-file.ts)
  // answered on the vCPU's thread in native code, with readPublished's seqlock and rules, counted in
  // counts[slot] and channel[exitsSlot]; never while channel[headSlot] !== channel[tailSlot].
  localReadsCreate(
    runPage: ArrayBuffer,
    words: Int32Array,
    portSlot: Uint8Array,
    counts: Int32Array,
    channel: Int32Array,
    exitsSlot: number,
    headSlot: number,
    tailSlot: number,
  ): unknown;
  /** As kvmRun, but the reads the handle answers go straight back into KVM_RUN. */
  localReadsKvmRun(h: unknown, vcpuFd: number): number;
  /** Answers the exit now in the handle's kvm_run page if it is such a read (tests: no KVM needed). */
  localReadsAnswer(h: unknown): boolean;
  kvmGetRegs(vcpuFd: number): Regs;
  kvmSetRegs(vcpuFd: number, regs: Partial<Regs>): void;
  kvmGetSregs(vcpuFd: number): Sregs;
  kvmSetSregs(vcpuFd: number, sregs: Partial<Sregs>): void;
  kvmSetCpuid2(vcpuFd: number, entries: CpuidEntry[]): void;
  kvmSetMsrs(vcpuFd: number, msrs: { index: number; data: U64 }[]): number;
  kvmSetFpu(vcpuFd: number, fpu: { fcw: number; mxcsr: number }): void;
  // VFIO container (/dev/vfio/vfio)
  vfioGetApiVersion(containerFd: number): number;
  vfioCheckExtension(containerFd: number, ext: number): number;
  vfioSetIommu(containerFd: number, type: number): void;
  vfioIommuGetInfo(containerFd: number): VfioIommuInfo;
  vfioIommuMapDma(containerFd: number, m: { vaddr: U64; iova: U64; size: U64; flags: number }): void;
  /** Returns the number of bytes unmapped. */
  vfioIommuUnmapDma(containerFd: number, u: { iova: U64; size: U64; flags: number }): bigint;
  /** VFIO_IOMMU_MAP_DMA with its fields as arguments (no object to read by name): a guest MAP's call. */
  vfioIommuMapDmaAt(containerFd: number, iova: U64, size: U64, vaddr: U64, flags: number): void;
  /** VFIO_IOMMU_UNMAP_DMA of [iova, iova+size), no flags; returns the bytes unmapped. */
  vfioIommuUnmapDmaAt(containerFd: number, iova: U64, size: U64): number;
  // VFIO group (/dev/vfio/N)
  vfioGroupGetStatus(groupFd: number): { flags: number };
  vfioGroupSetContainer(groupFd: number, containerFd: number): void;
  vfioGroupUnsetContainer(groupFd: number): void;
  vfioGroupGetDeviceFd(groupFd: number, name: string): number;
  // VFIO device
  vfioDeviceGetInfo(deviceFd: number): VfioDeviceInfo;
  vfioDeviceGetRegionInfo(deviceFd: number, index: number): VfioRegionInfo;
  vfioDeviceGetIrqInfo(deviceFd: number, index: number): VfioIrqInfo;
  vfioDeviceSetIrqs(deviceFd: number, set: VfioIrqSet): void;
  vfioDeviceReset(deviceFd: number): void;
  vfioDeviceGetPciHotResetInfo(deviceFd: number): VfioHotResetInfo;
  vfioDevicePciHotReset(deviceFd: number, groupFds: number[]): void;
  // VFIO cdev device (/dev/vfio/devices/vfioN) with iommufd
  /** Returns the devid. */
  vfioDeviceBindIommufd(deviceFd: number, iommufd: number): number;
  /** Returns the id actually attached (the IOAS or a hwpt the kernel created for it). */
  vfioDeviceAttachIommufdPt(deviceFd: number, ptId: number): number;
  vfioDeviceDetachIommufdPt(deviceFd: number): void;
  // VFIO migration uAPI v2 (vfio-migration.cc)
  /** VFIO_DEVICE_FEATURE_PROBE with access GET and/or SET; throws the errno (ENOTTY: not offered). */
  vfioDeviceFeatureProbe(deviceFd: number, feature: number, access: number): void;
  /** VFIO_MIGRATION_* flags; ENOTTY when the device's driver has no migration support. */
  vfioDeviceMigrationFlags(deviceFd: number): number;
  vfioDeviceMigGetState(deviceFd: number): number;
  /** One state change; returns the data fd the arc opened (the caller closes it), or -1. */
  vfioDeviceMigSetState(deviceFd: number, state: number): number;
  /** The estimated stop-copy length in bytes. */
  vfioDeviceMigDataSize(deviceFd: number): bigint;
  /** VFIO_MIG_GET_PRECOPY_INFO on a PRE_COPY data fd. */
  vfioMigPrecopyInfo(dataFd: number): { initialBytes: bigint; dirtyBytes: bigint };
  /** Starts the device's DMA dirty log over page-aligned ranges; returns the page size it tracks with. */
  vfioDeviceDmaLoggingStart(deviceFd: number, pageSize: U64, ranges: { iova: U64; length: U64 }[]): bigint;
  vfioDeviceDmaLoggingStop(deviceFd: number): void;
  /** Reads and clears the log for [iova, iova+length): bit i (LSB first) = the page at iova + i * pageSize was written. */
  vfioDeviceDmaLoggingReport(deviceFd: number, iova: U64, length: U64, pageSize: U64): Uint8Array;
  // iommufd (/dev/iommu)
  iommuIoasAlloc(iommufd: number): number;
  iommuDestroy(iommufd: number, id: number): void;
  iommuIoasIovaRanges(iommufd: number, ioasId: number): IommuIovaRanges;
  /** Returns the IOVA (kernel-chosen unless IOMMU_IOAS_MAP_FIXED_IOVA). */
  iommuIoasMap(iommufd: number, m: { ioasId: number; flags: number; userVa: U64; length: U64; iova?: U64 }): bigint;
  /** Returns the bytes unmapped; iova 0 with length 0xffffffffffffffffn unmaps everything. */
  iommuIoasUnmap(iommufd: number, u: { ioasId: number; iova: U64; length: U64 }): bigint;
  /** IOMMU_IOAS_MAP at a fixed IOVA (FIXED_IOVA is added to flags), its fields as arguments. */
  iommuIoasMapAt(iommufd: number, ioasId: number, iova: U64, length: U64, userVa: U64, flags: number): void;
  /** IOMMU_IOAS_UNMAP of [iova, iova+length); returns the bytes unmapped. */
  iommuIoasUnmapAt(iommufd: number, ioasId: number, iova: U64, length: U64): number;
  /** Returns val64 (the current value for IOMMU_OPTION_OP_GET). */
  iommuOption(iommufd: number, o: { option: number; op: number; objectId?: number; val64?: U64 }): bigint;
  // Unix-socket fd passing
  /** sendmsg with SCM_RIGHTS and MSG_NOSIGNAL; needs >= 1 data byte when fds are passed. Returns bytes sent. */
  sendFds(socketFd: number, data: Uint8Array, fds: number[]): number;
  /** recvmsg with MSG_CMSG_CLOEXEC. data.length 0 = EOF. More than maxFds fds → they are closed, truncated = true. EAGAIN throws.
   *  With `into` (at least maxData bytes) the data lands there and `data` is a view of it. */
  recvFds(socketFd: number, maxData: number, maxFds: number, into?: Uint8Array): RecvFdsResult;
  socketpair(): [number, number];
  setNonBlocking(fd: number, on: boolean): void;
  /** poll(2) for one fd in the thread pool; resolves with revents (0 on timeout). */
  pollFd(fd: number, events: number, timeoutMs: number): Promise<number>;
}

/** An Error from a failed syscall, as thrown by the addon. */
export interface SyscallError extends Error {
  code: string;
  errno: number;
  syscall: string;
}
export function isSyscallError(e: unknown, code?: string): e is SyscallError {
  return (
    e instanceof Error &&
    typeof (e as SyscallError).syscall === 'string' &&
    (code === undefined || (e as SyscallError).code === code)
  );
}

const require = createRequire(import.meta.url);
let cached: Native | undefined;

/** The addon's file (worker threads that need only the addon load it directly). */
export const ADDON_PATH = `${projectRoot}/build/Release/tsvmm_native.node`;

/**
 * A copy of `o` (and of each plain object in it) with fast properties. N-API adds the exports one
 * property at a time, which leaves the exports object and `constants` in dictionary mode: there V8
 * does not inline a property load, and every `native().fn` on an exit path (KVM_RUN, a VFIO map)
 * went through the load IC's generic path (6 % of the user time of a virtio-iommu request).
 */
function withFastProperties<T extends object>(o: T): T {
  const copy: Record<string, unknown> = Object.fromEntries(Object.entries(o));
  for (const [k, v] of Object.entries(copy))
    if (v !== null && typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype)
      copy[k] = Object.fromEntries(Object.entries(v));
  return copy as T;
}

export function native(): Native {
  if (!cached) {
    const path = ADDON_PATH;
    try {
      cached = withFastProperties(require(path) as Native);
    } catch (e) {
      throw new TsvmmError('ERR_VM_SETUP', `cannot load the native addon ${path}: ${(e as Error).message}`, {
        cause: e,
        fix: `run 'npm install' (or 'npm run build:native') in ${projectRoot}`,
      });
    }
  }
  return cached;
}

// mmap/prot constants (asm-generic values, x86-64).
export const PROT_NONE = 0,
  PROT_READ = 1,
  PROT_WRITE = 2;
export const MAP_SHARED = 0x01,
  MAP_PRIVATE = 0x02,
  MAP_FIXED = 0x10,
  MAP_ANONYMOUS = 0x20,
  MAP_NORESERVE = 0x4000;
export const MAP_POPULATE = 0x8000,
  MAP_HUGETLB = 0x40000,
  MAP_HUGE_SHIFT = 26;
export const MFD_CLOEXEC = 1,
  MFD_HUGETLB = 4;
/** The largest ArrayBuffer over native memory (Node's Buffer limit): mapView()'s maximum. */
export const MAX_VIEW_BYTES = 2 ** 32;
export const EFD_NONBLOCK = 0o4000;
export const MADV_DONTFORK = 10,
  MADV_HUGEPAGE = 14,
  MADV_POPULATE_WRITE = 23;
