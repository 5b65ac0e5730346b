// `npm run fuzz`: the long runs of both fuzzers. The in-process one (test/helpers/fuzz-vfio-pci.ts)
// here; the guest one (guest/src/test-fuzz.c, test=fuzz) in the test host with edu and nvme,
// through test/host/legacy/hostile.test.ts. Prints seed, accesses, time and verdict of each.
// The QMP fuzzer (test/helpers/fuzz-qmp.ts) against `tsvmm run` of a spinning guest.
//   node dist/test/fuzz/run.js [--seed N] [--count N] [--host-count N | --no-host]
//                              [--qmp-sessions N | --no-qmp]
//                              [--iommu-count N] [--only vfio-pci|virtio-iommu|host|qmp]
// (TSVMM_FUZZ_QMP_SESSIONS sets --qmp-sessions' default.) The virtio-iommu fuzzer
// (test/helpers/fuzz-virtio-iommu.ts) sends random requests and descriptor tables through the
// virtio-pci transport.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fuzzVfioPci } from '../helpers/fuzz-vfio-pci.js';
import { fuzzQmp } from '../helpers/fuzz-qmp.js';
import { fuzzVirtioIommu } from '../helpers/fuzz-virtio-iommu.js';
import { vmTarget } from '../helpers/qmp-fuzz-targets.js';
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
const iommuCount = opt('iommu-count', 1e6);
const qmpSessions = opt('qmp-sessions', Number(process.env.TSVMM_FUZZ_QMP_SESSIONS ?? 1e5));
const onlyAt = args.indexOf('--only');
const only = onlyAt >= 0 ? args[onlyAt + 1] : undefined;
const runs = (target: string, flag: string) => (only ? only === target : !args.includes(flag));
let failed = false;

if (runs('qmp', '--no-qmp')) {
  console.log(`QMP fuzz against tsvmm run: seed=${seed} sessions=${qmpSessions}`);
  const t = await vmTarget();
  try {
    const t0 = Date.now();
    const q = await fuzzQmp(t, {
      seed,
      sessions: qmpSessions,
      progress: (n) => console.log(`  ${n} sessions, ${((Date.now() - t0) / 1000).toFixed(0)} s`),
    });
    const mib = (b: number) => (b / 2 ** 20).toFixed(1);
    console.log(
      `QMP fuzz: seed=${seed} sessions=${q.sessions} bytes=${q.bytes} replies=${q.replies} huge=${q.huge} rss=${mib(q.rssStart)}->${mib(q.rssEnd)}MiB fds=${q.fdsStart}->${q.fdsEnd} time=${(q.ms / 1000).toFixed(1)}s verdict=${q.violations.length ? 'FAIL' : 'pass'}`,
    );
    for (const v of q.violations) console.log(`  ${v}`);
    failed ||= q.violations.length > 0;
  } finally {
    await t.stop();
  }
}

if (runs('vfio-pci', '--no-vfio-pci')) {
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
}

if (runs('virtio-iommu', '--no-virtio-iommu')) {
  console.log(`in-process virtio-iommu fuzz: seed=${seed} requests=${iommuCount}`);
  const t0 = Date.now();
  const r = fuzzVirtioIommu({
    seed,
    count: iommuCount,
    progress: (n) => console.log(`  ${n} requests, ${((Date.now() - t0) / 1000).toFixed(0)} s`),
  });
  console.log(
    `in-process virtio-iommu fuzz: seed=${seed} requests=${r.requests} resets=${r.resets} needs-reset=${r.needsReset} max-mappings=${r.maxMappings} time=${(r.ms / 1000).toFixed(1)}s verdict=${r.violations.length ? 'FAIL' : 'pass'}`,
  );
  for (const v of r.violations) console.log(`  ${v}`);
  failed ||= r.violations.length > 0;
}

if (runs('host', '--no-host')) {
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
