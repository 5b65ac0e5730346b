// The tsvmm library: a VM from a config object (the JSON config's shape, typed from
// configs/vm.schema.json), run in this process, its serial console, a narrow inspection and the
// operations QMP has, through the same command layer (frontend/commands.ts). vCPU 0 runs KVM_RUN in
// slices on this thread (core/kvm/boot-vcpu.ts), so the caller's event loop keeps running: timers,
// waits and AbortSignals work while the guest runs. Every error is a TsvmmError with a stable code.
import { resolve } from 'node:path';
import { TsvmmError, type TsvmmErrorCode } from '../core/errors.js';
import { checkConfig, createMachine, openIncoming, type MachineControl, type VmConfig } from '../machine/index.js';
import {
  CommandError,
  deviceAddSpec,
  machineCommands,
  shutdownEvent,
  type MachineCommands,
} from '../frontend/commands.js';
import { checkArguments } from '../frontend/qmp/arguments.js';
import { qmpEventNames, type QmpCommands, type QmpEvents } from '../generated/qmp-types.js';
import { deviceAddArgs, GrowingTextSearch, lastLines, serialPattern, type DeviceAddOptions } from './args.js';

export { TsvmmError, isTsvmmError, ConfigError, type TsvmmErrorCode } from '../core/errors.js';
export { CommandError, type CommandErrorClass } from '../frontend/commands.js';
export type {
  VmConfig,
  VmConfigDevice,
  VmConfigVfioPci,
  VmConfigMemorySize,
  VmConfigVfioBackend,
} from '../generated/config-types.js';
export type { DeviceAddOptions } from './args.js';
export type * from './types.js';
import type {
  CreateVmOptions,
  WaitOptions,
  VmExit,
  VmInspection,
  VmStatus,
  VmEventName,
  VmEventListener,
  VmCommandArgs,
} from './types.js';

const DEFAULT_TIMEOUT_MS = 30_000;
const created = Symbol('tsvmm.createVm');

/**
 * Creates a VM from a config (validated as `tsvmm validate` does: a bad one throws a ConfigError,
 * code 'ERR_CONFIG', with its problems). The guest does not run until start().
 */
export async function createVm(config: VmConfig, opts: CreateVmOptions = {}): Promise<Vm> {
  if (opts.signal?.aborted) throw aborted('createVm', opts.signal);
  const baseDir = resolve(opts.baseDir ?? process.cwd());
  const cfg = checkConfig(structuredClone(config), 'config', baseDir);
  // COM1 output goes to the Vm once it exists (the guest runs only after start()).
  const serial = { to: (_b: Uint8Array) => {} };
  try {
    const m = await createMachine(cfg, { serialOutput: (b) => serial.to(b) });
    if (opts.restore !== undefined) {
      try {
        const from = await openIncoming(`file:${resolve(baseDir, opts.restore)}`);
        try {
          await m.loadState(from.source);
        } finally {
          await from.close();
        }
      } catch (e) {
        m.close();
        throw e;
      }
    }
    return new Vm(created, m, baseDir, opts, serial);
  } catch (e) {
    // tsvmm's own errors say what and where already; a bare syscall or model error gets a code.
    if (e instanceof TsvmmError) throw e;
    throw new TsvmmError('ERR_VM_SETUP', `creating VM '${cfg.name}': ${(e as Error).message}`, { cause: e });
  }
}

export class Vm implements AsyncDisposable {
  readonly name: string;
  readonly #m: MachineControl;
  readonly #commands: MachineCommands;
  readonly #baseDir: string;
  #serial = '';
  /** Serial output since the waits last looked (from offset #recentStart): what they search next, without copying
   *  the whole console each time. */
  #recent = '';
  #recentStart = 0;
  #exit: VmExit | undefined;
  #run: Promise<VmExit> | undefined;
  #closing: Promise<void> | undefined;
  #closed = false;
  /** 'event' listeners (name, data), then each event's own (data). */
  readonly #listeners = new Set<VmEventListener>();
  readonly #named = new Map<string, Set<AnyListener>>();
  /** Pending waits: each is polled when something changes (serial output, an event, the exit, close). */
  readonly #waiters = new Set<() => void>();
  #wakeQueued = false;
  readonly #unlinkSignal: () => void;

