// The one command layer: the operations a tsvmm machine offers its front ends (stop, cont,
// system_reset, system_powerdown, device_add/del, quit, the queries…), implemented once against a
// Machine and an event sink, with QMP's argument shapes, results, errors (errorClass as QEMU's)
// and events. Two transports use it: the QMP server (frontend/qmp/commands.ts: JSON over a
// socket, arguments checked against frontend/qmp/schema.json there) and the library (lib/index.ts),
// which calls the operations (`ops`) directly, typed. Both reach the machine through MachineControl.
import { closeSync, readFileSync, readlinkSync } from 'node:fs';
import { TsvmmError } from '../core/errors.js';
import type { DeviceAddSpec, MachineControl, MachineResult } from '../machine/index.js';
import { pciDeviceInfo } from './pci-info.js';
import { schemaInfo } from '../generated/qmp-validators.js';
import { projectRoot } from '../core/paths.js';
import { identify, type PassedFd } from '../core/fdpass.js';
import type { VfioBackendChoice } from '../machine/index.js';
import { Migration } from './migration.js';

/** How a command failed, as QEMU's error classes. */
export type CommandErrorClass = 'GenericError' | 'CommandNotFound' | 'DeviceNotFound';
export class CommandError extends TsvmmError {
  constructor(
    readonly errorClass: CommandErrorClass,
    desc: string,
    cause?: unknown,
  ) {
    // A wrapped tsvmm error keeps its fix (QMP's desc carries it: core/errors.ts describeError).
    super('ERR_QMP', desc, cause !== undefined ? { cause, fix: (cause as { fix?: string }).fix } : {});
  }
}

/** Where events go (QMP: to the client; the library: to its listeners). */
export type EventSink = (event: string, data?: Record<string, unknown>) => void;
/** What a command may use besides its arguments: the fds that came with it (QMP's SCM_RIGHTS). */
export interface CommandContext {
  takeFd(): number | undefined;
}
/** A command: its result (or a promise of it) is the reply's "return". */
export type CommandHandler = (args: Record<string, unknown>, ctx: CommandContext) => unknown;

/** The operations that change a machine's state, serialized and with their events (QMP's and the
 *  library's). */
export interface MachineOps {
  stop(): Promise<void>;
  cont(): Promise<void>;
  reset(): Promise<void>;
  powerdown(): Promise<void>;
  /** Hot-plugs a device; `fds` are the machine's from the call on (closed if it fails). A failure
   *  is the machine's TsvmmError (another error becomes a CommandError). */
  deviceAdd(spec: DeviceAddSpec, fds?: PassedFd[]): Promise<void>;
  /** Asks for a device's removal (DeviceNotFound when there is none). */
  deviceDel(id: string): Promise<void>;
  quit(): Promise<void>;
  /** Starts an outgoing migration (QMP migrate); resolves once it runs, with its end (the job's
   *  status says how it ended). A blocker, a bad URI or a running one throw at once. */
  migrate(uri: string, takeFd?: (name: string) => number): Promise<{ done: Promise<void> }>;
}

export interface MachineCommands {
  readonly handlers: Record<string, CommandHandler>;
  readonly ops: MachineOps;
  /** Per-command refinements of argument errors (device_add: unknown device properties). */
  readonly argumentError: Partial<Record<string, (args: Record<string, unknown>, e: CommandError) => CommandError>>;
  /** query-version's VersionInfo (also the QMP greeting's). */
  readonly version: { qemu: { major: number; minor: number; micro: number }; package: string };
  /** Outgoing and incoming migration (query-migrate, the run states they imply). */
  readonly migration: Migration;
  /** Resolves once no state-changing command is running or queued (close() waits for it). */
  idle(): Promise<void>;
  /** Releases what commands kept (named fds, fd sets). */
  close(): void;
}

/** The QEMU release whose QMP tsvmm's behaves like (commands, errors, events). */
export const QEMU_VERSION = { major: 7, minor: 2, micro: 0 } as const;

/** Named fds (getfd) and fd sets (add-fd), as QEMU's monitor keeps them. */
class FdStore {
  readonly named = new Map<string, number>();
  readonly sets = new Map<number, { fd: number; opaque?: string }[]>();

