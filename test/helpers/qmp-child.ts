// A QMP server alone in a process of its own (run with --expose-gc), for tests that measure that
// process: its RSS (x-rss: after garbage collection) and its event loop (x-loop: the longest gap
// between ticks of a 1 ms timer since the last x-loop, and how many ticks there were).
//   node --expose-gc dist/test/helpers/qmp-child.js SOCKET
import { setTimeout as sleep } from 'node:timers/promises';
import { QmpServer } from '../../frontend/qmp/server.js';

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('qmp-child needs --expose-gc');
let last = performance.now(),
  maxGap = 0,
  ticks = 0;
setInterval(() => {
  const now = performance.now();
  maxGap = Math.max(maxGap, now - last);
  last = now;
  ticks++;
}, 1);

const srv = new QmpServer(
  process.argv[2]!,
  {
    'query-name': () => ({ name: 'child' }),
    'x-rss': async () => {
      for (let i = 0; i < 3; i++) {
        gc();
        await sleep(50);
      }
      const m = process.memoryUsage();
      return { rss: m.rss, heapTotal: m.heapTotal, heapUsed: m.heapUsed, external: m.external };
    },
    'x-loop': () => {
      const r = { maxGap, ticks };
      maxGap = 0;
      ticks = 0;
      return r;
    },
  },
  { qemu: { major: 7, minor: 2, micro: 0 }, package: 'qmp-child' },
);
await srv.listen();
process.stdout.write('ready\n');
process.stdin.resume();
process.stdin.on('end', () => void srv.close().then(() => process.exit(0)));
