// Native VFIO / iommufd / fd-passing wrappers, without /dev/vfio or /dev/iommu:
//  - every ioctl wrapper on a closed fd (EBADF) and on /dev/null (ENOTTY) must throw an Error
//    naming its ioctl (rust-vmm's test_faulty_vm_fd idea); bad arguments throw before the ioctl;
//  - struct marshalling, argsz retries and capability-chain walking run against a fake kernel:
//    an LD_PRELOAD shim (compiled here with cc) that answers VFIO/iommufd ioctls on two magic fd
//    numbers the way the 6.12 kernel does, and logs the structs it receives;
//  - SCM_RIGHTS fd passing over a real socketpair.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { native, isSyscallError, MFD_CLOEXEC } from '../../core/native.js';
import { projectRoot } from '../../core/paths.js';

const n = native();
const c = n.constants as Record<string, number>;
const K = (name: string): number => {
  const v = c[name];
  assert.equal(typeof v, 'number', `constant ${name} exported`);
  return v!;
};

function expectSyscallError(fn: () => unknown, code: string, syscall: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isSyscallError(e), `expected a syscall error, got ${String(e)}`);
    assert.equal(e.code, code, `${syscall}: code`);
    assert.equal(e.errno, (os.constants.errno as Record<string, number>)[code], `${syscall}: errno`);
    assert.equal(e.syscall, syscall);
    assert.ok(e.message.includes(syscall) && e.message.startsWith(code), e.message);
    return true;
  });
}

/** A number that is certainly not an open fd right now. */
function closedFd(): number {
  const fd = fs.openSync('/dev/null', 'r');
  fs.closeSync(fd);
  return fd;
}

// ---------------------------------------------------------------------------------------------
// Faulty fds

type Call = [ioctl: string, fn: (fd: number) => unknown];
const calls: Record<string, Call> = {
  vfioGetApiVersion: ['VFIO_GET_API_VERSION', (fd) => n.vfioGetApiVersion(fd)],
  vfioCheckExtension: ['VFIO_CHECK_EXTENSION', (fd) => n.vfioCheckExtension(fd, K('VFIO_TYPE1v2_IOMMU'))],
  vfioSetIommu: ['VFIO_SET_IOMMU', (fd) => n.vfioSetIommu(fd, K('VFIO_TYPE1v2_IOMMU'))],
  vfioIommuGetInfo: ['VFIO_IOMMU_GET_INFO', (fd) => n.vfioIommuGetInfo(fd)],
  vfioIommuMapDma: [
    'VFIO_IOMMU_MAP_DMA',
    (fd) => n.vfioIommuMapDma(fd, { vaddr: 0x7f0000000000n, iova: 0, size: 4096, flags: 3 }),
  ],
  vfioIommuUnmapDma: [
    'VFIO_IOMMU_UNMAP_DMA',
    (fd) => n.vfioIommuUnmapDma(fd, { iova: 0, size: 0, flags: K('VFIO_DMA_UNMAP_FLAG_ALL') }),
  ],
  vfioIommuMapDmaAt: ['VFIO_IOMMU_MAP_DMA', (fd) => n.vfioIommuMapDmaAt(fd, 0, 4096, 0x7f0000000000n, 3)],
  vfioIommuUnmapDmaAt: ['VFIO_IOMMU_UNMAP_DMA', (fd) => n.vfioIommuUnmapDmaAt(fd, 0, 4096)],
  vfioGroupGetStatus: ['VFIO_GROUP_GET_STATUS', (fd) => n.vfioGroupGetStatus(fd)],
  vfioGroupSetContainer: ['VFIO_GROUP_SET_CONTAINER', (fd) => n.vfioGroupSetContainer(fd, 0)],
  vfioGroupUnsetContainer: ['VFIO_GROUP_UNSET_CONTAINER', (fd) => n.vfioGroupUnsetContainer(fd)],
  vfioGroupGetDeviceFd: ['VFIO_GROUP_GET_DEVICE_FD', (fd) => n.vfioGroupGetDeviceFd(fd, '0000:00:04.0')],
  vfioDeviceGetInfo: ['VFIO_DEVICE_GET_INFO', (fd) => n.vfioDeviceGetInfo(fd)],
  vfioDeviceGetRegionInfo: ['VFIO_DEVICE_GET_REGION_INFO', (fd) => n.vfioDeviceGetRegionInfo(fd, 0)],
  vfioDeviceGetIrqInfo: ['VFIO_DEVICE_GET_IRQ_INFO', (fd) => n.vfioDeviceGetIrqInfo(fd, 0)],
  vfioDeviceSetIrqs: [
    'VFIO_DEVICE_SET_IRQS',
    (fd) =>
      n.vfioDeviceSetIrqs(fd, {
        index: 0,
        start: 0,
        flags: K('VFIO_IRQ_SET_DATA_EVENTFD') | K('VFIO_IRQ_SET_ACTION_TRIGGER'),
        fds: [-1],
      }),
  ],
  vfioDeviceReset: ['VFIO_DEVICE_RESET', (fd) => n.vfioDeviceReset(fd)],
  vfioDeviceGetPciHotResetInfo: ['VFIO_DEVICE_GET_PCI_HOT_RESET_INFO', (fd) => n.vfioDeviceGetPciHotResetInfo(fd)],
  vfioDevicePciHotReset: ['VFIO_DEVICE_PCI_HOT_RESET', (fd) => n.vfioDevicePciHotReset(fd, [])],
  vfioDeviceBindIommufd: ['VFIO_DEVICE_BIND_IOMMUFD', (fd) => n.vfioDeviceBindIommufd(fd, 0)],
  vfioDeviceAttachIommufdPt: ['VFIO_DEVICE_ATTACH_IOMMUFD_PT', (fd) => n.vfioDeviceAttachIommufdPt(fd, 1)],
  vfioDeviceDetachIommufdPt: ['VFIO_DEVICE_DETACH_IOMMUFD_PT', (fd) => n.vfioDeviceDetachIommufdPt(fd)],
  vfioDeviceFeatureProbe: [
    'VFIO_DEVICE_FEATURE(PROBE)',
    (fd) => n.vfioDeviceFeatureProbe(fd, K('VFIO_DEVICE_FEATURE_MIGRATION'), K('VFIO_DEVICE_FEATURE_GET')),
  ],
  vfioDeviceMigrationFlags: ['VFIO_DEVICE_FEATURE(MIGRATION)', (fd) => n.vfioDeviceMigrationFlags(fd)],
  vfioDeviceMigGetState: ['VFIO_DEVICE_FEATURE(GET MIG_DEVICE_STATE)', (fd) => n.vfioDeviceMigGetState(fd)],
  vfioDeviceMigSetState: [
    'VFIO_DEVICE_FEATURE(SET MIG_DEVICE_STATE)',
    (fd) => n.vfioDeviceMigSetState(fd, K('VFIO_DEVICE_STATE_STOP')),
  ],
  vfioDeviceMigDataSize: ['VFIO_DEVICE_FEATURE(MIG_DATA_SIZE)', (fd) => n.vfioDeviceMigDataSize(fd)],
  vfioMigPrecopyInfo: ['VFIO_MIG_GET_PRECOPY_INFO', (fd) => n.vfioMigPrecopyInfo(fd)],
  vfioDeviceDmaLoggingStart: [
    'VFIO_DEVICE_FEATURE(DMA_LOGGING_START)',
    (fd) => n.vfioDeviceDmaLoggingStart(fd, 4096, [{ iova: 0, length: 4096 }]),
  ],
  vfioDeviceDmaLoggingStop: ['VFIO_DEVICE_FEATURE(DMA_LOGGING_STOP)', (fd) => n.vfioDeviceDmaLoggingStop(fd)],
  vfioDeviceDmaLoggingReport: [
    'VFIO_DEVICE_FEATURE(DMA_LOGGING_REPORT)',
    (fd) => n.vfioDeviceDmaLoggingReport(fd, 0, 1 << 20, 4096),
  ],
  iommuIoasAlloc: ['IOMMU_IOAS_ALLOC', (fd) => n.iommuIoasAlloc(fd)],
  iommuDestroy: ['IOMMU_DESTROY', (fd) => n.iommuDestroy(fd, 1)],
  iommuIoasIovaRanges: ['IOMMU_IOAS_IOVA_RANGES', (fd) => n.iommuIoasIovaRanges(fd, 1)],
  iommuIoasMap: [
    'IOMMU_IOAS_MAP',
    (fd) =>
      n.iommuIoasMap(fd, { ioasId: 1, flags: K('IOMMU_IOAS_MAP_READABLE'), userVa: 0x7f0000000000n, length: 4096 }),
  ],
  iommuIoasUnmap: [
    'IOMMU_IOAS_UNMAP',
    (fd) => n.iommuIoasUnmap(fd, { ioasId: 1, iova: 0, length: 0xffffffffffffffffn }),
  ],
  iommuIoasMapAt: ['IOMMU_IOAS_MAP', (fd) => n.iommuIoasMapAt(fd, 1, 0, 4096, 0x7f0000000000n, 4)],
  iommuIoasUnmapAt: ['IOMMU_IOAS_UNMAP', (fd) => n.iommuIoasUnmapAt(fd, 1, 0, 4096)],
  iommuOption: [
    'IOMMU_OPTION',
    (fd) => n.iommuOption(fd, { option: K('IOMMU_OPTION_HUGE_PAGES'), op: K('IOMMU_OPTION_OP_GET'), objectId: 1 }),
  ],
};

