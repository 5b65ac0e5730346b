// QMP hot-plug on the iommufd backend (cdev + /dev/iommu via getfd); see test/helpers/hotplug.ts.
import { test } from 'node:test';
import { hotplugScenario } from '../../helpers/hotplug.js';

test('hot-add edu via getfd (cdev + /dev/iommu) + device_add, its use by the guest, device_del with DEVICE_DELETED, everything released', () =>
  hotplugScenario('iommufd'));
