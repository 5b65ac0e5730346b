// The bench on any kind of /dev/kvm: QEMU's -cpu falls back when this KVM refuses an MSR of `-cpu host` (judged from
// QEMU's own stderr), and the null VMM is built by whichever entry point launches it (every launch goes through
// bench/vmm.ts command()), also where the project tree is read-only (inside the test host).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { accessSync, constants, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectRoot } from '../../core/paths.js';
import { nullVmmAction, qemuCpuFallback } from '../../bench/setup.js';

// What QEMU 7.2 printed on a paravirtual KVM (kvm_pvm) before it aborted.
const pvmStderr =
  'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n' +
  "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.\n";

test('QEMU -cpu: host refused for MSR 0x10a → host,-arch-capabilities, saying why', () => {
  const c = qemuCpuFallback('host', pvmStderr);
  assert.equal(c?.cpu, 'host,-arch-capabilities');
  assert.match(c!.note!, /-cpu host,-arch-capabilities: this KVM refused -cpu host \(failed to set MSR 0x10a/);
  assert.equal(qemuCpuFallback('host', 'error: failed to set MSR 0x0000010A to 0x1')?.cpu, 'host,-arch-capabilities');
});

test('QEMU -cpu: no fallback for other failures, an unknown MSR, or a feature already dropped', () => {
  assert.equal(
    qemuCpuFallback('host', 'qemu-system-x86_64: Could not access KVM kernel module: No such file'),
    undefined,
  );
  assert.equal(qemuCpuFallback('host', 'error: failed to set MSR 0x48 to 0x1'), undefined);
  assert.equal(qemuCpuFallback('host,-arch-capabilities', pvmStderr), undefined);
  assert.equal(qemuCpuFallback('host', ''), undefined);
});

test('null VMM: used when up to date, built when missing or stale, in a scratch dir when its dir is read-only', () => {
  assert.equal(nullVmmAction({ binaryMtimeMs: 20, sourceMtimeMs: 10, dirWritable: true }), 'use');
  assert.equal(nullVmmAction({ binaryMtimeMs: 20, sourceMtimeMs: 10, dirWritable: false }), 'use');
  assert.equal(nullVmmAction({ binaryMtimeMs: undefined, sourceMtimeMs: 10, dirWritable: true }), 'build');
  assert.equal(nullVmmAction({ binaryMtimeMs: 5, sourceMtimeMs: 10, dirWritable: true }), 'build');
  assert.equal(nullVmmAction({ binaryMtimeMs: undefined, sourceMtimeMs: 10, dirWritable: false }), 'build-in-scratch');
});

/** A launch's argv for the null VMM, from a fresh process (as runloop.js, run.js or memory.js would start). */
function nullArgv(binary: string): string[] {
  const script =
    `import { command } from ${JSON.stringify(join(projectRoot, 'dist/bench/vmm.js'))};` +
    `process.stdout.write(JSON.stringify(command({ vmm: 'null', memMiB: 16, cmdline: '', bdf: '' })));`;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], {
    encoding: 'utf8',
    env: { ...process.env, TSVMM_BENCH_NULL_VMM: binary },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return JSON.parse(out) as string[];
}

test('null VMM: a launch builds it when it is missing (any entry point), and the next one uses it', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-nullvmm-'));
  try {
    const bin = join(dir, 'sub', 'null-vmm');
    assert.equal(existsSync(bin), false);
    const argv = nullArgv(bin);
    assert.equal(argv[0], bin);
    accessSync(bin, constants.X_OK);
    assert.deepEqual(argv.slice(1, 3), ['--kernel', join(projectRoot, 'guest/out/tsvmm-guest.elf')]);
    assert.equal(nullArgv(bin)[0], bin, 'up to date: used as it is');
    // A directory that cannot be written (the test host's read-only view of the project): built elsewhere.
    const elsewhere = nullArgv('/proc/tsvmm-no-such-dir/null-vmm')[0]!;
    assert.notEqual(elsewhere, '/proc/tsvmm-no-such-dir/null-vmm');
    accessSync(elsewhere, constants.X_OK);
    rmSync(join(elsewhere, '..'), { recursive: true, force: true });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