test('every vfio*/iommu* export is covered by the faulty-fd table', () => {
  const exported = Object.keys(n)
    .filter((k) => /^(vfio|iommu)[A-Z]/.test(k) && typeof (n as unknown as Record<string, unknown>)[k] === 'function')
    .sort();
  assert.deepEqual(exported, Object.keys(calls).sort());
});

test('ioctl wrappers on a closed fd throw EBADF naming the ioctl', () => {
  const fd = closedFd();
  for (const [ioctl, fn] of Object.values(calls)) expectSyscallError(() => fn(fd), 'EBADF', `ioctl(${ioctl})`);
});

test('ioctl wrappers on /dev/null throw ENOTTY naming the ioctl', () => {
  const fd = fs.openSync('/dev/null', 'r+');
  try {
    for (const [ioctl, fn] of Object.values(calls)) expectSyscallError(() => fn(fd), 'ENOTTY', `ioctl(${ioctl})`);
  } finally {
    fs.closeSync(fd);
  }
});

test('bad arguments throw TypeError/RangeError before any ioctl', () => {
  // On /dev/null: a wrapper that skipped validation would throw ENOTTY instead.
  const fd = fs.openSync('/dev/null', 'r+');
  const any = n as unknown as Record<string, (...a: unknown[]) => unknown>;
  const EVENTFD_TRIGGER = K('VFIO_IRQ_SET_DATA_EVENTFD') | K('VFIO_IRQ_SET_ACTION_TRIGGER');
  try {
    assert.throws(() => any.vfioGetApiVersion!('3'), TypeError);
    assert.throws(() => any.vfioGetApiVersion!(), TypeError);
    assert.throws(() => any.vfioCheckExtension!(fd), TypeError);
    assert.throws(() => any.vfioSetIommu!(fd, 'type1'), TypeError);
    assert.throws(() => any.vfioIommuMapDma!(fd, 5), TypeError);
    assert.throws(() => any.vfioIommuMapDma!(fd, { iova: 0, size: 4096, flags: 3 }), TypeError, 'vaddr is required');
    assert.throws(() => any.vfioIommuMapDma!(fd, { vaddr: 'x', iova: 0, size: 4096, flags: 3 }), TypeError);
    assert.throws(() => any.vfioIommuMapDma!(fd, { vaddr: -1, iova: 0, size: 4096, flags: 3 }), RangeError);
    assert.throws(() => any.vfioIommuMapDma!(fd, { vaddr: 1n << 64n, iova: 0, size: 4096, flags: 3 }), RangeError);
    assert.throws(() => any.vfioIommuUnmapDma!(fd, null), TypeError);
    // The positional forms (util.h's plain N-API): the same rules for each field.
    assert.throws(() => any.vfioIommuMapDmaAt!(fd, 0, 4096), TypeError, 'all five arguments');
    assert.throws(() => any.vfioIommuMapDmaAt!('3', 0, 4096, 1n, 3), TypeError);
    assert.throws(() => any.vfioIommuMapDmaAt!(fd, -1, 4096, 1n, 3), RangeError);
    assert.throws(() => any.vfioIommuMapDmaAt!(fd, 0, 4096.5, 1n, 3), RangeError);
    assert.throws(() => any.vfioIommuMapDmaAt!(fd, 0, 4096, 1n << 64n, 3), RangeError);
    assert.throws(() => any.vfioIommuMapDmaAt!(fd, 0, 4096, 'x', 3), TypeError);
    assert.throws(() => any.vfioIommuUnmapDmaAt!(fd, 0), TypeError);
    assert.throws(() => any.iommuIoasMapAt!(fd, 1, 0, 4096, undefined, 4), TypeError, 'userVa is required');
    assert.throws(() => any.iommuIoasUnmapAt!(fd, 1, 2 ** 53, 4096), RangeError);
    assert.throws(() => any.vfioGroupSetContainer!(fd, '3'), TypeError);
    assert.throws(() => any.vfioGroupGetDeviceFd!(fd, 42), TypeError);
    assert.throws(() => any.vfioDeviceGetRegionInfo!(fd), TypeError);
    assert.throws(() => any.vfioDeviceGetIrqInfo!(fd, '0'), TypeError);
    assert.throws(
      () => any.vfioDeviceSetIrqs!(fd, { index: 0, start: 0, flags: EVENTFD_TRIGGER }),
      TypeError,
      'fds missing',
    );
    assert.throws(
      () => any.vfioDeviceSetIrqs!(fd, { index: 0, start: 0, flags: EVENTFD_TRIGGER, fds: ['a'] }),
      TypeError,
    );
    assert.throws(
      () => any.vfioDeviceSetIrqs!(fd, { index: 0, start: 0, flags: EVENTFD_TRIGGER, fds: [1, 2], count: 3 }),
      RangeError,
    );
    assert.throws(
      () =>
        any.vfioDeviceSetIrqs!(fd, {
          index: 0,
          start: 0,
          flags: K('VFIO_IRQ_SET_DATA_BOOL') | K('VFIO_IRQ_SET_ACTION_MASK'),
        }),
      TypeError,
      'bools missing',
    );
    assert.throws(
      () =>
        any.vfioDeviceSetIrqs!(fd, {
          index: 0,
          start: 0,
          flags: K('VFIO_IRQ_SET_DATA_NONE') | K('VFIO_IRQ_SET_ACTION_UNMASK'),
        }),
      TypeError,
      'count missing',
    );
    assert.throws(
      () => any.vfioDeviceSetIrqs!(fd, { index: 0, start: 0, flags: K('VFIO_IRQ_SET_ACTION_TRIGGER'), count: 0 }),
      RangeError,
      'no data type',
    );
    assert.throws(() => any.vfioDeviceFeatureProbe!(fd, 0x10000, 0), RangeError, 'feature over 16 bits');
    assert.throws(() => any.vfioDeviceFeatureProbe!(fd, 1, 1 << 18), RangeError, 'access other than GET/SET');
    assert.throws(() => any.vfioDeviceMigSetState!(fd, 'STOP'), TypeError);
    assert.throws(() => any.vfioDeviceDmaLoggingStart!(fd, 4096, {}), TypeError, 'ranges not an array');
    assert.throws(() => any.vfioDeviceDmaLoggingStart!(fd, 4096, [{ iova: 0 }]), TypeError, 'length missing');
    assert.throws(() => any.vfioDeviceDmaLoggingReport!(fd, 0, 1 << 20, 3000), RangeError, 'page size');
    assert.throws(() => any.vfioDeviceDmaLoggingReport!(fd, 0, 0, 4096), RangeError, 'empty range');
    assert.throws(
      () =>
        any.vfioDeviceSetIrqs!(fd, {
          index: 0,
          start: 0,
          flags: K('VFIO_IRQ_SET_DATA_NONE') | K('VFIO_IRQ_SET_DATA_EVENTFD') | K('VFIO_IRQ_SET_ACTION_TRIGGER'),
          count: 0,
          fds: [],
        }),
      RangeError,
    );
    assert.throws(
      () => any.vfioDeviceSetIrqs!(fd, { index: 0, start: 0, flags: K('VFIO_IRQ_SET_DATA_NONE'), count: '1' }),
      TypeError,
    );
    assert.throws(() => any.vfioDevicePciHotReset!(fd, 3), TypeError);
    assert.throws(() => any.vfioDevicePciHotReset!(fd, ['x']), TypeError);
    assert.throws(() => any.iommuIoasMap!(fd, { ioasId: 1, flags: 0, length: 4096 }), TypeError, 'userVa is required');
    assert.throws(
      () => any.iommuIoasMap!(fd, { ioasId: 1, flags: K('IOMMU_IOAS_MAP_FIXED_IOVA'), userVa: 0n, length: 4096 }),
      TypeError,
      'iova required with FIXED_IOVA',
    );
    assert.throws(() => any.iommuIoasUnmap!(fd, { ioasId: 1, iova: 0 }), TypeError, 'length is required');
    assert.throws(() => any.iommuOption!(fd, { option: 1 }), TypeError, 'op is required');
    assert.throws(() => any.iommuOption!(fd, { option: 1, op: 0x10000 }), RangeError);
    assert.throws(() => any.iommuDestroy!(fd), TypeError);
    assert.throws(() => any.sendFds!(fd, 'abc', []), TypeError);
    assert.throws(() => any.sendFds!(fd, new Uint8Array(1), [fd, 'x']), TypeError);
    assert.throws(() => any.sendFds!(fd, new Uint8Array(0), [fd]), RangeError, 'fds need a data byte');
    assert.throws(() => any.sendFds!(fd, new Uint8Array(1), new Array(254).fill(fd)), RangeError);
    assert.throws(() => any.recvFds!(fd, 0, 0), RangeError);
    assert.throws(() => any.recvFds!(fd, 16, 254), RangeError);
    assert.throws(() => any.setNonBlocking!(fd, 1), TypeError);
  } finally {
    fs.closeSync(fd);
  }
});

