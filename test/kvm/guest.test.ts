// Real guests on this machine's /dev/kvm (no interrupts needed: the paravirtual KVM of some
// hosts cannot deliver them; those tests run in the test host, test/host/).
import { inside } from '../helpers/inside.js';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openFds } from '../helpers/guest.js';
import { guestPaths } from '../../guest/index.js';
import { projectRoot } from '../../core/paths.js';
import { Machine } from '../../machine/machine.js';
import { native } from '../../core/native.js';
import { checkConfig } from '../../machine/config/config.js';
import { createVm, type VmConfig } from '../../lib/index.js';
import type { TsvmmError } from '../../core/errors.js';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-kvm-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const cli = join(projectRoot, 'dist/bin/tsvmm.cjs');

/** A flat 32-bit guest from raw bytes. */
function flatGuest(name: string, code: number[]): string {
  const p = join(dir, name);
  writeFileSync(p, Uint8Array.from(code));
  return p;
}
const le32 = (v: number) => [v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >>> 24) & 0xff];
const OUT_F4_EAX = [0xe7, 0xf4];

/** Boots a config through the library until the guest ends: its exit, console and inspection. */
async function boot(config: Partial<VmConfig>) {
  await using vm = await createVm({ memory: 64, kernel: { path: guestPaths().elf }, ...config }, { baseDir: dir });
  vm.start();
  const exit = await vm.waitForExit();
  const output = vm.serial;
  return { ...exit, output, lines: output.replace(/\r/g, '').split('\n'), inspection: vm.inspect() };
}

function runCli(
  args: string[],
  opts: { signalAfterMs?: number } = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '',
      stderr = '';
    p.stdout.on('data', (b) => {
      stdout += b;
    });
    p.stderr.on('data', (b) => {
      stderr += b;
    });
    // SIGINT once tsvmm has its handler (SigCgt bit 2: a slow start, as in the nested test host,
    // must not meet Node's default action) and the guest has had signalAfterMs to spin.
    const caught = () => {
      try {
        return (
          (BigInt('0x' + /^SigCgt:\s*([0-9a-f]+)/m.exec(readFileSync(`/proc/${p.pid}/status`, 'utf8'))![1]) & 2n) !== 0n
        );
      } catch {
        return false;
      }
    };
    const arm = () =>
      p.exitCode !== null
        ? undefined
        : caught()
          ? setTimeout(() => p.kill('SIGINT'), opts.signalAfterMs)
          : setTimeout(arm, 20);
    if (opts.signalAfterMs) arm();
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

test('demo guest: serial output, PCI enumeration of the host bridge, exit 0 via the debug port', async () => {
  const r = await boot({});
  assert.equal(r.status, 0, r.reason + '\n' + r.output);
  assert.match(r.reason, /debug-exit/);
  assert.ok(r.lines.includes('tsvmm-guest: start'), r.output);
  assert.ok(r.lines.includes('pci 00:00.0 8086:0d57 class 060000'), r.output);
  assert.ok(r.lines.includes('tsvmm-guest: 1 pci functions'), r.output);
  assert.ok(r.lines.includes('tsvmm-guest: memory lower 639K upper 64512K'), r.output);
});

test('the multiboot command line reaches the guest; an unknown option exits 2', async () => {
  const r = await boot({ cmdline: 'bogus=1' });
  assert.ok(r.lines.includes('tsvmm-guest: cmdline "bogus=1"'), r.output);
  assert.ok(r.lines.includes('tsvmm-guest: unknown option bogus=1'), r.output);
  assert.equal(r.status, 2);
});

test('the flat binary of the same guest runs the same way', async () => {
  const info = JSON.parse(readFileSync(guestPaths().json, 'utf8')) as { loadAddress: number; entry: number };
  const r = await boot({
    kernel: { path: guestPaths().bin, format: 'flat', loadAddress: info.loadAddress, entry: info.entry },
  });
  assert.equal(r.status, 0, r.output);
  assert.ok(r.lines.includes('pci 00:00.0 8086:0d57 class 060000'), r.output);
});

test('debug-exit status is the value written; port exits are counted', async () => {
  // mov ecx, 1000; l: out 0x80, al; dec ecx; jnz l; mov eax, 42; out 0xf4, eax
  const p = flatGuest('exit42.bin', [
    0xb9,
    ...le32(1000),
    0xe6,
    0x80,
    0x49,
    0x75,
    0xfb,
    0xb8,
    ...le32(42),
    ...OUT_F4_EAX,
    0xf4,
  ]);
  const r = await boot({ memory: 4, kernel: { path: p, format: 'flat' } });
  assert.equal(r.status, 42);
  // 1000 writes to port 0x80 and one to 0xf4: the guest's only exits.
  assert.deepEqual(r.inspection.exits, { io: 1001, mmio: 0, total: 1001 });
});

test('a machine frees every fd and mapping it opened', async () => {
  await boot({});
  const before = openFds();
  for (let i = 0; i < 3; i++) await boot({});
  assert.equal(openFds(), before);
});

// A full KVM reports the triple fault as a shutdown; this host's paravirtual KVM fails to
// emulate the faulting int3 instead. Either way the VM must end with status 1 and a reason.
test('a crashing guest ends the VM with status 1 and says why', async () => {
  // lidt [empty]; int3 → no IDT → triple fault. idt descriptor (limit 0) at 0x100010.
  const p = flatGuest('tf.bin', [
    0x0f,
    0x01,
    0x1d,
    ...le32(0x100010),
    0xcc,
    0xf4,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
  ]);
  const r = await boot({ memory: 4, kernel: { path: p, format: 'flat' } });
  assert.equal(r.status, 1);
  assert.match(r.reason, /triple fault|KVM internal error, suberror 1 \(1 = emulation failure\)/);
});

test('CLI: npx-style run of the demo prints the guest output and exits 0', async () => {
  const r = await runCli(['run']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^pci 00:00\.0 8086:0d57 class 060000$/m);
});

test('CLI: SIGINT stops a spinning guest (kicks the vCPU out of KVM_RUN) and exits 130', async () => {
  const p = flatGuest('spin.bin', [0xeb, 0xfe]); // jmp $
  const cfg = join(dir, 'spin.json');
  writeFileSync(cfg, JSON.stringify({ memory: 4, kernel: { path: p, format: 'flat' } }));
  const r = await runCli(['run', cfg], { signalAfterMs: 1500 });
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, /interrupted \(SIGINT\)/);
});

