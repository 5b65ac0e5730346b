// VFIO migration v2 against the real kernel (test host, iommufd kernel, devices edu and nvme):
// mtty's state moved from one instance to another of the same type, through PRE_COPY and
// STOP_COPY, on both backends and across them; devices without a migration driver are
// blockers that name themselves; a corrupt, truncated or foreign stream is refused and leaves
// the destination usable; no fd outlives its use.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { openFds } from '../../helpers/guest.js';
import { hostDevice } from '../../helpers/testhost-env.js';
import { Kvm } from '../../../core/kvm/kvm.js';
import { Vfio, type AssignedDevice, type VfioBackendKind, type VfioDeviceSpec } from '../../../core/vfio/vfio.js';
import { createMdev, removeMdev, type Mdev } from '../../../core/vfio/mdev.js';
import { VfioMigration, MigrationError, DeviceDirtyLog } from '../../../core/vfio/migration.js';
import type { VfioDevice } from '../../../core/vfio/device.js';

/** One device opened as a VM would (its own KVM VM and VFIO backend), without running a guest. */
interface Opened {
  a: AssignedDevice;
  dev: VfioDevice;
  close(): void;
}
function open(spec: VfioDeviceSpec): Opened {
  const kvm = Kvm.open();
  const vm = kvm.createVm({ irqchip: false });
  const vfio = new Vfio(vm);
  const close = () => {
    vfio.close();
    vm.close();
    kvm.close();
  };
  try {
    const a = vfio.open(spec);
    assert.deepEqual(vfio.devices, [a]);
    return { a, dev: a.device, close };
  } catch (e) {
    close();
    throw e;
  }
}

async function withMdevs<T>(types: string[], f: (m: Mdev[]) => Promise<T>): Promise<T> {
  const made: Mdev[] = [];
  try {
    for (const t of types) made.push(createMdev(t));
    return await f(made);
  } finally {
    for (const m of made) removeMdev(m.uuid);
  }
}

async function collect(it: AsyncIterable<Uint8Array>): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for await (const c of it) out.push(Buffer.from(c));
  return out;
}
const bytes = (chunks: Buffer[]) => chunks.reduce((n, c) => n + c.length, 0);

// 16550 registers in mtty's I/O BAR (region 0).
const RX = 0,
  IER = 1,
  FCR = 2,
  IIR = 2,
  LCR = 3,
  MCR = 4,
  LSR = 5,
  SCR = 7;
const LSR_DR = 0x01,
  LSR_THRE = 0x20;
const reg = (d: VfioDevice, r: number) => Number(d.read(0, r, 1));
const setReg = (d: VfioDevice, r: number, v: number) => d.write(0, r, 1, v);

/** Puts a recognisable state in an mtty port: line and modem control, interrupt enables, scratch, FIFO bytes. */
function program(d: VfioDevice, payload: Buffer, scratch: number): void {
  setReg(d, FCR, 0x07); // FIFO on, both cleared
  setReg(d, LCR, 0x03);
  setReg(d, MCR, 0x0b);
  setReg(d, IER, 0x05); // received data + line status
  setReg(d, SCR, scratch);
  for (const b of payload) setReg(d, RX, b); // loopback: what is sent waits in the FIFO
}
function drain(d: VfioDevice): Buffer {
  const out: number[] = [];
  while (reg(d, LSR) & LSR_DR && out.length < 64) out.push(reg(d, RX));
  return Buffer.from(out);
}