test('constants: values from the 6.12 uapi', () => {
  const expected: Record<string, number> = {
    VFIO_API_VERSION: 0,
    VFIO_TYPE1_IOMMU: 1,
    VFIO_TYPE1v2_IOMMU: 3,
    VFIO_NOIOMMU_IOMMU: 8,
    VFIO_UNMAP_ALL: 9,
    VFIO_UPDATE_VADDR: 10,
    VFIO_GROUP_FLAGS_VIABLE: 1,
    VFIO_GROUP_FLAGS_CONTAINER_SET: 2,
    VFIO_DMA_MAP_FLAG_READ: 1,
    VFIO_DMA_MAP_FLAG_WRITE: 2,
    VFIO_DMA_UNMAP_FLAG_ALL: 2,
    VFIO_DEVICE_FLAGS_RESET: 1,
    VFIO_DEVICE_FLAGS_PCI: 2,
    VFIO_REGION_INFO_FLAG_READ: 1,
    VFIO_REGION_INFO_FLAG_WRITE: 2,
    VFIO_REGION_INFO_FLAG_MMAP: 4,
    VFIO_REGION_INFO_FLAG_CAPS: 8,
    VFIO_PCI_BAR0_REGION_INDEX: 0,
    VFIO_PCI_BAR5_REGION_INDEX: 5,
    VFIO_PCI_ROM_REGION_INDEX: 6,
    VFIO_PCI_CONFIG_REGION_INDEX: 7,
    VFIO_PCI_VGA_REGION_INDEX: 8,
    VFIO_PCI_NUM_REGIONS: 9,
    VFIO_PCI_INTX_IRQ_INDEX: 0,
    VFIO_PCI_MSI_IRQ_INDEX: 1,
    VFIO_PCI_MSIX_IRQ_INDEX: 2,
    VFIO_PCI_ERR_IRQ_INDEX: 3,
    VFIO_PCI_REQ_IRQ_INDEX: 4,
    VFIO_PCI_NUM_IRQS: 5,
    VFIO_IRQ_INFO_EVENTFD: 1,
    VFIO_IRQ_INFO_MASKABLE: 2,
    VFIO_IRQ_INFO_AUTOMASKED: 4,
    VFIO_IRQ_INFO_NORESIZE: 8,
    VFIO_IRQ_SET_DATA_NONE: 1,
    VFIO_IRQ_SET_DATA_BOOL: 2,
    VFIO_IRQ_SET_DATA_EVENTFD: 4,
    VFIO_IRQ_SET_ACTION_MASK: 8,
    VFIO_IRQ_SET_ACTION_UNMASK: 16,
    VFIO_IRQ_SET_ACTION_TRIGGER: 32,
    VFIO_REGION_TYPE_PCI_VENDOR_TYPE: 0x80000000,
    KVM_DEV_VFIO_FILE: 1,
    KVM_DEV_VFIO_FILE_ADD: 1,
    KVM_DEV_VFIO_FILE_DEL: 2,
    KVM_DEV_VFIO_GROUP: 1,
    KVM_DEV_VFIO_GROUP_ADD: 1,
    KVM_DEV_VFIO_GROUP_DEL: 2,
    IOMMU_IOAS_MAP_FIXED_IOVA: 1,
    IOMMU_IOAS_MAP_WRITEABLE: 2,
    IOMMU_IOAS_MAP_READABLE: 4,
    IOMMU_OPTION_RLIMIT_MODE: 0,
    IOMMU_OPTION_HUGE_PAGES: 1,
    IOMMU_OPTION_OP_SET: 0,
    IOMMU_OPTION_OP_GET: 1,
  };
  for (const [k, v] of Object.entries(expected)) assert.equal(c[k], v, k);
  // The KVM constants from kvm-vcpu.cc are still there (constants were merged, not replaced).
  assert.equal(typeof c.KVM_EXIT_IO, 'number');
});

// ---------------------------------------------------------------------------------------------
// Fake kernel (LD_PRELOAD): struct layouts, argsz retries, capability chains

// Container/group ioctls and device ioctls share numbers (VFIO_BASE + 12 is both
// VFIO_IOMMU_GET_INFO and VFIO_DEVICE_GET_PCI_HOT_RESET_INFO), so the fake device is its own fd.
const VFIO_FD = 4242,
  IOMMU_FD = 4243,
  DEVICE_FD = 4244;

