// QMP hot-plug on the legacy backend (group fd via getfd); see test/helpers/hotplug.ts.
import { test } from 'node:test';
import { hotplugScenario } from '../../helpers/hotplug.js';

test('hot-add edu via getfd (group fd) + device_add while the guest runs, its use by the guest, device_del with DEVICE_DELETED, everything released', () =>
  hotplugScenario('legacy'));