async function mttyAcross(src: VfioBackendKind, dst: VfioBackendKind): Promise<void> {
  const fds0 = openFds();
  await withMdevs(['mtty-1', 'mtty-1'], async ([ma, mb]) => {
    const A = open({ sysfsdev: ma!.path, backend: src });
    const B = open({ sysfsdev: mb!.path, backend: dst });
    try {
      const payload = randomBytes(9),
        extra = randomBytes(1),
        scratch = randomBytes(1)[0]!;
      program(A.dev, payload, scratch);

      const probe = VfioMigration.probe(A.dev, A.a.host, 'serial0');
      assert.ok(probe.supported, JSON.stringify(probe));
      assert.deepEqual(
        { p2p: probe.caps.p2p, preCopy: probe.caps.preCopy, dmaLogging: probe.caps.dmaLogging },
        { p2p: true, preCopy: true, dmaLogging: true },
        'mtty offers STOP_COPY | P2P | PRE_COPY and (no-op) DMA logging',
      );
      const mig = new VfioMigration(A.dev, probe.caps, probe.label);
      assert.equal(mig.state(), 'RUNNING');
      const size = mig.dataSize();
      const fdsIdle = openFds();

      mig.startSave();
      assert.equal(mig.state(), 'PRE_COPY');
      assert.equal(openFds(), fdsIdle + 1, 'PRE_COPY opened the data fd');
      const before = mig.pending()!;
      assert.ok(before.initialBytes > 0n, 'mtty has pre-copy data (its header)');
      const pre = await collect(mig.readPrecopy());
      assert.equal(bytes(pre), Number(before.initialBytes + before.dirtyBytes));
      assert.deepEqual(mig.pending(), { initialBytes: 0n, dirtyBytes: 0n });
      // Still running in PRE_COPY: the guest goes on using the device.
      setReg(A.dev, RX, extra[0]!);

      mig.quiesce();
      assert.equal(mig.state(), 'PRE_COPY_P2P');
      mig.stopCopy();
      assert.equal(mig.state(), 'STOP_COPY');
      const fin = await collect(mig.readStopCopy());
      assert.ok(bytes(fin) > 0);
      assert.equal(BigInt(bytes(pre) + bytes(fin)), size, 'the whole stream is the size the driver announced');
      mig.finishSave();
      assert.equal(mig.state(), 'STOP');
      assert.equal(openFds(), fdsIdle, 'the data fd is closed');
      mig.resume();
      assert.equal(mig.state(), 'RUNNING');
      assert.deepEqual(
        { stats: mig.stats },
        { stats: { precopyBytes: bytes(pre), stopCopyBytes: bytes(fin), loadedBytes: 0 } },
      );

      // B starts blank.
      assert.equal(reg(B.dev, SCR), 0);
      assert.equal(reg(B.dev, LSR) & LSR_DR, 0);
      const migB = VfioMigration.open(B.dev, B.a.host, 'serial0');
      await migB.loadDeviceState([...pre, ...fin]);
      assert.equal(migB.state(), 'RUNNING');
      assert.equal(openFds(), fdsIdle, 'the RESUMING fd is closed');

      // B now has A's registers, pending interrupt state and FIFO, byte for byte and in order.
      assert.equal(reg(B.dev, SCR), scratch);
      assert.equal(reg(B.dev, LCR), 0x03);
      assert.equal(reg(B.dev, MCR), 0x0b);
      assert.equal(reg(B.dev, IER), 0x05);
      assert.equal(reg(B.dev, IIR), 0xc4, 'received-data interrupt pending, as on A');
      assert.deepEqual(drain(B.dev), Buffer.concat([payload, extra]));
      assert.equal(reg(B.dev, LSR) & LSR_THRE, LSR_THRE);
      // A went on: its own state is untouched by the save.
      assert.equal(reg(A.dev, SCR), scratch);
      assert.deepEqual(drain(A.dev), Buffer.concat([payload, extra]));
    } finally {
      A.close();
      B.close();
    }
  });
  assert.equal(openFds(), fds0, 'no fd leaked (devices, data fds, backends)');
}

test('mtty iommufd → iommufd: PRE_COPY, STOP_COPY, RESUMING; registers and FIFO arrive', () =>
  mttyAcross('iommufd', 'iommufd'));
test('mtty legacy → legacy: the same on the container/group backend', () => mttyAcross('legacy', 'legacy'));
test('mtty legacy → iommufd and iommufd → legacy: the stream does not depend on the backend', async () => {
  await mttyAcross('legacy', 'iommufd');
  await mttyAcross('iommufd', 'legacy');
});

/** A good stream from a fresh mtty instance of `type` (its state: the bytes given). */
async function streamOf(type: string, payload: Buffer): Promise<Buffer[]> {
  return withMdevs([type], async ([m]) => {
    const A = open({ sysfsdev: m!.path, backend: 'iommufd' });
    try {
      program(A.dev, payload, 0x5a);
      const mig = VfioMigration.open(A.dev, A.a.host);
      const s = await collect(mig.saveDeviceState());
      assert.equal(mig.state(), 'STOP');
      mig.resume();
      return s;
    } finally {
      A.close();
    }
  });
}