// Emulates the 6.12 handlers (vfio_iommu_type1_get_info, vfio_pci_ioctl_get_region_info,
// vfio_info_cap_add/shift, iommufd_ioas_iova_ranges, ...) closely enough for the wrappers.
const SHIM_C = String.raw`
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/vfio.h>
#include <linux/iommufd.h>

#define VFIO_FD ${VFIO_FD}
#define IOMMU_FD ${IOMMU_FD}
#define DEVICE_FD ${DEVICE_FD}
#define ENDOF(t, f) (offsetof(t, f) + sizeof(((t *)0)->f))

static void logbuf(const char *name, const void *p, size_t n) {
  const char *path = getenv("SHIM_LOG");
  if (!path) return;
  FILE *f = fopen(path, "a");
  if (!f) return;
  fprintf(f, "%s ", name);
  for (size_t i = 0; i < n; i++) fprintf(f, "%02x", ((const uint8_t *)p)[i]);
  fprintf(f, "\n");
  fclose(f);
}

struct caps { uint8_t buf[4096]; size_t size; };
static void *cap_add(struct caps *c, size_t size, uint16_t id, uint16_t version) {
  size = (size + 7) & ~(size_t)7;
  struct vfio_info_cap_header *h = (void *)(c->buf + c->size), *t;
  memset(h, 0, size);
  h->id = id;
  h->version = version;
  for (t = (void *)c->buf; t->next; t = (void *)(c->buf + t->next)) {}
  t->next = c->size;
  c->size += size;
  return h;
}
static void cap_shift(struct caps *c, size_t off) {
  struct vfio_info_cap_header *t;
  for (t = (void *)c->buf; t->next; t = (void *)(c->buf + t->next - off)) t->next += off;
}
static int fail(int e) { errno = e; return -1; }

static int vfio(unsigned long req, void *arg) {
  switch (req) {
  case VFIO_GET_API_VERSION: return VFIO_API_VERSION;
  case VFIO_CHECK_EXTENSION: return ((unsigned long)arg == VFIO_TYPE1v2_IOMMU || (unsigned long)arg == VFIO_UNMAP_ALL) ? 1 : 0;
  case VFIO_SET_IOMMU: { unsigned long a = (unsigned long)arg; logbuf("SET_IOMMU", &a, sizeof(a)); return 0; }
  case VFIO_IOMMU_GET_INFO: {
    struct vfio_iommu_type1_info info = {0};
    size_t minsz = ENDOF(struct vfio_iommu_type1_info, iova_pgsizes);
    memcpy(&info, arg, minsz);
    logbuf("IOMMU_GET_INFO", arg, 4);
    if (info.argsz < minsz) return fail(EINVAL);
    minsz = info.argsz < sizeof(info) ? info.argsz : sizeof(info);
    info.flags = VFIO_IOMMU_INFO_PGSIZES;
    info.iova_pgsizes = 0x40201000ull;
    struct caps c = {0};
    struct vfio_iommu_type1_info_cap_migration *mig = cap_add(&c, sizeof(*mig), VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, 1);
    mig->pgsize_bitmap = 0x1000; mig->max_dirty_bitmap_size = 0x8000000;
    struct vfio_iommu_type1_info_dma_avail *av = cap_add(&c, sizeof(*av), VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, 1);
    av->avail = 65000;
    struct vfio_iommu_type1_info_cap_iova_range *ir = cap_add(&c, sizeof(*ir) + 2 * sizeof(struct vfio_iova_range), VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 1);
    ir->nr_iovas = 2;
    ir->iova_ranges[0].start = 0; ir->iova_ranges[0].end = 0xfedfffffull;
    ir->iova_ranges[1].start = 0xfef00000ull; ir->iova_ranges[1].end = 0x7fffffffffull;
    info.flags |= VFIO_IOMMU_INFO_CAPS;
    if (info.argsz < sizeof(info) + c.size) {
      info.argsz = sizeof(info) + c.size;
    } else {
      cap_shift(&c, sizeof(info));
      memcpy((uint8_t *)arg + sizeof(info), c.buf, c.size);
      info.cap_offset = sizeof(info);
    }
    memcpy(arg, &info, minsz);
    return 0;
  }
  case VFIO_IOMMU_MAP_DMA: {
    struct vfio_iommu_type1_dma_map *m = arg;
    logbuf("MAP_DMA", arg, m->argsz);
    return m->argsz < sizeof(*m) ? fail(EINVAL) : 0;
  }
  case VFIO_IOMMU_UNMAP_DMA: {
    struct vfio_iommu_type1_dma_unmap *u = arg;
    logbuf("UNMAP_DMA", arg, u->argsz);
    if (u->argsz < ENDOF(struct vfio_iommu_type1_dma_unmap, size)) return fail(EINVAL);
    if (u->flags & VFIO_DMA_UNMAP_FLAG_ALL) { if (u->iova || u->size) return fail(EINVAL); u->size = 0x123000; }
    return 0;
  }
  case VFIO_GROUP_GET_STATUS: {
    struct vfio_group_status *s = arg;
    logbuf("GROUP_GET_STATUS", arg, sizeof(*s));
    if (s->argsz < sizeof(*s)) return fail(EINVAL);
    s->flags = VFIO_GROUP_FLAGS_VIABLE | VFIO_GROUP_FLAGS_CONTAINER_SET;
    return 0;
  }
  case VFIO_GROUP_SET_CONTAINER: logbuf("SET_CONTAINER", arg, 4); return 0;
  case VFIO_GROUP_UNSET_CONTAINER: logbuf("UNSET_CONTAINER", "", 0); return 0;
  case VFIO_GROUP_GET_DEVICE_FD: logbuf("GET_DEVICE_FD", arg, strlen(arg) + 1); return 77;
  }
  return fail(ENOTTY);
}

static int device(unsigned long req, void *arg) {
  switch (req) {
  case VFIO_DEVICE_GET_INFO: {
    struct vfio_device_info *d = arg;
    if (d->argsz < ENDOF(struct vfio_device_info, num_irqs)) return fail(EINVAL);
    d->flags = VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET;
    d->num_regions = VFIO_PCI_NUM_REGIONS + 1;
    d->num_irqs = VFIO_PCI_NUM_IRQS;
    return 0;
  }
  case VFIO_DEVICE_GET_REGION_INFO: {
    struct vfio_region_info info = {0};
    size_t minsz = ENDOF(struct vfio_region_info, offset);
    memcpy(&info, arg, minsz);
    char name[32]; snprintf(name, sizeof(name), "REGION_INFO_%u", info.index);
    logbuf(name, arg, 4);
    if (info.argsz < minsz) return fail(EINVAL);
    struct caps c = {0};
    info.offset = (uint64_t)info.index << 40;
    switch (info.index) {
    case 0: {
      info.size = 0x4000;
      info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP;
      cap_add(&c, sizeof(struct vfio_info_cap_header), VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1);
      struct vfio_region_info_cap_sparse_mmap *sp = cap_add(&c, sizeof(*sp) + 2 * sizeof(sp->areas[0]), VFIO_REGION_INFO_CAP_SPARSE_MMAP, 1);
      sp->nr_areas = 2;
      sp->areas[0].offset = 0; sp->areas[0].size = 0x1000;
      sp->areas[1].offset = 0x3000; sp->areas[1].size = 0x1000;
      break;
    }
    case 1: info.size = 0; info.flags = 0; break;
    case VFIO_PCI_CONFIG_REGION_INDEX: info.size = 256; info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE; break;
    case VFIO_PCI_NUM_REGIONS: {
      info.size = 0x2000;
      info.flags = VFIO_REGION_INFO_FLAG_READ;
      struct vfio_region_info_cap_type *t = cap_add(&c, sizeof(*t), VFIO_REGION_INFO_CAP_TYPE, 1);
      t->type = VFIO_REGION_TYPE_PCI_VENDOR_TYPE | 0x8086;
      t->subtype = VFIO_REGION_SUBTYPE_INTEL_IGD_OPREGION;
      break;
    }
    default: return fail(EINVAL);
    }
    if (c.size) {
      info.flags |= VFIO_REGION_INFO_FLAG_CAPS;
      if (info.argsz < sizeof(info) + c.size) {
        info.argsz = sizeof(info) + c.size;
        info.cap_offset = 0;
      } else {
        cap_shift(&c, sizeof(info));
        memcpy((uint8_t *)arg + sizeof(info), c.buf, c.size);
        info.cap_offset = sizeof(info);
      }
    }
    memcpy(arg, &info, minsz);
    return 0;
  }
  case VFIO_DEVICE_GET_IRQ_INFO: {
    struct vfio_irq_info *q = arg;
    if (q->argsz < sizeof(*q) || q->index >= VFIO_PCI_NUM_IRQS) return fail(EINVAL);
    static const uint32_t flags[] = { VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED,
      VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE, VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_EVENTFD };
    static const uint32_t count[] = { 1, 4, 8, 1, 1 };
    q->flags = flags[q->index];
    q->count = count[q->index];
    return 0;
  }
  case VFIO_DEVICE_SET_IRQS: {
    struct vfio_irq_set *s = arg;
    logbuf("SET_IRQS", arg, s->argsz);
    size_t sz = (s->flags & VFIO_IRQ_SET_DATA_EVENTFD) ? 4 : (s->flags & VFIO_IRQ_SET_DATA_BOOL) ? 1 : 0;
    if (s->argsz < sizeof(*s) || s->argsz - sizeof(*s) < sz * s->count) return fail(EINVAL);
    return 0;
  }
  case VFIO_DEVICE_RESET: logbuf("RESET", "", 0); return 0;
  case VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: {
    struct vfio_pci_hot_reset_info *h = arg;
    logbuf("HOT_RESET_INFO", arg, 4);
    const uint32_t count = 10;
    if (h->argsz < ENDOF(struct vfio_pci_hot_reset_info, count)) return fail(EINVAL);
    h->flags = 0;
    if (h->argsz < sizeof(*h) + count * sizeof(h->devices[0])) { h->count = count; return fail(ENOSPC); }
    h->count = count;
    for (uint32_t i = 0; i < count; i++) {
      h->devices[i].group_id = 20 + i; h->devices[i].segment = 0; h->devices[i].bus = 1; h->devices[i].devfn = (uint8_t)(i << 3);
    }
    return 0;
  }
  case VFIO_DEVICE_PCI_HOT_RESET: { struct vfio_pci_hot_reset *r = arg; logbuf("HOT_RESET", arg, r->argsz); return 0; }
  case VFIO_DEVICE_BIND_IOMMUFD: {
    struct vfio_device_bind_iommufd *b = arg;
    logbuf("BIND", arg, b->argsz);
    if (b->argsz < ENDOF(struct vfio_device_bind_iommufd, iommufd) || b->flags) return fail(EINVAL);
    b->out_devid = 5;
    return 0;
  }
  case VFIO_DEVICE_ATTACH_IOMMUFD_PT: {
    struct vfio_device_attach_iommufd_pt *a = arg;
    logbuf("ATTACH", arg, a->argsz);
    if (a->argsz < ENDOF(struct vfio_device_attach_iommufd_pt, pt_id) || a->flags) return fail(EINVAL);
    a->pt_id += 100;
    return 0;
  }
  case VFIO_DEVICE_DETACH_IOMMUFD_PT: {
    struct vfio_device_detach_iommufd_pt *d = arg;
    logbuf("DETACH", arg, d->argsz);
    return d->argsz < sizeof(*d) || d->flags ? fail(EINVAL) : 0;
  }
  }
  return fail(ENOTTY);
}

static int iommu(unsigned long req, void *arg) {
  switch (req) {
  case IOMMU_IOAS_ALLOC: {
    struct iommu_ioas_alloc *a = arg;
    logbuf("IOAS_ALLOC", arg, a->size);
    if (a->size != sizeof(*a)) return fail(EINVAL);
    a->out_ioas_id = 3;
    return 0;
  }
  case IOMMU_DESTROY: logbuf("DESTROY", arg, ((struct iommu_destroy *)arg)->size); return 0;
  case IOMMU_IOAS_IOVA_RANGES: {
    struct iommu_ioas_iova_ranges *r = arg;
    logbuf("IOVA_RANGES", arg, r->size);
    if (r->size != sizeof(*r) || r->__reserved) return fail(EINVAL);
    uint32_t max = r->num_iovas, total = 10;
    struct iommu_iova_range *out = (void *)(uintptr_t)r->allowed_iovas;
    r->num_iovas = 0;
    r->out_iova_alignment = 4096;
    for (uint32_t i = 0; i < total; i++) {
      if (r->num_iovas < max) { out[r->num_iovas].start = (uint64_t)i << 32; out[r->num_iovas].last = ((uint64_t)i << 32) + 0xfffff; }
      r->num_iovas++;
    }
    return r->num_iovas > max ? fail(EMSGSIZE) : 0;
  }
  case IOMMU_IOAS_MAP: {
    struct iommu_ioas_map *m = arg;
    logbuf("IOAS_MAP", arg, m->size);
    if (m->size != sizeof(*m)) return fail(EINVAL);
    if (!(m->flags & IOMMU_IOAS_MAP_FIXED_IOVA)) m->iova = 0x7000000;
    return 0;
  }
  case IOMMU_IOAS_UNMAP: {
    struct iommu_ioas_unmap *u = arg;
    logbuf("IOAS_UNMAP", arg, u->size);
    if (u->iova == 0 && u->length == UINT64_MAX) u->length = 0x200000;
    return 0;
  }
  case IOMMU_OPTION: {
    struct iommu_option *o = arg;
    logbuf("OPTION", arg, o->size);
    if (o->op == IOMMU_OPTION_OP_GET) o->val64 = 1;
    return 0;
  }
  }
  return fail(ENOTTY);
}

int ioctl(int fd, unsigned long req, ...) {
  va_list ap;
  va_start(ap, req);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  if (fd == VFIO_FD) return vfio(req, arg);
  if (fd == IOMMU_FD) return iommu(req, arg);
  if (fd == DEVICE_FD) return device(req, arg);
  return (int)syscall(SYS_ioctl, fd, req, arg);
}
`;

