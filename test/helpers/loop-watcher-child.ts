// The loop-watcher scenarios of test/unit/loop-watcher.test.ts, run in a quiet child process:
// under the test runner its own output is work for the event loop, and so a kick, at any time.
// Prints one JSON line of observations at the end.
import { closeSync } from 'node:fs';
import { EFD_NONBLOCK, native } from '../../core/native.js';

const n = native();
const SIG = n.constants.SIGRTMIN + 2;
const me = n.threadPrepareKick(SIG, true);
n.threadEatSignal(SIG);
const out: Record<string, unknown> = {};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Blocks this thread (the event loop does not run) for ms, without allocating: JS that allocates
 *  makes V8 post GC tasks to the loop, which is work for it (a kick) too. */
const cell = new Int32Array(new SharedArrayBuffer(4));
function spin(ms: number): void {
  Atomics.wait(cell, 0, 0, ms);
}

const page = new Uint8Array(new ArrayBuffer(64));
const h = n.loopWatcherCreate(page.buffer, 8, me, SIG);
const keep = setInterval(() => {}, 3_600_000);
// V8's background threads post tasks to this loop (GC, compilation): legitimately work for the
// loop, so a kick. Warm up until a 50 ms idle arm stays quiet (tries, for the record).
out.warmupTries = 0;
for (let i = 0; i < 20; i++) {
  await sleep(100);
  out.warmupTries = i + 1;
  n.loopWatcherArm(h);
  spin(50);
  n.loopWatcherRefresh(h);
  const fired = n.loopWatcherDisarm(h);
  n.threadEatSignal(SIG);
  if (!fired) break;
}
await sleep(100);

// A timer that falls due during a slice: fires once, sets immediate_exit, and not again.
{
  const t = setTimeout(() => {}, 20);
  out.timerArm = n.loopWatcherArm(h);
  spin(10);
  out.timerFiredEarly = n.loopWatcherFired(h);
  spin(60);
  out.timerFired = n.loopWatcherFired(h);
  out.timerImmediateExit = page[8];
  out.timerKicks = n.threadEatSignal(SIG);
  spin(50);
  out.timerKicksAfter = n.threadEatSignal(SIG);
  out.timerDisarm = n.loopWatcherDisarm(h);
  clearTimeout(t);
}
await sleep(50);
// Nothing due: no kick; the next arm clears immediate_exit.
{
  page[8] = 1;
  out.idleArm = n.loopWatcherArm(h);
  out.idleImmediateExit = page[8];
  spin(50);
  out.idleFired = n.loopWatcherFired(h);
  out.idleDisarm = n.loopWatcherDisarm(h);
  out.idleKicks = n.threadEatSignal(SIG);
}
await sleep(50);
// A timer started during the slice (a device model's flush timer): refresh watches for it.
{
  n.loopWatcherArm(h);
  const t = setTimeout(() => {}, 15);
  out.refresh = [n.loopWatcherRefresh(h), n.loopWatcherRefresh(h)];
  spin(80);
  out.refreshFired = n.loopWatcherFired(h);
  out.refreshKicks = n.threadEatSignal(SIG);
  n.loopWatcherDisarm(h);
  clearTimeout(t);
}
await sleep(50);
// The cap on how long the loop waits, from the arm (capNow: the caller knows of pending work).
{
  out.capArm = n.loopWatcherArm(h, 20, true);
  spin(80);
  out.capFired = n.loopWatcherFired(h);
  out.capKicks = n.threadEatSignal(SIG);
  n.loopWatcherDisarm(h);
}
await sleep(50);
// Without capNow the cap waits for code to run on the loop's thread (a refresh): a slice that runs
// none (interrupts by irqfd, no exits) is never kicked for it; after a refresh it runs from there.
{
  out.lazyCapArm = n.loopWatcherArm(h, 20);
  spin(60);
  out.lazyCapFiredIdle = n.loopWatcherFired(h);
  out.lazyCapRefresh = n.loopWatcherRefresh(h);
  spin(5);
  out.lazyCapFiredEarly = n.loopWatcherFired(h);
  spin(60);
  out.lazyCapFired = n.loopWatcherFired(h);
  out.lazyCapKicks = n.threadEatSignal(SIG);
  n.loopWatcherDisarm(h);
}
await sleep(50);
// The run call (KVM_RUN with the watcher brought up to date): the first after an arm does not
// refresh (no code ran yet), the next does. fd -1 stands in for the vCPU: KVM_RUN fails at once.
{
  const run = () => {
    try {
      n.loopWatcherKvmRun(h);
      return 'ran';
    } catch (e) {
      return (e as Error & { code?: string }).code ?? (e as Error).message;
    }
  };
  out.runUnbound = run();
  n.loopWatcherBind(h, -1);
  n.loopWatcherArm(h, 20);
  out.runFirst = run();
  spin(60);
  out.runFiredFirst = n.loopWatcherFired(h);
  out.runSecond = run();
  spin(60);
  out.runFired = n.loopWatcherFired(h);
  out.runKicks = n.threadEatSignal(SIG);
  n.loopWatcherDisarm(h);
}
await sleep(50);
// A refresh reads the timers the arm found, however many other handles the loop has (fd watches of
// an assigned device's notifiers): a timer started during the slice is still watched.
{
  const fds = Array.from({ length: 64 }, () => n.eventfd(0, EFD_NONBLOCK));
  const watches = fds.map((fd) => n.fdWatch(fd, () => {}, false));
  n.loopWatcherArm(h);
  const t = setTimeout(() => {}, 15);
  out.manyRefresh = n.loopWatcherRefresh(h);
  spin(60);
  out.manyFired = n.loopWatcherFired(h);
  out.manyKicks = n.threadEatSignal(SIG);
  n.loopWatcherDisarm(h);
  clearTimeout(t);
  for (const w of watches) n.fdUnwatch(w);
  for (const fd of fds) closeSync(fd);
}
await sleep(50);
// I/O for the loop (a worker's message makes the backend fd readable).
{
  const { Worker } = await import('node:worker_threads');
  const w = new Worker(
    'const { parentPort } = require("node:worker_threads"); parentPort.once("message", () => setTimeout(() => parentPort.postMessage(1), 30))',
    { eval: true },
  );
  await new Promise((r) => w.once('online', r));
  await sleep(50);
  w.postMessage('go');
  n.loopWatcherArm(h);
  spin(300);
  out.ioFired = n.loopWatcherFired(h);
  out.ioKicks = n.threadEatSignal(SIG);
  n.loopWatcherDisarm(h);
  await w.terminate();
}
n.loopWatcherDestroy(h);
try {
  n.loopWatcherArm(h);
} catch (e) {
  out.afterDestroy = (e as Error).message;
}
clearInterval(keep);
process.stdout.write(JSON.stringify(out) + '\n');