test('a corrupt, truncated or foreign stream is refused; the destination is back in RUNNING and takes a good one', async () => {
  const fds0 = openFds();
  const payload = randomBytes(5);
  const good = Buffer.concat(await streamOf('mtty-1', payload));
  const foreign = Buffer.concat(await streamOf('mtty-2', payload));
  const corrupt = Buffer.from(good);
  corrupt[0]! ^= 0xff;
  await withMdevs(['mtty-1'], async ([m]) => {
    const B = open({ sysfsdev: m!.path, backend: 'iommufd' });
    try {
      const fdsIdle = openFds();
      const mig = VfioMigration.open(B.dev, B.a.host, 'serial0');
      const usable = () => {
        assert.equal(mig.state(), 'RUNNING');
        assert.equal(openFds(), fdsIdle, 'the data fd is closed');
        setReg(B.dev, SCR, 0x33);
        assert.equal(reg(B.dev, SCR), 0x33, 'the device answers');
      };

      await assert.rejects(mig.loadDeviceState([corrupt]), (e: Error) => {
        assert.ok(e instanceof MigrationError, String(e));
        assert.match(e.message, /^serial0 refused its migration data at byte 0 .*\(EFAULT\); the device was reset/);
        return true;
      });
      usable();

      await assert.rejects(mig.loadDeviceState([foreign]), /serial0 refused its migration data at byte 0/);
      usable();

      const cut = good.subarray(0, good.length - 7);
      await assert.rejects(mig.loadDeviceState([cut]), (e: Error) => {
        assert.match(
          e.message,
          new RegExp(
            `^serial0 rejected the ${cut.length} bytes of migration data \\(truncated, or not a state of this device\\): ` +
              'the device refused the migration state change RESUMING → STOP \\(EINVAL\\); the device was reset and is back in RUNNING$',
          ),
        );
        return true;
      });
      usable();

      // Chunk boundaries do not matter: the good stream a byte at a time.
      await mig.loadDeviceState([...good].map((b) => Buffer.of(b)));
      usable();
      assert.equal(reg(B.dev, LCR), 0x03);
      assert.deepEqual(drain(B.dev), payload);
    } finally {
      B.close();
    }
  });
  assert.equal(openFds(), fds0);
});