// Runs in a child node with the shim preloaded; prints the wrappers' results as JSON.
const CHILD_JS = `
const { native } = await import(process.env.NATIVE_JS);
const n = native(), c = n.constants, V = ${VFIO_FD}, I = ${IOMMU_FD}, D = ${DEVICE_FD};
const out = {};
const err = (f) => { try { f(); return null; } catch (e) { return { code: e.code, syscall: e.syscall }; } };
out.apiVersion = n.vfioGetApiVersion(V);
out.ext = [n.vfioCheckExtension(V, c.VFIO_TYPE1v2_IOMMU), n.vfioCheckExtension(V, c.VFIO_TYPE1_IOMMU)];
n.vfioSetIommu(V, c.VFIO_TYPE1v2_IOMMU);
out.iommuInfo = n.vfioIommuGetInfo(V);
n.vfioIommuMapDma(V, { vaddr: 0x7f1234560000n, iova: 0x100000000, size: 0x40000000n, flags: c.VFIO_DMA_MAP_FLAG_READ | c.VFIO_DMA_MAP_FLAG_WRITE });
out.unmapped = n.vfioIommuUnmapDma(V, { iova: 0x100000, size: 0x2000, flags: 0 });
out.unmappedAll = n.vfioIommuUnmapDma(V, { iova: 0, size: 0, flags: c.VFIO_DMA_UNMAP_FLAG_ALL });
n.vfioIommuMapDmaAt(V, 0x200000, 0x3000, 0x7f1234570000n, c.VFIO_DMA_MAP_FLAG_READ);
out.unmappedAt = n.vfioIommuUnmapDmaAt(V, 0x200000, 0x3000);
out.groupStatus = n.vfioGroupGetStatus(V);
n.vfioGroupSetContainer(V, 0x1234);
out.deviceFd = n.vfioGroupGetDeviceFd(V, '0000:00:04.0');
n.vfioGroupUnsetContainer(V);
out.deviceInfo = n.vfioDeviceGetInfo(D);
out.regions = [0, 1, c.VFIO_PCI_CONFIG_REGION_INDEX, c.VFIO_PCI_NUM_REGIONS].map((i) => n.vfioDeviceGetRegionInfo(D, i));
out.badRegion = err(() => n.vfioDeviceGetRegionInfo(D, 12));
out.irqs = [0, 1, 2].map((i) => n.vfioDeviceGetIrqInfo(D, i));
n.vfioDeviceSetIrqs(D, { index: c.VFIO_PCI_MSIX_IRQ_INDEX, start: 1, flags: c.VFIO_IRQ_SET_DATA_EVENTFD | c.VFIO_IRQ_SET_ACTION_TRIGGER, fds: [10, -1, 0x7fffffff] });
n.vfioDeviceSetIrqs(D, { index: c.VFIO_PCI_INTX_IRQ_INDEX, start: 0, flags: c.VFIO_IRQ_SET_DATA_NONE | c.VFIO_IRQ_SET_ACTION_UNMASK, count: 1 });
n.vfioDeviceSetIrqs(D, { index: c.VFIO_PCI_MSI_IRQ_INDEX, start: 0, flags: c.VFIO_IRQ_SET_DATA_BOOL | c.VFIO_IRQ_SET_ACTION_MASK, bools: [true, false, true] });
n.vfioDeviceSetIrqs(D, { index: c.VFIO_PCI_MSIX_IRQ_INDEX, start: 0, flags: c.VFIO_IRQ_SET_DATA_NONE | c.VFIO_IRQ_SET_ACTION_TRIGGER, count: 0 });
n.vfioDeviceReset(D);
out.hotReset = n.vfioDeviceGetPciHotResetInfo(D);
n.vfioDevicePciHotReset(D, [7, 8]);
out.devid = n.vfioDeviceBindIommufd(D, 99);
out.ptId = n.vfioDeviceAttachIommufdPt(D, 3);
n.vfioDeviceDetachIommufdPt(D);
out.ioas = n.iommuIoasAlloc(I);
out.ranges = n.iommuIoasIovaRanges(I, 3);
out.mapAuto = n.iommuIoasMap(I, { ioasId: 3, flags: c.IOMMU_IOAS_MAP_READABLE | c.IOMMU_IOAS_MAP_WRITEABLE, userVa: 0x7f0000000000n, length: 0x200000 });
out.mapFixed = n.iommuIoasMap(I, { ioasId: 3, flags: c.IOMMU_IOAS_MAP_FIXED_IOVA | c.IOMMU_IOAS_MAP_READABLE, userVa: 0x7f0000400000n, length: 0x1000, iova: 0xfee00000 });
out.unmapAll = n.iommuIoasUnmap(I, { ioasId: 3, iova: 0, length: 0xffffffffffffffffn });
n.iommuIoasMapAt(I, 3, 0x300000, 0x2000, 0x7f0000800000n, c.IOMMU_IOAS_MAP_READABLE | c.IOMMU_IOAS_MAP_WRITEABLE);
out.unmapAt = n.iommuIoasUnmapAt(I, 3, 0x300000, 0x2000);
out.option = n.iommuOption(I, { option: c.IOMMU_OPTION_HUGE_PAGES, op: c.IOMMU_OPTION_OP_GET, objectId: 3 });
n.iommuDestroy(I, 3);
process.stdout.write(JSON.stringify(out, (k, v) => typeof v === 'bigint' ? 'n' + v.toString(16) : v));
`;