  take(name: string): number {
    const fd = this.named.get(name);
    if (fd === undefined) throw new CommandError('GenericError', `File descriptor named '${name}' has not been found`);
    this.named.delete(name); // a device that takes it owns it (QEMU's monitor_fd_param)
    return fd;
  }

  close(): void {
    for (const fd of this.named.values()) closeSync(fd);
    for (const set of this.sets.values()) for (const f of set) closeSync(f.fd);
    this.named.clear();
    this.sets.clear();
  }
}

// Arguments reach a command checked against frontend/qmp/schema.json (types, required, unexpected).
const str = (a: Record<string, unknown>, k: string): string | undefined => a[k] as string | undefined;

/** A device's id: tsvmm needs one to find it for device_del (QEMU names a device without one itself). */
export function checkDeviceId(id: unknown): string {
  if (id === undefined) throw new CommandError('GenericError', "Parameter 'id' is missing");
  if (typeof id !== 'string' || !/^[A-Za-z0-9._-]{1,64}$/.test(id))
    throw new CommandError('GenericError', `Parameter 'id' expects an identifier ([A-Za-z0-9._-], at most 64)`);
  return id;
}

/** How a machine's end is told as QMP's SHUTDOWN event (undefined: quit told it already). */
export function shutdownEvent(r: Pick<MachineResult, 'cause'>): { guest: boolean; reason: string } | undefined {
  if (r.cause === 'host-qmp-quit') return undefined;
  return r.cause === 'guest' ? { guest: true, reason: 'guest-shutdown' } : { guest: false, reason: r.cause };
}

/** device_add's addr: a slot ("5", "0x5", "05.0") or an integer, as QEMU's PCI devfn property. */
export function parseAddr(v: unknown): number {
  const bad = () => new CommandError('GenericError', `Property 'vfio-pci.addr' doesn't take value '${String(v)}'`);
  let slot: number;
  if (typeof v === 'number') slot = v;
  else if (typeof v === 'string' && /^(0x[0-9a-f]+|[0-9a-f]{1,2})(\.0)?$/i.test(v))
    slot = parseInt(v.replace(/\.0$/, ''), 16);
  else throw bad();
  if (!Number.isInteger(slot) || slot < 1 || slot > 31)
    throw new CommandError(
      'GenericError',
      `Property 'vfio-pci.addr' doesn't take value '${String(v)}' (tsvmm: a free slot 1-31, function 0)`,
    );
  return slot;
}

/** device_add's vfio-pci properties but the fds (QMP's; the library's typed options become them). */
export function deviceAddSpec(a: Record<string, unknown>): DeviceAddSpec {
  const driver = str(a, 'driver')!;
  if (driver !== 'vfio-pci')
    throw new CommandError('GenericError', `'${driver}' is not a valid device model name (tsvmm has: vfio-pci)`);
  const id = checkDeviceId(a.id);
  const host = str(a, 'host'),
    sysfsdev = str(a, 'sysfsdev');
  const backend = str(a, 'backend') as VfioBackendChoice | undefined;
  if (backend !== undefined && !['auto', 'legacy', 'iommufd'].includes(backend))
    throw new CommandError(
      'GenericError',
      `Property 'vfio-pci.backend' doesn't take value '${backend}' (auto, legacy or iommufd)`,
    );
  const slot = a.addr === undefined ? undefined : parseAddr(a.addr);
  // QEMU's rombar is 0/1 (a uint32), romfile a path.
  if (a.rombar !== undefined && a.rombar !== 0 && a.rombar !== 1 && typeof a.rombar !== 'boolean')
    throw new CommandError(
      'GenericError',
      `Property 'vfio-pci.rombar' doesn't take value '${String(a.rombar)}' (0 or 1)`,
    );
  const rombar = a.rombar === undefined ? undefined : a.rombar === 1 || a.rombar === true;
  // Behind the vIOMMU, as cloud-hypervisor's iommu=on (QEMU's on/off spellings, or a bool).
  const iommu = a.iommu === undefined ? undefined : ['on', 'true', true].includes(a.iommu as string | boolean);
  if (iommu === false && !['off', 'false', false].includes(a.iommu as string | boolean))
    throw new CommandError(
      'GenericError',
      `Property 'vfio-pci.iommu' doesn't take value '${String(a.iommu)}' (on or off)`,
    );
  const romfile = str(a, 'romfile');
  return {
    type: driver,
    id,
    ...(host ? { host } : sysfsdev ? { sysfsdev } : {}),
    ...(backend ? { backend } : {}),
    ...(slot !== undefined ? { slot } : {}),
    ...(rombar !== undefined ? { rombar } : {}),
    ...(romfile !== undefined ? { romfile } : {}),
    ...(iommu ? { iommu } : {}),
  };
}