test('a save abandoned half-way (error or consumer leaving) leaves the source in RUNNING with no fd open', async () => {
  const fds0 = openFds();
  await withMdevs(['mtty-1'], async ([m]) => {
    const A = open({ sysfsdev: m!.path, backend: 'legacy' });
    try {
      const fdsIdle = openFds();
      const payload = randomBytes(4);
      program(A.dev, payload, 0x11);
      const mig = VfioMigration.open(A.dev, A.a.host);
      // The consumer takes the pre-copy data and leaves before stop-copy.
      for await (const c of mig.saveDeviceState()) {
        assert.ok(c.length > 0);
        break;
      }
      assert.equal(mig.state(), 'RUNNING');
      assert.equal(openFds(), fdsIdle);
      // The machine's stop fails (say, the destination went away): the device runs again.
      await assert.rejects(
        collect(
          mig.saveDeviceState({
            stop: () => {
              throw new Error('destination gone');
            },
          }),
        ),
        /destination gone/,
      );
      assert.equal(mig.state(), 'RUNNING');
      assert.equal(openFds(), fdsIdle);
      // Phase by phase, aborted in STOP_COPY.
      mig.startSave();
      await collect(mig.readPrecopy());
      mig.quiesce();
      mig.stopCopy();
      assert.equal(mig.abort(), 'the device is back in RUNNING');
      assert.equal(mig.state(), 'RUNNING');
      assert.equal(openFds(), fdsIdle);
      // abort() while a read is in flight in the thread pool: the fd is closed after the read, which fails as aborted.
      mig.startSave();
      await collect(mig.readPrecopy());
      mig.quiesce();
      mig.stopCopy();
      const inFlight = mig.readStopCopy()[Symbol.asyncIterator]().next();
      assert.equal(mig.abort(), 'the device is back in RUNNING');
      await assert.rejects(inFlight, /'s stop-copy data failed: the migration was aborted meanwhile$/);
      assert.equal(openFds(), fdsIdle);
      assert.deepEqual(drain(A.dev), payload, 'the device kept its state and works');
    } finally {
      A.close();
    }
  });
  assert.equal(openFds(), fds0);
});

test('edu and nvme (vfio-pci, no migration driver): blockers that name the device and the reason', () => {
  const fds0 = openFds();
  for (const [name, backend, label, what] of [
    ['edu', 'legacy', 'edu0', /1234:11e8, driver vfio-pci/],
    ['nvme', 'iommufd', 'disk0', /1b36:0010 NVMe controller, driver vfio-pci/],
  ] as const) {
    const h = hostDevice(name);
    const d = open({ host: h.bdf, backend });
    try {
      const p = VfioMigration.probe(d.dev, d.a.host, label);
      assert.equal(p.supported, false);
      assert.ok(!p.supported);
      assert.match(p.blocker, new RegExp(`^${label} \\(${h.bdf}, `));
      assert.match(p.blocker, what);
      assert.match(
        p.blocker,
        /: VFIO migration is not supported: its driver \(vfio-pci\) has no migration support \(VFIO_DEVICE_FEATURE_MIGRATION: ENOTTY\)$/,
      );
      assert.throws(
        () => VfioMigration.open(d.dev, d.a.host, label),
        (e: Error) => e instanceof MigrationError && e.message === p.blocker,
      );
      assert.throws(
        () => DeviceDirtyLog.start(d.dev, [{ iova: 0, length: 1 << 20 }], 4096, label),
        (e: MigrationError) =>
          e instanceof MigrationError &&
          e.message === `${label} has no DMA dirty logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_START: ENOTTY)` &&
          e.fix === 'count every page the device can reach as dirty',
      );
    } finally {
      d.close();
    }
  }
  assert.equal(openFds(), fds0);
});

test("mtty's DMA dirty log: starts over page-aligned ranges, reports nothing (mtty does no DMA), refuses unaligned ones", async () => {
  const fds0 = openFds();
  await withMdevs(['mtty-1'], async ([m]) => {
    const A = open({ sysfsdev: m!.path, backend: 'iommufd' });
    try {
      assert.throws(
        () => DeviceDirtyLog.start(A.dev, [{ iova: 0x1000, length: 0x800 }], 4096, 'serial0'),
        (e: MigrationError) => /\(EINVAL\)$/.test(e.message) && /aligned to the page size/.test(e.fix ?? ''),
      );
      const log = DeviceDirtyLog.start(A.dev, [
        { iova: 0, length: 0xa0000 },
        { iova: 0x100000, length: 0x3f00000 },
      ]);
      assert.ok(log.pageSize >= 4096 && (log.pageSize & (log.pageSize - 1)) === 0, `page size ${log.pageSize}`);
      const bits = log.bitmap(0, 64 << 20);
      assert.equal(bits.length, (64 << 20) / log.pageSize / 8);
      assert.deepEqual(log.dirtyPages(0, 64 << 20), []);
      log.stop();
      assert.throws(() => log.bitmap(0, 1 << 20), /its DMA dirty log is stopped/);
    } finally {
      A.close();
    }
  });
  assert.equal(openFds(), fds0);
});

test('arcs one at a time: setState says the path it took; several devices all reach P2P, then STOP_COPY', async () => {
  const fds0 = openFds();
  await withMdevs(['mtty-1', 'mtty-2'], async ([m1, m2]) => {
    const A = open({ sysfsdev: m1!.path, backend: 'iommufd' });
    const C = open({ sysfsdev: m2!.path, backend: 'legacy' });
    try {
      const fdsIdle = openFds();
      const a = VfioMigration.open(A.dev, A.a.host, 'serial0'),
        c = VfioMigration.open(C.dev, C.a.host, 'serial1');
      // Each step is its own ioctl the kernel accepted, on its documented path.
      assert.deepEqual(a.setState('STOP_COPY'), ['RUNNING_P2P', 'STOP', 'STOP_COPY']);
      assert.equal(openFds(), fdsIdle + 1, 'STOP_COPY opened a data fd');
      assert.deepEqual(a.setState('RUNNING'), ['STOP', 'RUNNING_P2P', 'RUNNING']);
      assert.equal(openFds(), fdsIdle, 'leaving STOP_COPY closed it');
      assert.deepEqual(a.setState('RESUMING'), ['RUNNING_P2P', 'STOP', 'RESUMING']);
      assert.equal(openFds(), fdsIdle + 1, 'RESUMING opened a data fd');
      // Leaving RESUMING with no data would have the driver load nothing: abandoned by a reset.
      assert.equal(a.abort(), 'the device was reset and is back in RUNNING');
      assert.equal(openFds(), fdsIdle);
      assert.throws(() => a.setState('ERROR'), /serial0: no VFIO migration state change from RUNNING to ERROR/);

      a.startSave();
      c.startSave();
      await collect(a.readPrecopy());
      await collect(c.readPrecopy());
      VfioMigration.stopCopyAll([a, c]);
      assert.deepEqual([a.state(), c.state()], ['STOP_COPY', 'STOP_COPY']);
      assert.ok(bytes(await collect(a.readStopCopy())) > 0);
      assert.equal(a.abort(), 'the device is back in RUNNING');
      assert.equal(c.abort(), 'the device is back in RUNNING');
      assert.deepEqual([a.state(), c.state()], ['RUNNING', 'RUNNING']);
      assert.equal(openFds(), fdsIdle);
    } finally {
      A.close();
      C.close();
    }
  });
  assert.equal(openFds(), fds0);
});
