// fdWatch: an fd's readiness reaches a callback on the event loop (real eventfds, real libuv).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, readSync, writeSync } from 'node:fs';
import { native, EFD_NONBLOCK } from '../../core/native.js';

const signal = (fd: number) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(1n);
  writeSync(fd, b);
};

test('fdWatch calls back once per signal when the callback drains the eventfd; fdUnwatch stops it', async () => {
  const n = native();
  const fd = n.eventfd(0, EFD_NONBLOCK);
  const seen: number[] = [];
  let wake: () => void = () => {};
  const id = n.fdWatch(fd, (status) => {
    assert.equal(status, 0);
    const b = Buffer.alloc(8);
    readSync(fd, b);
    seen.push(Number(b.readBigUInt64LE()));
    wake();
  });
  try {
    for (const expected of [1, 2]) {
      const got = new Promise<void>((r) => {
        wake = r;
      });
      signal(fd);
      if (expected === 2) signal(fd); // two signals before the loop runs: one wake-up, counter 2
      await got;
    }
    assert.deepEqual(seen, [1, 2]);
    n.fdUnwatch(id);
    signal(fd);
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(seen, [1, 2], 'no callback after fdUnwatch');
    n.fdUnwatch(id); // twice is harmless
  } finally {
    closeSync(fd);
  }
});

test('fdWatch refuses what libuv cannot poll, with the call named', () => {
  assert.throws(
    () => native().fdWatch(-1, () => {}),
    (e: Error & { syscall?: string }) => e.syscall === 'uv_poll_init',
  );
});
