// Booting the host's QEMU: command line, process group, wall-clock limit, and cleanup on signals.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { connect } from 'node:net';
import { killGroup, TestHostError, track } from './util.js';

export const QEMU = 'qemu-system-x86_64';

/**
 * The start of an inner QEMU's command line, as the tests and the benchmark run it inside the
 * test host to compare with tsvmm: KVM, q35, the host CPU, no default devices, COM1 on stdio.
 */
export function innerQemuArgs(o: { memMiB: number; vcpus?: number; machine?: string; cpu?: string }): string[] {
  const base = ['-accel', 'kvm', '-M', o.machine ?? 'q35', '-cpu', o.cpu ?? 'host', '-m', `${o.memMiB}M`];
  return [
    ...base,
    '-smp',
    String(o.vcpus ?? 1),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-serial',
    'stdio',
  ];
}
const SETPRIV = '/usr/bin/setpriv';

export interface Share {
  tag: string;
  path: string;
  readonly: boolean;
}

export interface QemuConfig {
  kernel: string;
  initrd: string;
  append: string;
  memoryMiB: number;
  cpus: number;
  shares: Share[];
  deviceArgs: string[];
  consoleLog: string;
  qemuLog: string;
  /** The human monitor's unix socket. */
  monitor?: string;
}

/** q35 + intel-iommu (so VFIO has an IOMMU) + EPYC with SVM (so kvm_amd loads inside); TCG, as the outer has no usable nested KVM. */
export function qemuArgs(c: QemuConfig): string[] {
  const args = [
    '-accel',
    'tcg',
    '-M',
    'q35,kernel-irqchip=split',
    '-cpu',
    'EPYC,+svm',
    '-m',
    `${c.memoryMiB}M`,
    '-smp',
    String(c.cpus),
    // -nodefaults: no default NIC/VGA claiming PCI slots, so device addresses are ours alone.
    '-nodefaults',
    '-no-user-config',
    '-no-reboot',
    '-display',
    'none',
    '-serial',
    `file:${c.consoleLog}`,
    '-device',
    'intel-iommu,intremap=on,caching-mode=on',
    '-kernel',
    c.kernel,
    '-initrd',
    c.initrd,
    '-append',
    c.append,
  ];
  // The human monitor: a stuck host can be looked at (info registers, x/i) while it runs. Only where its path fits
  // a unix socket's address (108 bytes with the NUL): a long cache path goes without (monitorCommands then gets '').
  if (c.monitor && Buffer.byteLength(c.monitor) < 100) args.push('-monitor', `unix:${c.monitor},server=on,wait=off`);
  c.shares.forEach((s, i) => {
    // Explicit virtio-9p devices (not -virtfs) to pin their slots away from the test devices.
    args.push(
      '-fsdev',
      `local,id=fs${i},path=${s.path},security_model=none,multidevs=remap${s.readonly ? ',readonly=on' : ''}`,
      '-device',
      `virtio-9p-pci,fsdev=fs${i},mount_tag=${s.tag},addr=${(0x10 + i).toString(16)}.0`,
    );
  });
  return [...args, ...c.deviceArgs];
}

export interface QemuExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  killedForTimeout: boolean;
}

/**
 * Start QEMU in its own process group (detached) so a timeout or signal can kill it and any helpers.
 * Resolves when it exits; after `timeoutMs` it is killed. stdout/stderr go to qemuLog (no pipes to fill up).
 */
export function startQemu(
  c: QemuConfig,
  timeoutMs: number,
): { child: ChildProcess; done: Promise<QemuExit>; kill: () => void } {
  const fd = openSync(c.qemuLog, 'a');
  let child: ChildProcess;
  try {
    // setpriv --pdeathsig: QEMU dies with us even if we are SIGKILLed (no handler runs then).
    const [cmd, args] = existsSync(SETPRIV)
      ? [SETPRIV, ['--pdeathsig', 'KILL', '--', QEMU, ...qemuArgs(c)]]
      : [QEMU, qemuArgs(c)];
    child = spawn(cmd, args, { detached: true, stdio: ['ignore', fd, fd] });
  } finally {
    closeSync(fd);
  }
  const untrack = track(child);
  let killedForTimeout = false;
  const done = new Promise<QemuExit>((resolve, reject) => {
    const timer = setTimeout(() => {
      killedForTimeout = true;
      killGroup(child);
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      untrack();
      reject(new TestHostError(`cannot start ${QEMU}: ${e.message}`));
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      // QEMU is gone; anything it left in its group goes too.
      if (child.pid !== undefined) {
        try {
          process.kill(-child.pid, 'SIGKILL');
        } catch {
          /* empty group */
        }
      }
      untrack();
      resolve({ code, signal, killedForTimeout });
    });
  });
  return { child, done, kill: () => killGroup(child) };
}

/**
 * Runs human-monitor commands on a running QEMU's monitor socket and returns what it printed (best effort: what
 * came within `ms`, '' when the socket is not there).
 */
export async function monitorCommands(socketPath: string, commands: string[], ms = 5000): Promise<string> {
  if (!existsSync(socketPath)) return '';
  return new Promise((resolve) => {
    let out = '';
    const s = connect(socketPath);
    const done = () => {
      clearTimeout(timer);
      s.destroy();
      // The monitor echoes input with terminal escapes; keep the printable lines.
      resolve(
        out
          .replace(/\x1b\[[0-9;]*[A-Za-z]/g, '')
          .replace(/\r/g, '')
          .split('\n')
          .filter((l) => l.trim() && !l.startsWith('QEMU ') && !l.startsWith('(qemu)'))
          .join('\n'),
      );
    };
    const timer = setTimeout(done, ms);
    s.setEncoding('latin1');
    // The monitor prompts once when connected and once after each answer: done at the last prompt.
    s.on('data', (d: string) => {
      out += d;
      if (out.split('(qemu) ').length - 1 > commands.length) done();
    });
    s.on('error', done);
    s.on('connect', () => {
      for (const c of commands) s.write(`${c}\n`);
    });
  });
}
