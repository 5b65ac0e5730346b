// Inside the test host: the devices it carries (TSVMM_TESTHOST_DEVICES) and guards that fail
// loudly — never skip — when a test meant for the host runs elsewhere.
import assert from 'node:assert/strict';

export interface TestHostDevice {
  bdf: string;
  id: string;
  group: number | null;
  driver: string | null;
  vfioGroup: string | null;
  vfioCdev: string | null;
}

export function hostDevices(): Record<string, TestHostDevice> {
  assert.equal(
    process.env.TSVMM_TESTHOST,
    '1',
    'not inside the test host: run through `tsvmm testhost test` (npm run test:host)',
  );
  return JSON.parse(process.env.TSVMM_TESTHOST_DEVICES ?? '{}') as Record<string, TestHostDevice>;
}

export function hostDevice(name: string): TestHostDevice {
  const d = hostDevices()[name];
  assert.ok(d, `the test host has no '${name}' device (TSVMM_TESTHOST_DEVICES: ${process.env.TSVMM_TESTHOST_DEVICES})`);
  return d;
}
