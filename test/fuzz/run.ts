// `npm run fuzz`: the long runs of both fuzzers. The in-process one (test/helpers/fuzz-vfio-pci.ts)
// here; the guest one (guest/src/test-fuzz.c, test=fuzz) in the test host with edu and nvme,
// through test/host/legacy/hostile.test.ts. Prints seed, accesses, time and verdict of each.
//   node dist/test/fuzz/run.js [--seed N] [--count N] [--host-count N | --no-host]
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fuzzVfioPci } from '../helpers/fuzz-vfio-pci.js';
import { projectRoot } from '../../core/paths.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: number): number => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const seed = opt('seed', Date.now() % 1000000);
const count = opt('count', 1e7);
// ~10 ms an access in the TCG test host, whose runs are capped at 15 min: 60000 fit with room.
const hostCount = opt('host-count', 60000);
let failed = false;

console.log(`in-process vfio-pci fuzz: seed=${seed} count=${count}`);
const t0 = Date.now();
const r = fuzzVfioPci({
  seed,
  count,
  progress: (n) => console.log(`  ${n} accesses, ${((Date.now() - t0) / 1000).toFixed(0)} s`),
});
console.log(
  `in-process vfio-pci fuzz: seed=${seed} accesses=${r.accesses} boards=${r.boards} kvm-refusals=${r.refusedByKvm} time=${(r.ms / 1000).toFixed(1)}s verdict=${r.violations.length ? 'FAIL' : 'pass'}`,
);
for (const v of r.violations) console.log(`  ${v}`);
failed ||= r.violations.length > 0;

if (!args.includes('--no-host')) {
  console.log(`guest fuzz in the test host (edu + nvme): seed=${seed} count=${hostCount}`);
  const timeout = Math.min(900, 180 + Math.ceil(hostCount / 100));
  const p = spawnSync(
    process.execPath,
    [
      join(projectRoot, 'dist/bin/tsvmm.cjs'),
      'testhost',
      'run',
      '--devices',
      'edu,nvme',
      '--timeout',
      String(timeout),
      '--env',
      `TSVMM_FUZZ_COUNT=${hostCount}`,
      '--env',
      `TSVMM_FUZZ_SEED=${seed}`,
      '--',
      'node',
      '--test',
      '--test-name-pattern',
      'guest fuzzer',
      'dist/test/host/legacy/hostile.test.js',
    ],
    { stdio: 'inherit', cwd: projectRoot },
  );
  failed ||= p.status !== 0;
}
process.exitCode = failed ? 1 : 0;
