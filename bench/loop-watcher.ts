// What vCPU 0's per-exit loop-watcher call costs natively, against how many libuv handles the event
// loop has (an assigned device adds fd watches: its VFIO notifiers). No KVM: a byte array stands in for
// the kvm_run page. loopWatcherKvmRun does this refresh and then KVM_RUN.
//
//   node dist/bench/loop-watcher.js [--calls N]
import { closeSync } from 'node:fs';
import { EFD_NONBLOCK, native } from '../core/native.js';

function perCall(calls: number, fn: () => void): number {
  for (let i = 0; i < 1000; i++) fn();
  const t = process.hrtime.bigint();
  for (let i = 0; i < calls; i++) fn();
  return Number(process.hrtime.bigint() - t) / calls;
}

function main(): void {
  const i = process.argv.indexOf('--calls');
  const calls = i >= 0 ? Number(process.argv[i + 1]) : 200_000;
  const n = native();
  const sig = n.constants.SIGRTMIN + 2;
  const me = n.threadPrepareKick(sig, true);
  const page = new Uint8Array(new ArrayBuffer(64));
  const h = n.loopWatcherCreate(page.buffer, 8, me, sig);
  const keep = setInterval(() => {}, 3_600_000); // Node's timer handle is active, as in a VM
  const fds: number[] = [],
    watches: number[] = [];
  const rows = ['| extra fd watches | loopWatcherRefresh (ns per call) |', '| ---: | ---: |'];
  for (const extra of [0, 10, 30, 100, 300]) {
    while (watches.length < extra) {
      const fd = n.eventfd(0, EFD_NONBLOCK);
      fds.push(fd);
      watches.push(n.fdWatch(fd, () => {}, false));
    }
    n.loopWatcherArm(h, 100_000, true);
    const refresh = perCall(calls, () => n.loopWatcherRefresh(h));
    n.loopWatcherDisarm(h);
    n.threadEatSignal(sig);
    rows.push(`| ${extra} | ${refresh.toFixed(0)} |`);
  }
  for (const w of watches) n.fdUnwatch(w);
  for (const fd of fds) closeSync(fd);
  n.loopWatcherDestroy(h);
  clearInterval(keep);
  process.stdout.write(rows.join('\n') + '\n');
}

if (process.argv[1] && import.meta.url === `file://${process.argv[1]}`) main();