function needFd(ctx: CommandContext): number {
  const fd = ctx.takeFd();
  if (fd === undefined) throw new CommandError('GenericError', 'No file descriptor supplied via SCM_RIGHTS');
  return fd;
}

/** A named fd given to device_add: a VFIO group (/dev/vfio/N) or a device cdev. */
function vfioFdFor(fd: number, name: string): PassedFd {
  let link = '';
  try {
    link = readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    /* identify says what it is */
  }
  const p: PassedFd = { name, kind: /^\/dev\/vfio\/\d+$/.test(link) ? 'vfio-group' : 'vfio-cdev', fd };
  if (p.kind === 'vfio-group') p.group = Number(link.split('/').pop());
  identify(p);
  return p;
}

/**
 * The commands of machine `m`; its events go to `emit`. Arguments must have been checked against
 * the command's schema (frontend/qmp/server.ts checkArguments) before a handler runs.
 */
export function machineCommands(
  m: MachineControl,
  emit: EventSink,
  opts: { incoming?: 'defer' } = {},
): MachineCommands {
  const migration = new Migration(m, emit, opts);
  // As other QEMU-compatible servers do: "qemu" is the QEMU whose QMP this one behaves like (clients
  // check it for features), the server's own name and version go in "package".
  const own = (JSON.parse(readFileSync(`${projectRoot}/package.json`, 'utf8')) as { version: string }).version;
  const version = { qemu: { ...QEMU_VERSION }, package: `tsvmm ${own}` };
  const fds = new FdStore();
  // Machine events as QMP's.
  m.on((e) => {
    switch (e.type) {
      case 'stopped':
        return emit('STOP');
      case 'device-deleted':
        return emit('DEVICE_DELETED', { device: e.device, path: `/machine/peripheral/${e.device}` });
      case 'device-requested':
        return emit('VFIO_REQUEST', { device: e.device, host: e.host });
      case 'device-error':
        return emit('VFIO_ERROR', { device: e.device, host: e.host });
    }
  });
  // State changes run one at a time, whichever transport (QMP connections, the library) asks: a
  // stop queued behind a reset waits for it.
  let queue: Promise<unknown> = Promise.resolve();
  const serialized = <T>(f: () => T | Promise<T>): Promise<T> => {
    const r = queue.then(f);
    queue = r.catch(() => {});
    return r;
  };
  const ops: MachineOps = {
    stop: () =>
      serialized(() => {
        if (m.pause()) emit('STOP');
      }),
    cont: () =>
      serialized(() => {
        if (m.resume()) emit('RESUME');
      }),
    reset: () =>
      serialized(async () => {
        await m.reset();
        emit('RESET', { guest: false, reason: 'host-qmp-system-reset' });
      }),
    powerdown: () =>
      serialized(() => {
        // QEMU emits POWERDOWN and presses the ACPI power button; a guest may ignore it.
        emit('POWERDOWN');
        m.powerdown();
      }),
    deviceAdd: (spec, passed = []) =>
      serialized(() => {
        try {
          m.devices.add(spec, passed);
        } catch (e) {
          if (e instanceof TsvmmError) throw e;
          throw new CommandError('GenericError', (e as Error).message, e);
        }
      }),
    deviceDel: (id) =>
      serialized(() => {
        // With ACPI the guest is asked and DEVICE_DELETED follows its eject; without, it goes at once.
        if (!m.devices.remove(id)) throw new CommandError('DeviceNotFound', `Device '${id}' not found`);
      }),
    quit: () =>
      serialized(() => {
        emit('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' });
        m.exit(0, 'QMP quit', 'host-qmp-quit');
      }),
    migrate: async (uri, takeFd) => {
      let done: Promise<void>;
      try {
        ({ done } = await migration.start(uri, takeFd));
      } catch (e) {
        throw new CommandError('GenericError', (e as Error).message, e);
      }
      // The save itself is a state change: a stop, cont or reset asked meanwhile waits for it.
      return { done: serialized(() => done) };
    },
  };
  const done = <T>(p: Promise<T>) => p.then(() => ({}));
  const commands: Record<string, CommandHandler> = {
    'query-version': () => structuredClone(version),
    'query-commands': () => ['qmp_capabilities', ...Object.keys(commands)].map((name) => ({ name })),
    'query-status': () => {
      const status = migration.runState() ?? m.status();
      return { running: status === 'running', singlestep: false, status };
    },
    migrate: async (a) => {
      if (a.blk === true || a.inc === true)
        throw new CommandError('GenericError', 'tsvmm has no block devices to migrate (blk/inc)');
      if (a.resume === true) throw new CommandError('GenericError', 'There is no postcopy migration to resume');
      await ops.migrate(str(a, 'uri')!, (name) => fds.take(name));
      return {};
    },
    'migrate-incoming': (a) => {
      if (migration.incomingStarted)
        throw new CommandError('GenericError', 'The incoming migration has already been started');
      if (!migration.waitingForIncoming)
        throw new CommandError('GenericError', "'-incoming' was not specified on the command line");
      // Returns at once, as QEMU's: the load runs on; MIGRATION events and query-migrate tell how it goes.
      migration
        .incoming(str(a, 'uri')!, (name) => fds.take(name))
        .catch((e: Error) => {
          console.error(`tsvmm: incoming migration failed: ${e.message}`);
        });
      return {};
    },
    migrate_cancel: () => {
      migration.cancel();
      return {};
    },
    'query-migrate': () => migration.info(),
    'migrate-set-parameters': (a) => {
      try {
        migration.setParameters(a);
      } catch (e) {
        throw new CommandError('GenericError', (e as Error).message, e);
      }
      return {};
    },
    'query-migrate-parameters': () => ({ ...migration.parameters }),
    'query-name': () => ({ name: m.name }),
    'query-pci': () => [{ bus: 0, devices: m.devices.list().map(pciDeviceInfo) }],
    'query-qmp-schema': () => schemaInfo,
    // tsvmm's own: the vIOMMU's domains, endpoints and mapping counts (null without a vIOMMU).
    'x-query-viommu': () => m.inspect().viommu ?? null,
    stop: () => done(ops.stop()),
    cont: () => done(ops.cont()),
    getfd: (a, ctx) => {
      const name = str(a, 'fdname')!;
      const fd = needFd(ctx);
      const old = fds.named.get(name);
      if (old !== undefined) closeSync(old); // QEMU replaces a name's fd
      fds.named.set(name, fd);
      return {};
    },
    closefd: (a) => {
      closeSync(fds.take(str(a, 'fdname')!));
      return {};
    },
    'add-fd': (a, ctx) => {
      const fd = needFd(ctx);
      const id = a['fdset-id'] ?? Math.max(-1, ...fds.sets.keys()) + 1;
      if ((id as number) < 0) {
        closeSync(fd);
        throw new CommandError('GenericError', "Parameter 'fdset-id' expects a non-negative integer");
      }
      const opaque = str(a, 'opaque');
      const set = fds.sets.get(id as number) ?? [];
      set.push({ fd, ...(opaque !== undefined ? { opaque } : {}) });
      fds.sets.set(id as number, set);
      return { 'fdset-id': id, fd };
    },
    'remove-fd': (a) => {
      const id = a['fdset-id'] as number,
        fd = a.fd as number | undefined;
      const set = fds.sets.get(id);
      const hit = set?.filter((f) => fd === undefined || f.fd === fd) ?? [];
      if (!hit.length)
        throw new CommandError(
          'GenericError',
          `File descriptor named 'fdset-id:${id}${fd !== undefined ? `, fd:${fd}` : ''}' not found`,
        );
      for (const f of hit) closeSync(f.fd);
      const rest = set!.filter((f) => !hit.includes(f));
      if (rest.length) fds.sets.set(id, rest);
      else fds.sets.delete(id);
      return {};
    },
    'query-fdsets': () =>
      [...fds.sets].map(([id, set]) => ({
        'fdset-id': id,
        fds: set.map((f) => ({ fd: f.fd, ...(f.opaque !== undefined ? { opaque: f.opaque } : {}) })),
      })),
    device_add: async (a) => {
      const spec = deviceAddSpec(a);
      const fdName = str(a, 'fd'),
        iommufdName = str(a, 'iommufd');
      if (!spec.host && !spec.sysfsdev && !fdName)
        throw new CommandError('GenericError', "vfio-pci needs 'host', 'sysfsdev' or 'fd'");
      // Named fds are taken (and owned by the device) only once everything else checks out.
      const passed: PassedFd[] = [];
      const taken: number[] = [];
      try {
        if (fdName) {
          const fd = fds.take(fdName);
          taken.push(fd);
          const p = vfioFdFor(fd, fdName);
          passed.push(p);
          if (p.kind === 'vfio-cdev' && !spec.host && !spec.sysfsdev)
            spec.sysfsdev = `/sys/bus/pci/devices/${p.device}`;
        }
        if (iommufdName) {
          const fd = fds.take(iommufdName);
          taken.push(fd);
          const p: PassedFd = { name: iommufdName, kind: 'iommufd', fd };
          identify(p);
          passed.push(p);
        }
        if (!spec.host && !spec.sysfsdev)
          throw new CommandError(
            'GenericError',
            `fd '${fdName}' is a VFIO group: say which of its devices with 'host'`,
          );
      } catch (e) {
        for (const fd of taken) closeSync(fd);
        if (e instanceof CommandError) throw e;
        throw new CommandError('GenericError', (e as Error).message, e);
      }
      // From here the machine owns the fds (and closes them if it fails). QMP says every failure
      // as a GenericError.
      await ops.deviceAdd(spec, passed).catch((e: Error) => {
        throw e instanceof CommandError ? e : new CommandError('GenericError', e.message, e);
      });
      return {};
    },
    device_del: (a) => done(ops.deviceDel(str(a, 'id')!)),
    // tsvmm's own (QEMU's x- convention for what is not a stable interface): has VFIO signal a
    // device's request or error notifier through its loopback, so the VM's answer can be seen
    // where no real unbind or AER error can be made.
    'x-vfio-signal-notifier': (a) => {
      const id = str(a, 'id')!,
        which = str(a, 'notifier')!;
      if (which !== 'request' && which !== 'error')
        throw new CommandError(
          'GenericError',
          `Parameter 'notifier' does not accept value '${which}' (request or error)`,
        );
      let found: boolean;
      try {
        found = m.devices.signalNotifier(id, which);
      } catch (e) {
        throw new CommandError('GenericError', (e as Error).message, e);
      }
      if (!found) throw new CommandError('DeviceNotFound', `Device '${id}' not found`);
      return {};
    },
    system_powerdown: () => done(ops.powerdown()),
    system_reset: () => done(ops.reset()),
    quit: () => done(ops.quit()),
  };
  // device_add takes a device's properties: an unknown one is the device's, as QEMU says it.
  const argumentError: MachineCommands['argumentError'] = {
    device_add: (a, e) => {
      const u = /^Parameter '([^'.[]+)' is unexpected$/.exec(e.message);
      if (!u) return e;
      if (typeof a.driver === 'string' && a.driver !== 'vfio-pci')
        return new CommandError('GenericError', `'${a.driver}' is not a valid device model name (tsvmm has: vfio-pci)`);
      return new CommandError('GenericError', `Property '${String(a.driver)}.${u[1]}' not found`);
    },
  };
  return {
    handlers: commands,
    ops,
    migration,
    argumentError,
    version,
    idle: () => queue.then(() => {}),
    close: () => fds.close(),
  };
}
