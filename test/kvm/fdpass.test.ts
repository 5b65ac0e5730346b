// Fd passing (SCM_RIGHTS) and the VMM's checks on what it receives.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, openSync } from 'node:fs';
import { native, MFD_CLOEXEC } from '../../core/native.js';
import { sendPassedFds, receivePassedFds, FdPassError } from '../../core/fdpass.js';
import { openFds } from '../helpers/guest.js';

function pair() {
  return native().socketpair();
}

test('a /dev/kvm fd arrives as a new fd that is checked to be /dev/kvm', () => {
  const [a, b] = pair();
  const kvm = openSync('/dev/kvm', 'r+');
  sendPassedFds(a, [{ name: 'kvm', kind: 'kvm', fd: kvm }]);
  const got = receivePassedFds(b);
  assert.equal(got.length, 1);
  assert.equal(got[0]!.kind, 'kvm');
  assert.notEqual(got[0]!.fd, kvm);
  assert.equal(native().kvmGetApiVersion(got[0]!.fd), 12);
  for (const fd of [a, b, kvm, got[0]!.fd]) closeSync(fd);
});

test('a wrong fd type is refused, and every received fd is closed', () => {
  const before = openFds();
  const [a, b] = pair();
  const devnull = openSync('/dev/null', 'r');
  const memfd = native().memfdCreate('not-a-group', MFD_CLOEXEC);
  sendPassedFds(a, [{ name: 'kvm', kind: 'kvm', fd: devnull }]);
  assert.throws(
    () => receivePassedFds(b),
    (e: Error) =>
      e instanceof FdPassError && /passed fd 'kvm' \(fd \d+\) should be \/dev\/kvm but is \/dev\/null/.test(e.message),
  );
  sendPassedFds(a, [{ name: 'g', kind: 'vfio-group', group: 3, fd: memfd }]);
  assert.throws(
    () => receivePassedFds(b),
    /passed fd 'g' \(fd \d+\) should be a VFIO group \(\/dev\/vfio\/N\) but is \/memfd:not-a-group/,
  );
  for (const fd of [a, b, devnull, memfd]) closeSync(fd);
  assert.equal(openFds(), before, 'nothing leaked');
});

test('a manager that closes the socket mid-handshake is reported', () => {
  const [a, b] = pair();
  closeSync(a);
  assert.throws(() => receivePassedFds(b), /closed the fd socket before sending anything/);
  closeSync(b);
});
