// No way into a running VMM: SIGUSR1 opens no inspector (in `tsvmm run` and in the VMM `tsvmm
// manager` starts), and `tsvmm run` runs its guest inside the seccomp sandbox unless told not to.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { projectRoot } from '../../core/paths.js';
import { writeConfig } from '../helpers/manager.js';

const cli = join(projectRoot, 'dist/bin/tsvmm.cjs');
// A guest (32-bit protected mode) that writes 'R' to COM1, then spins until the VMM is stopped: once
// 'R' is out, set-up is over and the guest runs. In a directory `nobody` can read.
const cfg = writeConfig({ memory: 4, kernel: { path: 'spin.bin', format: 'flat' } });
const spin = join(dirname(cfg), 'spin.bin');
// mov al, 'R'; mov dx, 0x3f8; out dx, al; jmp $
writeFileSync(spin, Uint8Array.from([0xb0, 0x52, 0x66, 0xba, 0xf8, 0x03, 0xee, 0xeb, 0xfe]));
chmodSync(spin, 0o644);

/** The line of /proc/<pid>/status for key ('Seccomp' → '2' once the filter is on), or undefined. */
function status(pid: number, key: string): string | undefined {
  try {
    return new RegExp(`^${key}:\\s*(\\S+)`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
  } catch {
    return undefined;
  }
}

/** TCP sockets (any port, v4 or v6) among the process's fds: the inspector would be one. */
function tcpSockets(pid: number): string[] {
  const tcp = new Map<string, string>();
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    const text = existsSync(f) ? readFileSync(f, 'utf8') : '';
    for (const line of text.split('\n').slice(1)) {
      const c = line.trim().split(/\s+/);
      if (c.length > 9) tcp.set(c[9]!, `${c[1]} state ${c[3]}`);
    }
  }
  const out: string[] = [];
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    let link = '';
    try {
      link = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    const inode = /^socket:\[(\d+)\]$/.exec(link)?.[1];
    if (inode && tcp.has(inode)) out.push(`fd ${fd}: ${tcp.get(inode)}`);
  }
  return out;
}

function collect(p: ChildProcess) {
  const io = { out: '', err: '' };
  p.stdout?.on('data', (d) => (io.out += d));
  p.stderr?.on('data', (d) => (io.err += d));
  const exited = new Promise<number | null>((r) => p.on('exit', (c) => r(c)));
  return { io, exited };
}

async function until(ok: () => boolean, what: string, log: () => string, p?: ChildProcess): Promise<void> {
  for (let i = 0; i < 1200 && !ok() && p?.exitCode == null; i++) await sleep(50);
  assert.ok(ok(), `${what}\n${log()}`);
}

/** Sends SIGUSR1 to the VMM (set up: its filter is on) and checks it keeps running with no inspector. */
async function usr1Harmless(vmm: number, io: { err: string }, running: () => boolean): Promise<void> {
  process.kill(vmm, 'SIGUSR1');
  // Either tsvmm's note that it ignored the signal, or node's inspector announcing itself.
  await until(
    () => /SIGUSR1 ignored|Debugger listening|inspector on/.test(io.err),
    'the VMM said nothing after SIGUSR1',
    () => io.err,
  );
  await sleep(300); // a listener, if one were starting, has bound by now
  assert.doesNotMatch(io.err, /Debugger listening|inspector on/);
  assert.deepEqual(tcpSockets(vmm), [], 'the VMM holds no TCP socket');
  assert.ok(running(), `the VM keeps running after SIGUSR1\n${io.err}`);
}

test('tsvmm run: SIGUSR1 starts no inspector and the VM keeps running', async () => {
  const vm = spawn(process.execPath, [cli, 'run', cfg], { stdio: ['ignore', 'pipe', 'pipe'] });
  const { io, exited } = collect(vm);
  try {
    await until(
      () => status(vm.pid!, 'Seccomp') === '2',
      'the VMM never entered its sandbox',
      () => io.err,
    );
    await usr1Harmless(vm.pid!, io, () => vm.exitCode === null);
    vm.kill('SIGTERM');
    assert.equal(await exited, 143, io.err);
  } finally {
    vm.kill('SIGKILL');
  }
});

