// The native loop watcher (native/loop-watcher.cc) without KVM: a byte array stands in for the
// kvm_run page, and the child blocks the kick signal, so a kick stays pending and is counted with
// threadEatSignal, as vCPU 0's run loop does after KVM_RUN returns EINTR. The scenarios run in a
// quiet child process (test/helpers/loop-watcher-child.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

test('loop watcher: kicks once per arm when a timer falls due, an fd is readable or the cap passes; never when idle or for a cap no code started', () => {
  const child = fileURLToPath(new URL('../helpers/loop-watcher-child.js', import.meta.url));
  const o = JSON.parse(execFileSync(process.execPath, [child], { encoding: 'utf8', timeout: 30_000 })) as Record<
    string,
    unknown
  >;
  assert.ok((o.warmupTries as number) < 20, `an idle arm kept firing (${o.warmupTries} tries)`);
  assert.ok(
    (o.timerArm as number) >= 0 && (o.timerArm as number) <= 20,
    `armed with the timer's timeout, got ${o.timerArm}`,
  );
  assert.equal(o.timerFiredEarly, false, 'fired before the timer was due');
  assert.equal(o.timerFired, true);
  assert.equal(o.timerImmediateExit, 1, 'immediate_exit set');
  assert.equal(o.timerKicks, 1, 'one kick');
  assert.equal(o.timerKicksAfter, 0, 'no second kick for the same arm, though the timer is still due');
  assert.equal(o.timerDisarm, true);
  assert.equal(o.idleImmediateExit, 0, 'arm clears immediate_exit');
  assert.equal(o.idleFired, false, 'nothing due: no kick');
  assert.equal(o.idleDisarm, false);
  assert.equal(o.idleKicks, 0);
  assert.deepEqual(o.refresh, [true, false], 'refresh: an earlier deadline, then nothing new');
  assert.equal(o.refreshFired, true, 'the refreshed deadline fired');
  assert.equal(o.refreshKicks, 1);
  assert.equal(o.capArm, 20, 'capped from the arm');
  assert.equal(o.capFired, true);
  assert.equal(o.capKicks, 1);
  assert.ok((o.lazyCapArm as number) > 1000, `no cap before code ran on the loop thread (watched ${o.lazyCapArm} ms)`);
  assert.equal(o.lazyCapFiredIdle, false, 'no kick for the cap while no code ran');
  assert.equal(o.lazyCapRefresh, true, 'the refresh starts the cap');
  assert.equal(o.lazyCapFiredEarly, false, 'the cap runs from the refresh, not from the arm');
  assert.equal(o.lazyCapFired, true);
  assert.equal(o.lazyCapKicks, 1);
  assert.match(String(o.runUnbound), /no vCPU \(loopWatcherBind\)/, 'the run call before a bind is refused');
  assert.equal(o.runFirst, 'EBADF', 'the run call made the ioctl');
  assert.equal(o.runFiredFirst, false, 'the first run after the arm does not start the cap');
  assert.equal(o.runSecond, 'EBADF');
  assert.equal(o.runFired, true, 'the next run refreshed: the cap started');
  assert.equal(o.runKicks, 1);
  assert.equal(o.manyRefresh, true, 'with 64 more handles, a timer started during the slice is watched');
  assert.equal(o.manyFired, true);
  assert.equal(o.manyKicks, 1);
  assert.equal(o.ioFired, true, "a worker's message made the loop's backend fd readable");
  assert.equal(o.ioKicks, 1);
  assert.match(o.afterDestroy as string, /destroyed/);
});
