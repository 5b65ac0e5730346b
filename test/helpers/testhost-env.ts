// Inside the test host: the devices it carries, as tsvmm/testing gives them to users (lib/testing.ts);
// outside the host they throw (never skip), saying how to run the test there.
export {
  testHostDevices as hostDevices,
  testHostDevice as hostDevice,
  type HostDevice as TestHostDevice,
} from '../../lib/testing.js';