test(
  'tsvmm manager: its unprivileged VMM ignores SIGUSR1 too (and runs sandboxed)',
  { skip: process.getuid?.() !== 0 && 'the manager runs as root' },
  async () => {
    const mgr = spawn(process.execPath, [cli, 'manager', cfg, '--user', 'nobody', '--memlock', '4M'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const { io, exited } = collect(mgr);
    // (--memlock: no device to pin for; a limit under the current one needs no CAP_SYS_RESOURCE.)
    // prlimit execs setpriv, which execs node: the VMM is the manager's child, under one pid.
    const child = () => {
      try {
        const c = readFileSync(`/proc/${mgr.pid}/task/${mgr.pid}/children`, 'utf8').trim().split(/\s+/)[0];
        return c ? Number(c) : undefined;
      } catch {
        return undefined;
      }
    };
    try {
      await until(
        () => child() !== undefined && status(child()!, 'Seccomp') === '2',
        'the manager never started a sandboxed VMM',
        () => io.err,
        mgr,
      );
      const vmm = child()!;
      assert.notEqual(status(vmm, 'Uid'), '0', 'the VMM is not root');
      await usr1Harmless(vmm, io, () => status(vmm, 'State') !== undefined && mgr.exitCode === null);
      process.kill(vmm, 'SIGTERM');
      assert.equal(await exited, 143, io.err);
    } finally {
      const c = child();
      if (c) process.kill(c, 'SIGKILL');
      mgr.kill('SIGKILL');
    }
  },
);

test('the guest runs inside the filter by default, outside it with --sandbox off; the demo guest runs either way', async () => {
  for (const mode of ['on', 'off']) {
    const r = spawnSync(process.execPath, [cli, 'run', '--cpus', '2', '--sandbox', mode], {
      encoding: 'utf8',
      timeout: 60000,
    });
    assert.equal(r.status, 0, `--sandbox ${mode}: ${r.stderr}`);
    assert.match(r.stdout, /^tsvmm-guest: exit 0$/m);
  }
  for (const [args, seccomp] of [
    [[], '2'],
    [['--sandbox', 'off'], '0'],
  ] as const) {
    const vm = spawn(process.execPath, [cli, 'run', cfg, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const { io, exited } = collect(vm);
    try {
      await until(
        () => io.out.includes('R'),
        'the guest never ran',
        () => io.err,
      );
      assert.equal(status(vm.pid!, 'Seccomp'), seccomp, `${args.join(' ') || 'default'}: seccomp mode`);
      assert.equal(status(vm.pid!, 'NoNewPrivs'), seccomp === '2' ? '1' : '0');
      vm.kill('SIGTERM');
      assert.equal(await exited, 143, io.err);
    } finally {
      vm.kill('SIGKILL');
    }
  }
});

test('a terminal on stdio (serial stdio): libuv’s tty ioctls pass the filter', () => {
  // script(1) (util-linux) gives the VMM a pty for stdin, stdout and stderr, as an interactive shell does.
  const cmd = [process.execPath, cli, 'run', '--serial', 'stdio', '--cpus', '2'].map((a) => `'${a}'`).join(' ');
  const r = spawnSync('script', ['-qec', cmd, '/dev/null'], { encoding: 'utf8', timeout: 60000, input: '' });
  assert.equal(r.error, undefined, 'script(1) from util-linux is needed');
  assert.doesNotMatch(r.stdout, /sandbox stopped/);
  assert.equal(r.status, 0, r.stdout);
  assert.match(r.stdout, /^tsvmm-guest: exit 0\r?$/m);
});

test('io_uring set up before the sandbox (UV_USE_IO_URING=1) is refused with the fix; --sandbox off runs', () => {
  const env = { ...process.env, UV_USE_IO_URING: '1' };
  const on = spawnSync(process.execPath, [cli, 'run'], { encoding: 'utf8', timeout: 60000, env });
  // A node whose libuv makes no ring for it has nothing to refuse: then the guest runs.
  if (!/io_uring instances/.test(on.stderr)) assert.equal(on.status, 0, on.stderr);
  else {
    assert.equal(on.status, 1, on.stderr);
    assert.match(on.stderr, /unset UV_USE_IO_URING/);
  }
  const off = spawnSync(process.execPath, [cli, 'run', '--sandbox', 'off'], { encoding: 'utf8', timeout: 60000, env });
  assert.equal(off.status, 0, off.stderr);
});