interface ShimRun {
  out: Record<string, unknown>;
  log: { name: string; buf: Buffer }[];
}

function runWithShim(): ShimRun | string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-vfio-shim-'));
  try {
    fs.writeFileSync(path.join(dir, 'shim.c'), SHIM_C);
    const so = path.join(dir, 'shim.so');
    const cc = spawnSync(
      'cc',
      [
        '-shared',
        '-fPIC',
        '-O1',
        '-Wall',
        '-I',
        path.join(projectRoot, 'native/include'),
        '-o',
        so,
        path.join(dir, 'shim.c'),
      ],
      { encoding: 'utf8' },
    );
    if (cc.error || cc.status !== 0) return `cannot build the LD_PRELOAD shim: ${cc.error?.message ?? cc.stderr}`;
    const logPath = path.join(dir, 'log');
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', CHILD_JS], {
      encoding: 'utf8',
      env: {
        ...process.env,
        LD_PRELOAD: so,
        SHIM_LOG: logPath,
        NATIVE_JS: new URL('../../core/native.js', import.meta.url).href,
      },
    });
    assert.equal(r.status, 0, `child failed: ${r.stderr}`);
    const log = fs.existsSync(logPath)
      ? fs
          .readFileSync(logPath, 'utf8')
          .trim()
          .split('\n')
          .map((l) => {
            const [name, hex = ''] = l.split(' ');
            return { name: name!, buf: Buffer.from(hex, 'hex') };
          })
      : [];
    return { out: JSON.parse(r.stdout) as Record<string, unknown>, log };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test('fake kernel: struct marshalling, argsz retries, capability chains', (t) => {
  const run = runWithShim();
  if (typeof run === 'string') {
    t.skip(run);
    return;
  }
  const { out, log } = run;
  const entries = (name: string) => log.filter((l) => l.name === name).map((l) => l.buf);
  const u32 = (b: Buffer, off: number) => b.readUInt32LE(off);
  const u64 = (b: Buffer, off: number) => b.readBigUInt64LE(off);

  assert.equal(out.apiVersion, 0);
  assert.deepEqual(out.ext, [1, 0]);
  assert.deepEqual(
    entries('SET_IOMMU').map((b) => u64(b, 0)),
    [3n],
  );

  // VFIO_IOMMU_GET_INFO: first with argsz = sizeof (24), then with the size the kernel asked
  // for: 24 + migration cap (32) + dma_avail (12 → 16) + iova range (16 + 2 * 16) = 120.
  assert.deepEqual(
    entries('IOMMU_GET_INFO').map((b) => u32(b, 0)),
    [24, 120],
  );
  assert.deepEqual(out.iommuInfo, {
    flags: 3,
    iovaPgsizes: 'n40201000',
    dmaAvail: 65000,
    iovaRanges: [
      { start: 'n0', end: 'nfedfffff' },
      { start: 'nfef00000', end: 'n7fffffffff' },
    ],
  });

  // vfio_iommu_type1_dma_map: argsz, flags, vaddr, iova, size
  const [map, mapAt] = entries('MAP_DMA');
  assert.equal(map!.length, 32);
  assert.deepEqual(
    [u32(map!, 0), u32(map!, 4), u64(map!, 8), u64(map!, 16), u64(map!, 24)],
    [32, 3, 0x7f1234560000n, 0x100000000n, 0x40000000n],
  );
  assert.deepEqual(
    [mapAt!.length, u32(mapAt!, 0), u32(mapAt!, 4), u64(mapAt!, 8), u64(mapAt!, 16), u64(mapAt!, 24)],
    [32, 32, 1, 0x7f1234570000n, 0x200000n, 0x3000n],
    'the positional form fills the same struct',
  );
  const unmaps = entries('UNMAP_DMA');
  assert.deepEqual(
    unmaps.map((b) => [b.length, u32(b, 0), u32(b, 4), u64(b, 8), u64(b, 16)]),
    [
      [24, 24, 0, 0x100000n, 0x2000n],
      [24, 24, 2, 0n, 0n],
      [24, 24, 0, 0x200000n, 0x3000n],
    ],
  );
  assert.equal(out.unmapped, 'n2000', 'returns the size the kernel wrote back');
  assert.equal(out.unmappedAll, 'n123000');
  assert.equal(out.unmappedAt, 0x3000, 'the positional form returns a number');

  assert.deepEqual(out.groupStatus, { flags: 3 });
  assert.deepEqual(
    entries('GROUP_GET_STATUS').map((b) => u32(b, 0)),
    [8],
  );
  assert.deepEqual(
    entries('SET_CONTAINER').map((b) => b.readInt32LE(0)),
    [0x1234],
  );
  assert.deepEqual(
    entries('GET_DEVICE_FD').map((b) => b.toString('latin1')),
    ['0000:00:04.0\0'],
  );
  assert.equal(out.deviceFd, 77);
  assert.equal(entries('UNSET_CONTAINER').length, 1);

  assert.deepEqual(out.deviceInfo, { flags: 3, numRegions: 10, numIrqs: 5 });

  // Region info: BAR0 has MSIX_MAPPABLE (8) + sparse mmap (16 + 2 * 16) → argsz 32 + 56 = 88.
  assert.deepEqual(
    entries('REGION_INFO_0').map((b) => u32(b, 0)),
    [32, 88],
  );
  assert.deepEqual(
    entries('REGION_INFO_1').map((b) => u32(b, 0)),
    [32],
    'no retry without caps',
  );
  assert.deepEqual(
    entries('REGION_INFO_9').map((b) => u32(b, 0)),
    [32, 48],
  );
  assert.deepEqual(out.regions, [
    {
      index: 0,
      flags: 0xf,
      size: 'n4000',
      offset: 'n0',
      caps: {
        sparseMmap: [
          { offset: 'n0', size: 'n1000' },
          { offset: 'n3000', size: 'n1000' },
        ],
        msixMappable: true,
      },
    },
    { index: 1, flags: 0, size: 'n0', offset: 'n10000000000', caps: { msixMappable: false } },
    { index: 7, flags: 3, size: 'n100', offset: 'n70000000000', caps: { msixMappable: false } },
    {
      index: 9,
      flags: 9,
      size: 'n2000',
      offset: 'n90000000000',
      caps: { type: { type: 0x80008086, subtype: 1 }, msixMappable: false },
    },
  ]);
  assert.deepEqual(out.badRegion, { code: 'EINVAL', syscall: 'ioctl(VFIO_DEVICE_GET_REGION_INFO)' });

  assert.deepEqual(out.irqs, [
    { index: 0, flags: 7, count: 1 },
    { index: 1, flags: 9, count: 4 },
    { index: 2, flags: 9, count: 8 },
  ]);

  // vfio_irq_set: argsz, flags, index, start, count, then the payload at offset 20.
  const sets = entries('SET_IRQS').map((b) => ({
    len: b.length,
    hdr: [0, 4, 8, 12, 16].map((o) => u32(b, o)),
    data: b.subarray(20),
  }));
  assert.equal(sets.length, 4);
  assert.deepEqual(sets[0]!.hdr, [32, 0x24, 2, 1, 3]);
  assert.deepEqual(
    [0, 4, 8].map((o) => sets[0]!.data.readInt32LE(o)),
    [10, -1, 0x7fffffff],
  );
  assert.deepEqual(sets[1]!.hdr, [20, 0x11, 0, 0, 1]);
  assert.deepEqual(sets[2]!.hdr, [23, 0x0a, 1, 0, 3]);
  assert.deepEqual([...sets[2]!.data], [1, 0, 1]);
  assert.deepEqual(sets[3]!.hdr, [20, 0x21, 2, 0, 0]);
  assert.equal(entries('RESET').length, 1);

  // Hot reset info: 8 slots first (ENOSPC, count = 10), then 12 + 10 * 8.
  assert.deepEqual(
    entries('HOT_RESET_INFO').map((b) => u32(b, 0)),
    [12 + 8 * 8, 12 + 10 * 8],
  );
  const hr = out.hotReset as { flags: number; devices: unknown[] };
  assert.equal(hr.flags, 0);
  assert.equal(hr.devices.length, 10);
  assert.deepEqual(hr.devices[3], { groupId: 23, segment: 0, bus: 1, devfn: 0x18 });
  const [hot] = entries('HOT_RESET');
  assert.deepEqual(
    [hot!.length, u32(hot!, 0), u32(hot!, 4), u32(hot!, 8), hot!.readInt32LE(12), hot!.readInt32LE(16)],
    [20, 20, 0, 2, 7, 8],
  );

  assert.equal(out.devid, 5);
  assert.deepEqual(
    entries('BIND').map((b) => [b.length, u32(b, 0), u32(b, 4), b.readInt32LE(8)]),
    [[16, 16, 0, 99]],
  );
  assert.equal(out.ptId, 103, 'returns the pt_id the kernel wrote back');
  assert.deepEqual(
    entries('ATTACH').map((b) => [b.length, u32(b, 0), u32(b, 4), u32(b, 8)]),
    [[12, 12, 0, 3]],
  );
  assert.deepEqual(
    entries('DETACH').map((b) => [b.length, u32(b, 0), u32(b, 4)]),
    [[8, 8, 0]],
  );

  // iommufd
  assert.equal(out.ioas, 3);
  assert.deepEqual(
    entries('IOAS_ALLOC').map((b) => u32(b, 0)),
    [12],
  );
  const ranges = out.ranges as { ranges: { start: string; last: string }[]; outIovaAlignment: string };
  assert.deepEqual(
    entries('IOVA_RANGES').map((b) => [u32(b, 0), u32(b, 4)]),
    [
      [32, 3],
      [32, 3],
    ],
    'EMSGSIZE retry',
  );
  assert.equal(ranges.ranges.length, 10);
  assert.deepEqual(ranges.ranges[9], { start: 'n900000000', last: 'n9000fffff' });
  assert.equal(ranges.outIovaAlignment, 'n1000');
  const maps = entries('IOAS_MAP').map((b) => [
    b.length,
    u32(b, 0),
    u32(b, 4),
    u32(b, 8),
    u32(b, 12),
    u64(b, 16),
    u64(b, 24),
    u64(b, 32),
  ]);
  assert.deepEqual(maps, [
    [40, 40, 6, 3, 0, 0x7f0000000000n, 0x200000n, 0n],
    [40, 40, 5, 3, 0, 0x7f0000400000n, 0x1000n, 0xfee00000n],
    [40, 40, 7, 3, 0, 0x7f0000800000n, 0x2000n, 0x300000n], // the positional form: always FIXED_IOVA
  ]);
  assert.equal(out.mapAuto, 'n7000000');
  assert.equal(out.mapFixed, 'nfee00000');
  assert.deepEqual(
    entries('IOAS_UNMAP').map((b) => [b.length, u32(b, 0), u32(b, 4), u64(b, 8), u64(b, 16)]),
    [
      [24, 24, 3, 0n, 0xffffffffffffffffn],
      [24, 24, 3, 0x300000n, 0x2000n],
    ],
  );
  assert.equal(out.unmapAll, 'n200000');
  assert.equal(out.unmapAt, 0x2000);
  assert.deepEqual(
    entries('OPTION').map((b) => [
      b.length,
      u32(b, 0),
      u32(b, 4),
      b.readUInt16LE(8),
      b.readUInt16LE(10),
      u32(b, 12),
      u64(b, 16),
    ]),
    [[24, 24, 1, 1, 0, 3, 0n]],
  );
  assert.equal(out.option, 'n1');
  assert.deepEqual(
    entries('DESTROY').map((b) => [u32(b, 0), u32(b, 4)]),
    [[8, 3]],
  );
});