  /** @internal Use createVm(). */
  constructor(
    token: typeof created,
    machine: MachineControl,
    baseDir: string,
    opts: CreateVmOptions,
    serial: { to: (b: Uint8Array) => void },
  ) {
    if (token !== created) throw new TypeError('use createVm() to make a Vm');
    this.name = machine.name;
    this.#baseDir = baseDir;
    const inherit = opts.serial === 'inherit';
    this.#m = machine;
    serial.to = (b) => {
      const text = Buffer.from(b).toString('latin1');
      this.#serial += text;
      this.#recent += text;
      if (inherit) process.stdout.write(b);
      this.#wake();
    };
    this.#commands = machineCommands(this.#m, (event, data) => this.#event(event, data));
    const signal = opts.signal;
    const onAbort = () =>
      void this.close().catch((e: Error) =>
        console.error(`tsvmm: closing '${this.name}' after an abort: ${e.message}`),
      );
    signal?.addEventListener('abort', onAbort, { once: true });
    this.#unlinkSignal = () => signal?.removeEventListener('abort', onAbort);
  }

  /** Starts the guest (idempotent). */
  start(): void {
    this.#live('start');
    if (this.#run || this.#exit) return;
    const run = this.#m.run().then(
      (r) => r,
      (e: Error) => ({ status: 1, reason: `the VMM failed: ${e.message}`, cause: 'guest' as const }),
    );
    this.#run = run.then((r) => ({ status: r.status, reason: r.reason }));
    void run.then((r) => {
      const exit = { status: r.status, reason: r.reason };
      const shutdown = shutdownEvent(r);
      if (shutdown) this.#event('SHUTDOWN', shutdown);
      this.#exit = exit;
      this.#wake(true);
    });
  }

  /** Everything COM1 printed so far (one character per byte, latin1). */
  get serial(): string {
    return this.#serial;
  }

  /** How the VM ended, once it has. */
  get exited(): VmExit | undefined {
    return this.#exit;
  }

