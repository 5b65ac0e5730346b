// The hot-reset decision from the kernel's VFIO_DEVICE_GET_PCI_HOT_RESET_INFO answer: which fds
// prove ownership, and the explained refusal when the VM does not own every affected function.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../core/native.js';
import { planFromInfo } from '../../core/vfio/hot-reset.js';
import type { AssignedDevice } from '../../core/vfio/vfio.js';
import type { TsvmmError } from '../../core/errors.js';

const c = native().constants;
const dev = { host: { name: '0000:01:01.0' }, device: { fd: 40 } } as unknown as AssignedDevice;
const fn = (bus: number, slot: number, f: number) => ({ segment: 0, bus, devfn: (slot << 3) | f });

test('legacy: every affected group held → its fds, once each', () => {
  const plan = planFromInfo(
    dev,
    {
      flags: 0,
      devices: [
        { ...fn(1, 1, 0), groupId: 7 },
        { ...fn(1, 2, 0), groupId: 7 },
      ],
    },
    new Map([[7, { fd: 33 }]]),
  );
  assert.deepEqual(plan.affected, ['0000:01:01.0', '0000:01:02.0']);
  assert.deepEqual(plan.groupFds, [33]);
});

test('legacy: a group the VM does not hold → refused, naming the functions, group and fix', () => {
  assert.throws(
    () =>
      planFromInfo(
        dev,
        {
          flags: 0,
          devices: [
            { ...fn(1, 1, 0), groupId: 7 },
            { ...fn(1, 2, 0), groupId: 9 },
          ],
        },
        new Map([[7, { fd: 33 }]]),
      ),
    (e: TsvmmError) =>
      /0000:01:01\.0: a hot reset also resets 0000:01:02\.0 \(group 9\), whose VFIO group this VM does not hold$/.test(
        e.message,
      ) && /^assign a device of group 9/.test(e.fix ?? ''),
  );
});

test('iommufd: all affected functions owned → no fds; one owned elsewhere → refused with the fix', () => {
  const owned = c.VFIO_PCI_HOT_RESET_FLAG_DEV_ID | c.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED;
  const plan = planFromInfo(
    dev,
    {
      flags: owned,
      devices: [
        { ...fn(1, 1, 0), devid: 3 },
        { ...fn(1, 2, 0), devid: 0 },
      ],
    },
    new Map(),
  );
  assert.deepEqual(plan.groupFds, []);
  assert.equal(plan.affected.length, 2);
  assert.throws(
    () =>
      planFromInfo(
        dev,
        {
          flags: c.VFIO_PCI_HOT_RESET_FLAG_DEV_ID,
          devices: [
            { ...fn(1, 1, 0), devid: 3 },
            { ...fn(1, 2, 0), devid: -1 },
          ],
        },
        new Map(),
      ),
    (e: TsvmmError) =>
      /also resets 0000:01:02\.0, which this VM's iommufd does not own$/.test(e.message) &&
      /^assign 0000:01:02\.0 to this VM too/.test(e.fix ?? ''),
  );
});