// ---------------------------------------------------------------------------------------------
// fd passing

const fdCount = () => fs.readdirSync('/proc/self/fd').length;
const fdFlags = (fd: number) =>
  parseInt(/^flags:\s+([0-7]+)/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!, 8);
const O_CLOEXEC = 0o2000000,
  O_NONBLOCK = 0o4000;

test('sendFds/recvFds pass an eventfd and a memfd as new fds on the same files', () => {
  const [a, b] = n.socketpair();
  const efd = n.eventfd(0, 0);
  const mfd = n.memfdCreate('tsvmm-fdpass', MFD_CLOEXEC);
  const got: number[] = [];
  try {
    assert.ok(fdFlags(a) & O_CLOEXEC, 'socketpair fds are close-on-exec');
    fs.writeSync(mfd, 'hello memfd');
    assert.equal(n.sendFds(a, new Uint8Array([1, 2, 3]), [efd, mfd]), 3);
    const r = n.recvFds(b, 16, 4);
    got.push(...r.fds);
    assert.ok(r.data instanceof Uint8Array);
    assert.deepEqual([...r.data], [1, 2, 3]);
    assert.equal(r.truncated, false);
    assert.equal(r.fds.length, 2);
    const [e2, m2] = r.fds as [number, number];
    assert.equal(new Set([efd, mfd, e2, m2, a, b]).size, 6, 'received fds are new numbers');
    for (const fd of r.fds) assert.ok(fdFlags(fd) & O_CLOEXEC, 'MSG_CMSG_CLOEXEC');
    const sm = fs.fstatSync(mfd),
      sm2 = fs.fstatSync(m2);
    assert.equal(sm2.ino, sm.ino);
    assert.equal(sm2.dev, sm.dev);
    const se = fs.fstatSync(efd),
      se2 = fs.fstatSync(e2);
    assert.equal(se2.ino, se.ino);
    assert.equal(se2.rdev, se.rdev);
    // Same eventfd: a write through one fd is read through the other.
    const buf = Buffer.alloc(8);
    buf.writeBigUInt64LE(5n);
    fs.writeSync(efd, buf);
    buf.fill(0);
    assert.equal(fs.readSync(e2, buf, 0, 8, null), 8);
    assert.equal(buf.readBigUInt64LE(), 5n);
    // Same memfd: contents written before sending are there.
    const text = Buffer.alloc(11);
    fs.readSync(m2, text, 0, 11, 0);
    assert.equal(text.toString(), 'hello memfd');
    // Data without fds, and a Uint8Array view at an offset.
    const big = new Uint8Array([9, 9, 7, 8, 9]);
    assert.equal(n.sendFds(a, big.subarray(2), []), 3);
    const r2 = n.recvFds(b, 2, 0);
    assert.deepEqual([...r2.data], [7, 8], 'reads at most maxData');
    assert.deepEqual(r2.fds, []);
    assert.deepEqual([...n.recvFds(b, 16, 0).data], [9]);
    // Into the caller's buffer (at an offset): data is a view of it, no new memory.
    const into = new Uint8Array(32).subarray(4, 20);
    n.sendFds(a, new Uint8Array([3, 1, 4]), []);
    const r3 = n.recvFds(b, 16, 0, into);
    assert.deepEqual([...r3.data], [3, 1, 4]);
    assert.equal(r3.data.buffer, into.buffer);
    assert.equal(r3.data.byteOffset, 4);
    assert.throws(() => n.recvFds(b, 17, 0, into), /smaller than maxData/);
    assert.throws(() => n.recvFds(b, 4, 0, new Uint16Array(4) as unknown as Uint8Array), /must be a Uint8Array/);
  } finally {
    for (const fd of [a, b, efd, mfd, ...got]) fs.closeSync(fd);
  }
});

