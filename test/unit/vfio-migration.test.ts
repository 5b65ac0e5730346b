// The VFIO migration state machine's pure parts: the path finder against the combination
// transitions the kernel documents (drivers/vfio/vfio_main.c, vfio_mig_get_next_state), the
// blocker message, and a probe of an fd that is no VFIO device (the kernel's ENOTTY).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import {
  MIG_STATES,
  arcOpensSession,
  blockerMessage,
  describeHostDevice,
  migrationArcs,
  migrationPath,
  pciClassName,
  VfioMigration,
  MigrationError,
  type MigState,
} from '../../core/vfio/migration.js';
import { native } from '../../core/native.js';

const ALL = { p2p: true, preCopy: true };

// vfio_main.c: "if all optional features are supported, this means the following ones".
const KERNEL_COMBINATIONS = `
PRE_COPY -> PRE_COPY_P2P -> STOP_COPY
PRE_COPY -> RUNNING -> RUNNING_P2P
PRE_COPY -> RUNNING -> RUNNING_P2P -> STOP
PRE_COPY -> RUNNING -> RUNNING_P2P -> STOP -> RESUMING
PRE_COPY_P2P -> RUNNING_P2P -> RUNNING
PRE_COPY_P2P -> RUNNING_P2P -> STOP
PRE_COPY_P2P -> RUNNING_P2P -> STOP -> RESUMING
RESUMING -> STOP -> RUNNING_P2P
RESUMING -> STOP -> RUNNING_P2P -> PRE_COPY_P2P
RESUMING -> STOP -> RUNNING_P2P -> RUNNING
RESUMING -> STOP -> RUNNING_P2P -> RUNNING -> PRE_COPY
RESUMING -> STOP -> STOP_COPY
RUNNING -> RUNNING_P2P -> PRE_COPY_P2P
RUNNING -> RUNNING_P2P -> STOP
RUNNING -> RUNNING_P2P -> STOP -> RESUMING
RUNNING -> RUNNING_P2P -> STOP -> STOP_COPY
RUNNING_P2P -> RUNNING -> PRE_COPY
RUNNING_P2P -> STOP -> RESUMING
RUNNING_P2P -> STOP -> STOP_COPY
STOP -> RUNNING_P2P -> PRE_COPY_P2P
STOP -> RUNNING_P2P -> RUNNING
STOP -> RUNNING_P2P -> RUNNING -> PRE_COPY
STOP_COPY -> STOP -> RESUMING
STOP_COPY -> STOP -> RUNNING_P2P
STOP_COPY -> STOP -> RUNNING_P2P -> RUNNING`
  .trim()
  .split('\n')
  .map((l) => l.split(' -> ') as MigState[]);

test('migrationPath: every combination transition the kernel documents, arc by arc', () => {
  for (const [from, ...rest] of KERNEL_COMBINATIONS)
    assert.deepEqual(migrationPath(from!, rest.at(-1)!, ALL), rest, `${from} → ${rest.at(-1)}`);
});

test('migrationPath: all pairs with every feature: one arc per step, blocked ones undefined', () => {
  const arcs = new Set(migrationArcs(ALL).map(([a, b]) => `${a}>${b}`));
  const states = MIG_STATES.filter((s) => s !== 'ERROR');
  let multi = 0;
  for (const from of states)
    for (const to of states) {
      const p = migrationPath(from, to, ALL);
      if (from === 'STOP_COPY' && (to === 'PRE_COPY' || to === 'PRE_COPY_P2P')) {
        assert.equal(p, undefined, `${from} → ${to} is blocked by the uAPI`);
        continue;
      }
      assert.ok(p, `${from} → ${to}`);
      let cur: MigState = from;
      for (const s of p) {
        assert.ok(arcs.has(`${cur}>${s}`), `${from} → ${to}: ${cur} → ${s} is no arc`);
        cur = s;
      }
      if (p.length > 1) multi++;
    }
  // The kernel's list is every multi-step pair: none more, none fewer.
  assert.equal(multi, KERNEL_COMBINATIONS.length);
  assert.equal(migrationPath('ERROR', 'RUNNING', ALL), undefined, 'ERROR needs a reset');
  assert.equal(migrationPath('RUNNING', 'ERROR', ALL), undefined);
});

