// What a benchmark launch needs before it starts: the project's paths, a scratch directory, the null VMM built
// from bench/null-vmm.c, and the -cpu QEMU can run with on this machine's KVM.
import { execFileSync, spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, mkdtempSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { innerQemuArgs, QEMU } from '../testhost/qemu.js';

// dist/bench/setup.js → the project root is ../../
export const root = fileURLToPath(new URL('../../', import.meta.url));
export const guestElf = join(root, 'guest/out/tsvmm-guest.elf');
export const tsvmmJs = join(root, 'dist/bin/tsvmm.cjs');
export const nullVmmSource = join(root, 'bench/null-vmm.c');
export { QEMU } from '../testhost/qemu.js';

let tmp: string | undefined;
/** A directory for this run's files (configs, a null VMM built where the tree is read-only). */
export function scratch(): string {
  return (tmp ??= mkdtempSync(join(tmpdir(), 'tsvmm-bench-')));
}

// ---- the null VMM: built by whichever entry point launches it ----------------------------------

/**
 * What to do about the null VMM binary: use it, build it where it is wanted, or (that directory is read-only, as the
 * project tree is inside the test host) build it in a scratch directory. Pure, for the unit test.
 */
export function nullVmmAction(o: {
  binaryMtimeMs: number | undefined;
  sourceMtimeMs: number;
  dirWritable: boolean;
}): 'use' | 'build' | 'build-in-scratch' {
  if (o.binaryMtimeMs !== undefined && o.binaryMtimeMs >= o.sourceMtimeMs) return 'use';
  return o.dirWritable ? 'build' : 'build-in-scratch';
}

let nullVmmPath: string | undefined;
/**
 * The null VMM's path, built with gcc first when missing or older than bench/null-vmm.c (dist/bench/null-vmm, or
 * $TSVMM_BENCH_NULL_VMM). Every launch of it goes through here, so `npm run bench`, `node dist/bench/runloop.js`,
 * run.js and memory.js all find it built.
 */
export function ensureNullVmm(): string {
  if (nullVmmPath) return nullVmmPath;
  const wanted = process.env.TSVMM_BENCH_NULL_VMM ?? join(root, 'dist/bench/null-vmm');
  const mtime = (f: string) => (existsSync(f) ? statSync(f).mtimeMs : undefined);
  let dirWritable = true;
  try {
    // Not recursive: Node's recursive mkdir can spin for ever on a pseudo file system (/proc).
    if (!existsSync(dirname(wanted))) mkdirSync(dirname(wanted));
    accessSync(dirname(wanted), constants.W_OK);
  } catch {
    dirWritable = false;
  }
  const action = nullVmmAction({
    binaryMtimeMs: mtime(wanted),
    sourceMtimeMs: statSync(nullVmmSource).mtimeMs,
    dirWritable,
  });
  const out = action === 'build-in-scratch' ? join(scratch(), 'null-vmm') : wanted;
  if (action !== 'use') {
    process.stderr.write(`bench: building the null VMM: gcc -O2 -o ${out} ${nullVmmSource}\n`);
    execFileSync('gcc', ['-O2', '-Wall', '-Wextra', '-o', out, nullVmmSource], {
      stdio: ['ignore', 'inherit', 'inherit'],
    });
  }
  return (nullVmmPath = out);
}

// ---- QEMU's -cpu: `host` where this KVM takes it, else what it does take -------------------------

/** MSRs a KVM may refuse to set for `-cpu host`, and the CPU feature whose removal stops QEMU from setting them. */
const REFUSED_MSR_FEATURES: Record<string, string> = {
  // IA32_ARCH_CAPABILITIES: a paravirtual KVM (kvm_pvm) refuses it.
  '10a': 'arch-capabilities',
};

export interface QemuCpuChoice {
  /** The -cpu value. */
  cpu: string;
  /** Why it is not plain `host` (for the results), when it is not. */
  note?: string;
}

/**
 * QEMU's -cpu after a launch with `cpu` failed with `stderr`: the same model without the feature whose MSR this KVM
 * refused ("failed to set MSR 0x10a"), or undefined when the failure is not one of those (nothing to fall back to).
 */
export function qemuCpuFallback(cpu: string, stderr: string): QemuCpuChoice | undefined {
  const m = /failed to set MSR 0x([0-9a-f]+)/i.exec(stderr);
  const feature = m ? REFUSED_MSR_FEATURES[m[1]!.toLowerCase().replace(/^0+/, '')] : undefined;
  if (!feature || cpu.split(',').includes(`-${feature}`)) return undefined;
  return {
    cpu: `${cpu},-${feature}`,
    note: `QEMU ran with -cpu ${cpu},-${feature}: this KVM refused -cpu ${cpu} (${m![0]}, QEMU aborted)`,
  };
}

let qemuCpuChoice: QemuCpuChoice | undefined;
/** The -cpu for QEMU on this machine's KVM: the test guest's demo is run once with `host`, then with each fallback. */
export function qemuCpu(): QemuCpuChoice {
  if (qemuCpuChoice) return qemuCpuChoice;
  let choice: QemuCpuChoice = { cpu: 'host' };
  for (let i = 0; i < 3; i++) {
    const r = spawnSync(
      QEMU,
      [
        ...innerQemuArgs({ memMiB: 64, cpu: choice.cpu }),
        '-device',
        'isa-debug-exit,iobase=0xf4,iosize=4',
        '-kernel',
        guestElf,
      ],
      { encoding: 'utf8', timeout: 60_000, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    // The demo guest exits 0 through the debug-exit port: QEMU's status (0 << 1) | 1.
    if (r.status === 1) break;
    const next = qemuCpuFallback(choice.cpu, r.stderr ?? '');
    if (!next) break; // another failure: the launches themselves will report it
    process.stderr.write(`bench: ${next.note}\n`);
    choice = next;
  }
  return (qemuCpuChoice = choice);
}
