// Backend choice (pure logic): explicit choices must be available, auto prefers legacy, and
// "neither" explains both reasons with a fix.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chooseBackend } from '../../core/vfio/vfio.js';
import { VfioSetupError } from '../../core/vfio/sysfs.js';
import type { TsvmmError } from '../../core/errors.js';

const both = { legacy: true, iommufd: true } as const;
const onlyLegacy = { legacy: true, iommufd: '/dev/iommu does not exist (a kernel without CONFIG_IOMMUFD)' } as const;
const onlyIommufd = {
  legacy: '/dev/vfio/vfio does not exist (a kernel without CONFIG_VFIO_CONTAINER, or vfio is not loaded)',
  iommufd: true,
} as const;

test('auto: legacy when both models exist, else the one that does', () => {
  assert.equal(chooseBackend('auto', both, 'edu'), 'legacy');
  assert.equal(chooseBackend('auto', onlyLegacy, 'edu'), 'legacy');
  assert.equal(chooseBackend('auto', onlyIommufd, 'edu'), 'iommufd');
});

test('an explicit choice is honoured when available and explained when not', () => {
  assert.equal(chooseBackend('iommufd', both, 'edu'), 'iommufd');
  assert.equal(chooseBackend('legacy', both, 'edu'), 'legacy');
  assert.throws(
    () => chooseBackend('iommufd', onlyLegacy, '0000:00:03.0'),
    (e: Error) =>
      e instanceof VfioSetupError &&
      /^0000:00:03\.0: the iommufd VFIO backend is not available: \/dev\/iommu does not exist .*The legacy backend is$/.test(
        e.message,
      ) &&
      e.fix === 'use "backend": "auto"',
  );
  assert.throws(
    () => chooseBackend('legacy', onlyIommufd, 'edu'),
    /the legacy VFIO backend is not available: \/dev\/vfio\/vfio does not exist/,
  );
});

test('neither model: both reasons and the fix', () => {
  const none = { legacy: onlyIommufd.legacy, iommufd: onlyLegacy.iommufd };
  assert.throws(
    () => chooseBackend('auto', none, 'edu'),
    (e: TsvmmError) =>
      /^edu: VFIO is not available on this host\.\n {2}- legacy \(container\/group\): \/dev\/vfio\/vfio does not exist.*\n {2}- iommufd \(device cdev\): \/dev\/iommu does not exist[^\n]*$/.test(
        e.message,
      ) && /^load vfio-pci/.test(e.fix ?? ''),
  );
});