test('migrationPath: without P2P or PRE_COPY the optional states are never used', () => {
  assert.deepEqual(migrationPath('RUNNING', 'STOP_COPY', { p2p: false, preCopy: false }), ['STOP', 'STOP_COPY']);
  assert.deepEqual(migrationPath('RESUMING', 'RUNNING', { p2p: false, preCopy: false }), ['STOP', 'RUNNING']);
  assert.deepEqual(migrationPath('PRE_COPY', 'STOP_COPY', { p2p: false, preCopy: true }), ['STOP_COPY']);
  // Interior saving states are not taken: PRE_COPY → STOP goes through RUNNING, not STOP_COPY.
  assert.deepEqual(migrationPath('PRE_COPY', 'STOP', { p2p: false, preCopy: true }), ['RUNNING', 'STOP']);
  assert.equal(migrationPath('RUNNING', 'PRE_COPY', { p2p: true, preCopy: false }), undefined);
  assert.equal(migrationPath('RUNNING', 'RUNNING_P2P', { p2p: false, preCopy: true }), undefined);
  assert.deepEqual(migrationPath('RUNNING', 'RUNNING', ALL), []);
});

test('arcOpensSession: the arcs that return a data fd', () => {
  const opening = migrationArcs(ALL)
    .filter(([a, b]) => arcOpensSession(a, b))
    .map(([a, b]) => `${a}>${b}`)
    .sort();
  assert.deepEqual(opening, ['RUNNING>PRE_COPY', 'RUNNING_P2P>PRE_COPY_P2P', 'STOP>RESUMING', 'STOP>STOP_COPY']);
});

test('blocker message: names the device (id, VFIO name, what it is) and the reason, as QEMU words it', () => {
  assert.equal(
    blockerMessage({ label: 'disk0', name: '0000:00:04.0', description: '1b36:0010 NVMe controller' }, 'why'),
    'disk0 (0000:00:04.0, 1b36:0010 NVMe controller): VFIO migration is not supported: why',
  );
  assert.equal(
    blockerMessage({ label: '0000:00:03.0', name: '0000:00:03.0' }, 'why'),
    '0000:00:03.0: VFIO migration is not supported: why',
  );
  assert.equal(pciClassName(0x010802), 'NVMe controller');
  assert.equal(pciClassName(0x010800), 'non-volatile memory controller');
  assert.equal(pciClassName(0x020000), 'Ethernet controller');
  assert.equal(pciClassName(0x00ff00), undefined);
});

test('describeHostDevice: PCI class from sysfs, mdev type from its link', () => {
  const dir = mkdtempSync(`${tmpdir()}/tsvmm-mig-`);
  try {
    mkdirSync(`${dir}/pci`);
    writeFileSync(`${dir}/pci/class`, '0x010802\n');
    assert.equal(
      describeHostDevice({ sysfs: `${dir}/pci`, driver: 'vfio-pci', vendor: 0x1b36, device: 0x10 }),
      '1b36:0010 NVMe controller, driver vfio-pci',
    );
    mkdirSync(`${dir}/types/mtty-1`, { recursive: true });
    mkdirSync(`${dir}/mdev`);
    symlinkSync(`${dir}/types/mtty-1`, `${dir}/mdev/mdev_type`);
    assert.equal(describeHostDevice({ sysfs: `${dir}/mdev`, driver: 'mtty' }), 'mdev type mtty-1, driver mtty');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('probe of an fd that is no VFIO device: the kernel says ENOTTY, the probe a blocker; open() throws it', () => {
  native(); // the addon loads (its errors are SyscallErrors)
  const fd = openSync('/dev/null', 'r');
  try {
    const p = VfioMigration.probe({ fd, name: 'null0' }, { sysfs: '/nonexistent', driver: 'none' });
    assert.equal(p.supported, false);
    assert.ok(!p.supported);
    assert.equal(
      p.blocker,
      'null0 (0000:0000, driver none): VFIO migration is not supported: its driver (none) has no migration support (VFIO_DEVICE_FEATURE_MIGRATION: ENOTTY)',
    );
    assert.throws(
      () => VfioMigration.open({ fd, name: 'null0' }, undefined, 'dev0'),
      (e: MigrationError) =>
        e instanceof MigrationError &&
        e.code === 'ERR_MIGRATION' &&
        e.message.startsWith('dev0 (null0): VFIO migration is not supported') &&
        /device_del/.test(e.fix ?? ''),
    );
  } finally {
    closeSync(fd);
  }
});
