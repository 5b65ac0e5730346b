// The command layer's pure parts (no machine runs here; test/kvm/qmp*.test.ts and api.test.ts run
// the commands): one handler per command of the QMP schema, and device_add's argument errors
// said as QEMU says them, for both transports.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../../core/paths.js';
import { CommandError, QEMU_VERSION, machineCommands } from '../../frontend/commands.js';
import { QmpError, checkArguments } from '../../frontend/qmp/server.js';
import type { MachineControl } from '../../machine/index.js';

// Only the table is built: no handler runs against this object.
const unused = { on: () => () => {} } as unknown as MachineControl;
const commands = machineCommands(unused, () => {});

test('one handler for each command of frontend/qmp/schema.json (qmp_capabilities is the server’s own)', () => {
  const schema = JSON.parse(readFileSync(join(projectRoot, 'frontend/qmp/schema.json'), 'utf8')) as {
    commands: Record<string, unknown>;
  };
  assert.deepEqual(
    Object.keys(commands.handlers).sort(),
    Object.keys(schema.commands)
      .filter((c) => c !== 'qmp_capabilities')
      .sort(),
  );
});

test('QMP errors are the command layer’s: one class, code ERR_QMP, errorClass as QEMU’s', () => {
  assert.equal(QmpError, CommandError);
  const e = new QmpError('DeviceNotFound', "Device 'x' not found");
  assert.equal(e.code, 'ERR_QMP');
  assert.equal(e.errorClass, 'DeviceNotFound');
});

test("device_add: an unknown property is the device's, an unknown driver says which exist", () => {
  const refine = commands.argumentError.device_add!;
  const check = (args: Record<string, unknown>): string => {
    try {
      checkArguments('device_add', args);
    } catch (e) {
      assert.ok(e instanceof CommandError);
      return refine(args, e).message;
    }
    return 'accepted';
  };
  assert.equal(check({ driver: 'vfio-pci', id: 'a', colour: 'red' }), "Property 'vfio-pci.colour' not found");
  assert.equal(
    check({ driver: 'virtio-net', id: 'a', colour: 'red' }),
    "'virtio-net' is not a valid device model name (tsvmm has: vfio-pci)",
  );
  assert.equal(check({ id: 'a' }), "Parameter 'driver' is missing");
  assert.equal(check({ driver: 'vfio-pci', id: 'a', host: '00:03.0', addr: '0x5', rombar: 0 }), 'accepted');
});

test('state-changing commands run one at a time across transports: a stop sent during a reset waits for it', async () => {
  const order: string[] = [];
  let paused = false;
  let finishReset: () => void = () => {};
  const m = {
    on: () => () => {},
    pause: () => {
      if (paused) return false;
      paused = true;
      order.push('pause');
      return true;
    },
    resume: () => {
      if (!paused) return false;
      paused = false;
      order.push('resume');
      return true;
    },
    // A reset parks the vCPUs, then resumes them when done (as Machine.reset does).
    reset: () => {
      paused = true;
      order.push('reset start');
      return new Promise<void>((r) => {
        finishReset = () => {
          paused = false;
          order.push('reset done');
          r();
        };
      });
    },
  } as unknown as MachineControl;
  const events: string[] = [];
  const c = machineCommands(m, (e) => events.push(e));
  const ctx = { takeFd: () => undefined };
  const reset = c.handlers.system_reset!({}, ctx) as Promise<unknown>;
  const stop = c.handlers.stop!({}, ctx) as Promise<unknown>;
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(order, ['reset start'], 'stop ran while the reset was in flight');
  finishReset();
  await Promise.all([reset, stop]);
  await c.idle();
  assert.deepEqual(order, ['reset start', 'reset done', 'pause']);
  assert.deepEqual(events, ['RESET', 'STOP']);
  assert.equal(paused, true, 'the guest is stopped, as the stop said');
});

test("query-version: QEMU's VersionInfo, the QEMU release tsvmm's QMP behaves like and tsvmm's own version in package", async () => {
  const own = (JSON.parse(readFileSync(join(projectRoot, 'package.json'), 'utf8')) as { version: string }).version;
  const v = await commands.handlers['query-version']!({}, { takeFd: () => undefined });
  assert.deepEqual(v, { qemu: { ...QEMU_VERSION }, package: `tsvmm ${own}` });
  assert.deepEqual(QEMU_VERSION, { major: 7, minor: 2, micro: 0 });
  assert.deepEqual(commands.version, v, 'the greeting carries the same');
});
