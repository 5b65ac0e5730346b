// PassedFds, the one owner of fds a manager passed: take() hands an fd over (it is no longer
// closed here), closeUntaken() closes a failed hot-plug's fds that no one took, close() the rest.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fstatSync, openSync, closeSync } from 'node:fs';
import { PassedFds, type PassedFd } from '../../core/fdpass.js';

const isOpen = (fd: number) => {
  try {
    fstatSync(fd);
    return true;
  } catch {
    return false;
  }
};

test('PassedFds: take by name or kind transfers the fd; close() closes only what no one took', () => {
  const fds: PassedFd[] = [
    { name: 'k', kind: 'kvm', fd: openSync('/dev/null', 'r') },
    { name: 'g3', kind: 'vfio-group', group: 3, fd: openSync('/dev/null', 'r') },
    { name: 'g4', kind: 'vfio-group', group: 4, fd: openSync('/dev/null', 'r') },
    { name: 'c', kind: 'vfio-cdev', device: '0000:00:03.0', fd: openSync('/dev/null', 'r') },
  ];
  const owner = new PassedFds(fds);
  assert.equal(owner.take({ kind: 'kvm' }), fds[0]!.fd);
  assert.equal(owner.take({ kind: 'kvm' }), undefined, 'taken once');
  assert.equal(owner.take({ kind: 'vfio-group', group: 4 }), fds[2]!.fd);
  assert.ok(owner.has('c') && owner.has({ kind: 'vfio-cdev', device: '0000:00:03.0' }));
  assert.ok(!owner.has({ kind: 'vfio-cdev', device: '0000:00:04.0' }));
  assert.equal(owner.take('g3'), fds[1]!.fd);
  assert.deepEqual(
    owner.list.map((p) => p.name),
    ['c'],
  );
  owner.close();
  assert.ok(!isOpen(fds[3]!.fd), 'the untaken fd is closed');
  for (const i of [0, 1, 2]) {
    assert.ok(isOpen(fds[i]!.fd), `taken fd ${fds[i]!.name} is its taker's, left open`);
    closeSync(fds[i]!.fd);
  }
  owner.close(); // nothing left: no double close
});

test('PassedFds: a failed hot-plug closes its fds that were not taken, and no other', () => {
  const start = { name: 'iommu', kind: 'iommufd', fd: openSync('/dev/null', 'r') } as const;
  const owner = new PassedFds([start]);
  const plug: PassedFd[] = [
    { name: 'g', kind: 'vfio-group', group: 7, fd: openSync('/dev/null', 'r') },
    { name: 'c', kind: 'vfio-cdev', device: 'x', fd: openSync('/dev/null', 'r') },
  ];
  owner.add(plug);
  const taken = owner.take({ kind: 'vfio-group', group: 7 })!;
  owner.closeUntaken(plug.map((p) => p.fd));
  assert.ok(isOpen(taken), 'the taken one is the taker’s');
  assert.ok(!isOpen(plug[1]!.fd), 'the untaken one is closed');
  assert.ok(isOpen(start.fd), 'fds of others stay');
  closeSync(taken);
  owner.close();
  assert.ok(!isOpen(start.fd));
});