test('recvFds: exactly maxFds is not truncated; more fds than maxFds are closed and reported truncated', () => {
  const [a, b] = n.socketpair();
  const e1 = n.eventfd(0, 0),
    e2 = n.eventfd(0, 0),
    e3 = n.eventfd(0, 0);
  try {
    n.sendFds(a, new Uint8Array([1]), [e1, e2]);
    const exact = n.recvFds(b, 8, 2);
    assert.equal(exact.truncated, false);
    assert.equal(exact.fds.length, 2);
    for (const fd of exact.fds) fs.closeSync(fd);

    const before = fdCount();
    n.sendFds(a, new Uint8Array([2]), [e1, e2]); // 2 fds, room for 1 (CMSG_SPACE padding would fit 2)
    const r1 = n.recvFds(b, 8, 1);
    assert.equal(r1.truncated, true);
    assert.deepEqual(r1.fds, []);
    assert.deepEqual([...r1.data], [2]);
    n.sendFds(a, new Uint8Array([3]), [e1, e2, e3]);
    const r2 = n.recvFds(b, 8, 2);
    assert.equal(r2.truncated, true);
    assert.deepEqual(r2.fds, []);
    n.sendFds(a, new Uint8Array([4]), [e3]);
    const r3 = n.recvFds(b, 8, 0);
    assert.equal(r3.truncated, true);
    assert.deepEqual([...r3.data], [4]);
    assert.equal(fdCount(), before, 'no received fd leaked');
  } finally {
    for (const fd of [a, b, e1, e2, e3]) fs.closeSync(fd);
  }
});

test('non-blocking socket: recvFds throws EAGAIN; EOF gives empty data; errors name the syscall', () => {
  const [a, b] = n.socketpair();
  try {
    n.setNonBlocking(b, true);
    assert.ok(fdFlags(b) & O_NONBLOCK);
    expectSyscallError(() => n.recvFds(b, 16, 1), 'EAGAIN', 'recvmsg');
    n.sendFds(a, new Uint8Array([42]), []);
    assert.deepEqual([...n.recvFds(b, 16, 1).data], [42]);
    n.setNonBlocking(b, false);
    assert.equal(fdFlags(b) & O_NONBLOCK, 0);
    fs.closeSync(a);
    const eof = n.recvFds(b, 16, 1);
    assert.equal(eof.data.length, 0);
    assert.deepEqual(eof.fds, []);
    expectSyscallError(() => n.sendFds(b, new Uint8Array([1]), []), 'EPIPE', 'sendmsg');
  } finally {
    fs.closeSync(b);
  }
  const [x, y] = n.socketpair();
  const bad = closedFd(); // after socketpair(), which would reuse the number
  expectSyscallError(() => n.sendFds(bad, new Uint8Array([1]), []), 'EBADF', 'sendmsg');
  expectSyscallError(() => n.recvFds(bad, 1, 0), 'EBADF', 'recvmsg');
  expectSyscallError(() => n.setNonBlocking(bad, true), 'EBADF', 'fcntl(F_GETFL)');
  try {
    expectSyscallError(() => n.sendFds(x, new Uint8Array([1]), [bad]), 'EBADF', 'sendmsg');
  } finally {
    fs.closeSync(x);
    fs.closeSync(y);
  }
});