test('CLI: a bad config exits 2 with the JSON pointer; nothing runs', async () => {
  const cfg = join(dir, 'bad.json');
  writeFileSync(cfg, JSON.stringify({ memory: '65537K', kernel: { path: 'missing.elf' }, colour: 'red' }));
  const r = await runCli(['run', cfg]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /unknown key "colour"/);
  const v = await runCli(['validate', cfg]);
  assert.equal(v.code, 2);
  assert.match(v.stderr, /\(top level\): unknown key "colour"/);
  writeFileSync(cfg, JSON.stringify({ memory: '65537K', kernel: { path: 'missing.elf' } }));
  const v2 = await runCli(['validate', cfg]);
  assert.match(v2.stderr, /\/memory: "65537K" is not a multiple of the 4 KiB page size/);
  assert.match(v2.stderr, /\/kernel\/path: .*missing\.elf does not exist/);
});

// Below the library: the Machine's own checks, beneath what a config (and createVm) lets through.
test('no KVM: a clear message naming the device and the fix', () => {
  const config = checkConfig({ memory: 4, kernel: { path: guestPaths().elf } }, 't', dir);
  assert.throws(
    () => new Machine(config, { kvmPath: join(dir, 'no-kvm') }),
    (e: TsvmmError) =>
      /no-kvm does not exist: this machine has no KVM$/.test(e.message) && /^run on a Linux host/.test(e.fix ?? ''),
  );
});

test('an image too big for RAM is refused before anything runs', () => {
  const big = join(dir, 'big.bin');
  writeFileSync(big, new Uint8Array(3 * 2 ** 20));
  // checkConfig refuses it (test/unit/validate.test.ts); the machine's own check still holds.
  const config = {
    ...checkConfig({ memory: 4, kernel: { path: big, format: 'flat' } }, 't', dir),
    memoryBytes: 2 * 2 ** 20,
  };
  const before = openFds();
  assert.throws(() => new Machine(config), /do not fit in RAM below 3 GiB: give the VM more memory/);
  assert.equal(openFds(), before, 'a failed construction leaks nothing');
});

test('a guest that halts with interrupts off stays halted and the VM runs on (the in-kernel irqchip, as QEMU)', async () => {
  // mov dx, 0x3f8; mov al, 'H'; out dx, al; cli; hlt; mov al, 1; out 0xf4, al (only if woken)
  const path = flatGuest('halt.bin', [0x66, 0xba, 0xf8, 0x03, 0xb0, 0x48, 0xee, 0xfa, 0xf4, 0xb0, 0x01, 0xe6, 0xf4]);
  const config = checkConfig({ memory: 16, kernel: { path, format: 'flat' } }, 't', dir);
  let out = '';
  const m = new Machine(config, { serialOutput: (b) => (out += Buffer.from(b).toString('latin1')) });
  let ended: { status: number; reason: string } | undefined;
  const run = m.run().then((r) => (ended = r));
  try {
    while (!out.includes('H') && !ended) await new Promise((r) => setTimeout(r, 10));
    // Halted is the vCPU's state in KVM (KVM_GET_MP_STATE), read with the vCPUs parked: no
    // public interface has it. Until the vCPU reaches its hlt it reads runnable.
    const { KVM_MP_STATE_HALTED } = native().constants;
    let state: number | undefined;
    for (let i = 0; i < 500 && state !== KVM_MP_STATE_HALTED && !ended; i++) {
      await inside(m).vm.reset(() => (state = inside(m).vm.vcpus[0]!.mpState));
      if (state !== KVM_MP_STATE_HALTED) await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(ended, undefined, `the VM ended: ${JSON.stringify(ended)}`);
    assert.equal(state, KVM_MP_STATE_HALTED, 'the vCPU halted');
    m.exit(7, 'ended by the test');
    assert.deepEqual(await run.then((r) => [r.status, r.reason]), [7, 'ended by the test']);
  } finally {
    m.exit(1, 'test cleanup');
    await run;
    m.close();
  }
});