  /**
   * Resolves with the match once COM1 output (from offset `from`, default 0) matches `pattern` (a
   * string matches literally); the match's index is an offset into `serial`. Rejects with
   * ERR_TIMEOUT, ERR_ABORTED, ERR_VM_EXITED or ERR_CLOSED, the message ending with the last lines (the last one as
   * far as it had arrived: it may lack its newline). A pattern that can match across lines is searched from `from`
   * on every look; any other only from the line still incomplete at the last look, so a long console stays cheap.
   */
  async waitForSerial(pattern: string | RegExp, opts: WaitOptions & { from?: number } = {}): Promise<RegExpMatchArray> {
    this.#open('waitForSerial');
    const search = new GrowingTextSearch(serialPattern(pattern), opts.from ?? 0);
    const textFrom = (pos: number) =>
      pos >= this.#recentStart ? this.#recent.slice(pos - this.#recentStart) : this.#serial.slice(pos);
    return this.#wait(`waiting for ${String(pattern)} on the serial console`, opts, true, () => {
      const m = search.look(this.#serial.length, textFrom);
      if (m) m.input = this.#serial;
      return m;
    });
  }

  /** Resolves when the VM ends (the guest exits or powers off, quit, close). */
  waitForExit(opts: WaitOptions = {}): Promise<VmExit> {
    return this.#wait('waiting for the VM to exit', opts, false, () => this.#exit);
  }

  /** A read-only snapshot: memory, memslots, DMA mappings, pinned bytes, exits, interrupts, PCI devices. */
  inspect(): VmInspection {
    this.#open('inspect');
    return this.#m.inspect();
  }

  // --- control: QMP's operations, through the command layer ----------------------------------
  /** Pauses every vCPU (QMP stop; event STOP). */
  async stop(): Promise<void> {
    this.#live('stop');
    await this.#commands.ops.stop();
  }
  /** Resumes (QMP cont; event RESUME), also after a device error stopped the VM. */
  async cont(): Promise<void> {
    this.#live('cont');
    await this.#commands.ops.cont();
  }
  /** QMP system_reset: vCPUs, irqchip and devices to power-on state, the guest image loaded again. */
  async reset(): Promise<void> {
    this.#live('reset');
    await this.#commands.ops.reset();
  }
  /** QMP system_powerdown: the ACPI power button (a guest without ACPI does not hear it). */
  async powerdown(): Promise<void> {
    this.#live('powerdown');
    await this.#commands.ops.powerdown();
  }
  /** QMP device_add of a vfio-pci device; a failure is the machine's error (ERR_VFIO_SETUP,
   *  ERR_DEVICE, … with its fix), a bad option a CommandError as QMP says it. */
  async deviceAdd(device: DeviceAddOptions): Promise<void> {
    this.#live('deviceAdd');
    const args = deviceAddArgs(device, this.#baseDir);
    checkArguments('device_add', args); // the types QMP's schema gives the properties
    const spec = deviceAddSpec(args);
    if (!spec.host && !spec.sysfsdev)
      throw new CommandError('GenericError', "vfio-pci needs 'host', 'sysfsdev' or 'fd'");
    await this.#commands.ops.deviceAdd(spec);
  }
  /** QMP device_del; resolves when the device is gone (after the guest's eject, or at once without ACPI). */
  async deviceDel(id: string, opts: WaitOptions = {}): Promise<void> {
    this.#live('deviceDel');
    let gone = false;
    const seen = (data: QmpEvents['DEVICE_DELETED']) => {
      if (data.device === id) gone = true;
    };
    this.on('DEVICE_DELETED', seen);
    try {
      await this.#commands.ops.deviceDel(id);
      await this.#wait(`waiting for the guest to eject '${id}'`, opts, true, () => (gone ? true : undefined));
    } finally {
      this.off('DEVICE_DELETED', seen);
    }
  }
  /**
   * Saves the whole VM (vCPUs, interrupt controllers, devices, RAM) to a file, as QMP migrate to
   * file:PATH: the vCPUs stop and stay stopped (cont() resumes them); createVm(config, {restore})
   * starts a VM from the file. An assigned device's own state goes too where its driver has VFIO
   * migration (mtty, mlx5, …; restore gives the destination's config its own instance); a VM with
   * a device that cannot migrate (plain vfio-pci: edu, nvme) is refused at once and keeps running
   * (ERR_MIGRATION, naming the device and why).
   */
  async save(path: string): Promise<void> {
    this.#live('save');
    const file = resolve(this.#baseDir, path);
    let done: Promise<void>;
    try {
      ({ done } = await this.#commands.ops.migrate(`file:${file}`));
    } catch (e) {
      const cause = (e as Error).cause;
      throw cause instanceof TsvmmError ? cause : e;
    }
    await done;
    const info = this.#commands.migration.info();
    if (info.status !== 'completed')
      throw new TsvmmError(
        'ERR_MIGRATION',
        `${this.name}: saving to ${file}: ${String(info['error-desc'] ?? info.status)}`,
      );
  }

  /** The run state (QMP query-status's status; 'paused' before start(), 'shutdown' once ended). */
  status(): VmStatus {
    this.#open('status');
    if (this.#exit) return 'shutdown';
    if (!this.#run) return 'paused';
    return this.#commands.migration.runState() ?? this.#m.status();
  }

  /**
   * Any QMP command by name, with QMP's arguments (checked against the QMP schema) and result;
   * a failure is a CommandError (code ERR_QMP) with QEMU's errorClass. The commands tsvmm implements are typed
   * (QmpCommands: arguments and result as QAPI gives them); any other name is allowed and fails with
   * CommandNotFound, as QEMU's would.
   */
  command<C extends keyof QmpCommands>(name: C, ...args: VmCommandArgs<C>): Promise<QmpCommands[C]['returns']>;
  command<N extends string>(
    name: N extends keyof QmpCommands ? never : N,
    args?: Record<string, unknown>,
  ): Promise<unknown>;
  async command(name: string, args: Record<string, unknown> = {}): Promise<unknown> {
    this.#open(name);
    const handler = this.#commands.handlers[name];
    if (!handler) throw new CommandError('CommandNotFound', `The command ${name} has not been found`);
    try {
      checkArguments(name, args);
    } catch (e) {
      const refine = this.#commands.argumentError[name];
      throw refine && e instanceof CommandError ? refine(args, e) : e;
    }
    const ret = await handler(args, noFds);
    return ret ?? {};
  }

  /**
   * QMP events (STOP, RESUME, RESET, SHUTDOWN, POWERDOWN, DEVICE_DELETED, VFIO_REQUEST, VFIO_ERROR; QmpEvents has
   * their data): on('event', (name, data) => …) hears every one, on('SHUTDOWN', (data) => …) one of them.
   */
  on(event: 'event', fn: VmEventListener): this;
  on<E extends VmEventName>(event: E, fn: (data: QmpEvents[E]) => void): this;
  on(event: string, fn: VmEventListener | ((data: never) => void)): this {
    this.#listenersOf(event, 'on').add(fn as AnyListener);
    return this;
  }
  off(event: 'event', fn: VmEventListener): this;
  off<E extends VmEventName>(event: E, fn: (data: QmpEvents[E]) => void): this;
  off(event: string, fn: VmEventListener | ((data: never) => void)): this {
    this.#listenersOf(event, 'off').delete(fn as AnyListener);
    return this;
  }

  /** QMP quit: ends the VM; resolves with how it ended. */
  async quit(opts: WaitOptions = {}): Promise<VmExit> {
    this.#open('quit');
    if (this.#exit) return this.#exit;
    await this.#commands.ops.quit();
    if (!this.#run) {
      this.#exit = { status: 0, reason: 'QMP quit' };
      this.#wake(true);
    }
    return this.waitForExit(opts);
  }

  /** Ends the VM if it runs and releases everything (fds, pinned memory, memslots); idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#unlinkSignal();
      if (this.#run && !this.#exit) {
        this.#m.exit(0, 'closed by the library', 'host-ui');
        await this.#run;
      }
      await this.#commands.idle(); // a reset or device_add in flight finishes before the machine goes
      this.#closed = true;
      try {
        this.#commands.close();
      } finally {
        this.#m.close();
        this.#wake(true);
      }
    })();
    return this.#closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // --- internals -----------------------------------------------------------------------------
  #listenersOf(event: string, what: string): Set<AnyListener> {
    if (event === 'event') return this.#listeners as Set<AnyListener>;
    if (!(qmpEventNames as readonly string[]).includes(event))
      throw new TsvmmError('ERR_USAGE', `Vm.${what}: unknown event '${String(event)}'`, {
        fix: `use 'event' (every event) or one of ${qmpEventNames.join(', ')}`,
      });
    let set = this.#named.get(event);
    if (!set) this.#named.set(event, (set = new Set()));
    return set;
  }

  #event(name: string, data?: Record<string, unknown>): void {
    const all = [...this.#listeners].map((fn) => () => (fn as AnyListener)(name, data));
    const named = [...(this.#named.get(name) ?? [])].map((fn) => () => fn(data));
    for (const call of [...all, ...named]) {
      try {
        call();
      } catch (e) {
        // A listener's bug must not take the VMM down (it may run inside a vCPU exit).
        console.error(`tsvmm: a Vm event listener threw on ${name}: ${(e as Error).stack ?? String(e)}`);
      }
    }
    this.#wake();
  }

  /** Polls the pending waits: at once, or once per turn of the event loop (serial output comes byte by byte). */
  #wake(now = false): void {
    const pollAll = () => {
      for (const w of [...this.#waiters]) w();
      // Every pending wait has now searched up to the end: the next look starts from here.
      this.#recent = '';
      this.#recentStart = this.#serial.length;
    };
    if (now) return pollAll();
    if (this.#wakeQueued) return;
    this.#wakeQueued = true;
    queueMicrotask(() => {
      this.#wakeQueued = false;
      pollAll();
    });
  }

  #wait<T>(what: string, opts: WaitOptions, failOnExit: boolean, check: () => T | undefined): Promise<T> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const signal = opts.signal;
    if (typeof timeoutMs !== 'number' || Number.isNaN(timeoutMs) || timeoutMs < 0)
      return Promise.reject(
        new TsvmmError('ERR_USAGE', `${what}: timeoutMs must be a number ≥ 0 or Infinity, not ${String(timeoutMs)}`),
      );
    return new Promise<T>((resolvePromise, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const finish = (f: () => void) => {
        clearTimeout(timer);
        this.#waiters.delete(poll);
        signal?.removeEventListener('abort', onAbort);
        f();
      };
      const fail = (code: TsvmmErrorCode, why: string, cause?: unknown) =>
        finish(() => reject(this.#error(code, `${what}: ${why}`, cause)));
      const poll = () => {
        let v: T | undefined;
        try {
          v = check();
        } catch (e) {
          return finish(() => reject(e));
        }
        if (v !== undefined) return finish(() => resolvePromise(v));
        if (this.#closed) return fail('ERR_CLOSED', 'the VM was closed');
        if (failOnExit && this.#exit)
          return fail('ERR_VM_EXITED', `the VM exited first (status ${this.#exit.status}: ${this.#exit.reason})`);
      };
      const onAbort = () => fail('ERR_ABORTED', 'aborted', signal?.reason);
      if (signal?.aborted) return onAbort();
      this.#waiters.add(poll);
      signal?.addEventListener('abort', onAbort, { once: true });
      // setTimeout takes at most 2^31-1 ms (beyond, Node fires at once): longer waits are unbounded.
      if (Number.isFinite(timeoutMs) && timeoutMs <= 2 ** 31 - 1)
        timer = setTimeout(() => fail('ERR_TIMEOUT', `not seen within ${timeoutMs} ms`), timeoutMs);
      poll();
    });
  }

  #error(code: TsvmmErrorCode, message: string, cause?: unknown): TsvmmError {
    const tail = lastLines(this.#serial);
    return new TsvmmError(
      code,
      `${this.name}: ${message}${tail ? `\nlast serial output:\n${tail}` : '\n(no serial output)'}`,
      cause !== undefined ? { cause } : {},
    );
  }

  /** The VM must not be closed. */
  #open(what: string): void {
    if (this.#closed || this.#closing) throw new TsvmmError('ERR_CLOSED', `${this.name}: ${what}: the VM is closed`);
  }
  /** The VM must not be closed or ended. */
  #live(what: string): void {
    this.#open(what);
    if (this.#exit)
      throw new TsvmmError(
        'ERR_VM_EXITED',
        `${this.name}: ${what}: the VM has ended (status ${this.#exit.status}: ${this.#exit.reason})`,
      );
  }
}

const noFds = { takeFd: () => undefined };
type AnyListener = (...args: unknown[]) => void;

function aborted(what: string, signal: AbortSignal): TsvmmError {
  return new TsvmmError('ERR_ABORTED', `${what}: aborted`, { cause: signal.reason });
}
