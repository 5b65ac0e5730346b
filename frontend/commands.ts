// The one command layer: the operations a tsvmm machine offers its front ends (stop, cont,
// system_reset, system_powerdown, device_add/del, quit, the queries…), implemented once against a
// Machine and an event sink, with QMP's argument shapes, results, errors (errorClass as QEMU's)
// and events. Two transports use it: the QMP server (frontend/qmp/commands.ts: JSON over a
// socket, arguments checked against frontend/qmp/schema.json there) and the library (lib/index.ts).
import { closeSync, readFileSync, readlinkSync } from 'node:fs';
import { TsvmmError } from '../core/errors.js';
import type { Machine } from '../machine/machine.js';
import type { PciDevice } from '../hw/pci.js';
import { schemaInfo } from '../generated/qmp-validators.js';
import { projectRoot } from '../core/paths.js';
import { identify, type PassedFd } from '../core/fdpass.js';
import type { VfioBackendChoice } from '../core/vfio/vfio.js';

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

export interface MachineCommands {
  readonly handlers: Record<string, CommandHandler>;
  /** Per-command refinements of argument errors (device_add: unknown device properties). */
  readonly argumentError: Partial<Record<string, (args: Record<string, unknown>, e: CommandError) => CommandError>>;
  /** query-version's VersionInfo (also the QMP greeting's). */
  readonly version: { qemu: { major: number; minor: number; micro: number }; package: string };
  /** Resolves once no state-changing command is running or queued (close() waits for it). */
  idle(): Promise<void>;
  /** Releases what commands kept (named fds, fd sets). */
  close(): void;
}

/** The QEMU release whose QMP tsvmm's behaves like (commands, errors, events). */
export const QEMU_VERSION = { major: 7, minor: 2, micro: 0 } as const;

/** Commands that change the machine's state run one at a time, whichever transport (QMP
 *  connections, the library) sends them: a stop queued behind a system_reset waits for it. */
const SERIALIZED = ['stop', 'cont', 'system_reset', 'system_powerdown', 'quit', 'device_add', 'device_del'];

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

/** QEMU's pci_class_descriptions (hw/pci/pci.c): query-pci's class_info.desc. */
const PCI_CLASS_DESC: Record<number, string> = {
  0x0001: 'VGA controller',
  0x0100: 'SCSI controller',
  0x0101: 'IDE controller',
  0x0102: 'Floppy controller',
  0x0103: 'IPI controller',
  0x0104: 'RAID controller',
  0x0106: 'SATA controller',
  0x0107: 'SAS controller',
  0x0180: 'Storage controller',
  0x0200: 'Ethernet controller',
  0x0201: 'Token Ring controller',
  0x0202: 'FDDI controller',
  0x0203: 'ATM controller',
  0x0280: 'Network controller',
  0x0300: 'VGA controller',
  0x0301: 'XGA controller',
  0x0302: '3D controller',
  0x0380: 'Display controller',
  0x0400: 'Video controller',
  0x0401: 'Audio controller',
  0x0402: 'Phone',
  0x0403: 'Audio controller',
  0x0480: 'Multimedia controller',
  0x0500: 'RAM controller',
  0x0501: 'Flash controller',
  0x0580: 'Memory controller',
  0x0600: 'Host bridge',
  0x0601: 'ISA bridge',
  0x0602: 'EISA bridge',
  0x0603: 'MC bridge',
  0x0604: 'PCI bridge',
  0x0605: 'PCMCIA bridge',
  0x0606: 'NUBUS bridge',
  0x0607: 'CARDBUS bridge',
  0x0608: 'RACEWAY bridge',
  0x0680: 'Bridge',
  0x0700: 'Serial port',
  0x0701: 'Parallel port',
  0x0800: 'Interrupt controller',
  0x0801: 'DMA controller',
  0x0802: 'Timer',
  0x0803: 'RTC',
  0x0900: 'Keyboard',
  0x0901: 'Pen',
  0x0902: 'Mouse',
  0x0a00: 'Dock station',
  0x0b00: 'i386 cpu',
  0x0c00: 'Firewire controller',
  0x0c01: 'Access bus controller',
  0x0c02: 'SSA controller',
  0x0c03: 'USB controller',
  0x0c04: 'Fibre channel controller',
  0x0c05: 'SMBus',
};

/** query-pci's PciDeviceInfo for one device (hw/pci/pci-qmp-cmds.c qmp_query_pci_device). */
function pciDeviceInfo(d: PciDevice): object {
  const cls = d.configRead(0x0a, 2),
    pin = d.configRead(0x3d, 1);
  const normal = (d.configRead(0x0e, 1) & 0x7f) === 0;
  return {
    bus: 0,
    slot: d.slot,
    function: d.devfn & 7,
    class_info: { ...(PCI_CLASS_DESC[cls] ? { desc: PCI_CLASS_DESC[cls] } : {}), class: cls },
    id: {
      device: d.configRead(2, 2),
      vendor: d.configRead(0, 2),
      ...(normal ? { subsystem: d.configRead(0x2e, 2), 'subsystem-vendor': d.configRead(0x2c, 2) } : {}),
    },
    ...(pin ? { irq: d.configRead(0x3c, 1) } : {}),
    irq_pin: pin,
    qdev_id: d.name,
    regions: d.bars
      .filter((b) => b)
      .map((b) => ({
        bar: b!.index,
        type: b!.type === 'io' ? 'io' : 'memory',
        address: b!.mappedAt ?? -1,
        size: b!.size,
        ...(b!.type === 'io' ? {} : { prefetch: b!.prefetchable, mem_type_64: b!.type === 'mem64' }),
      })),
  };
}

/** device_add's addr: a slot ("5", "0x5", "05.0") or an integer, as QEMU's PCI devfn property. */
function parseAddr(v: unknown): number {
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
export function machineCommands(m: Machine, emit: EventSink): MachineCommands {
  // As other QEMU-compatible servers do: "qemu" is the QEMU whose QMP this one behaves like (clients
  // check it for features), the server's own name and version go in "package".
  const own = (JSON.parse(readFileSync(`${projectRoot}/package.json`, 'utf8')) as { version: string }).version;
  const version = { qemu: { ...QEMU_VERSION }, package: `tsvmm ${own}` };
  const fds = new FdStore();
  const commands: Record<string, CommandHandler> = {
    'query-version': () => structuredClone(version),
    'query-commands': () => ['qmp_capabilities', ...Object.keys(commands)].map((name) => ({ name })),
    'query-status': () => {
      const paused = m.vm.paused;
      return { running: !paused, singlestep: false, status: paused ? (m.stopReason ?? 'paused') : 'running' };
    },
    'query-name': () => ({ name: m.config.name }),
    'query-pci': () => [{ bus: 0, devices: [...m.pciBus.devices.values()].map(pciDeviceInfo) }],
    'query-qmp-schema': () => schemaInfo,
    stop: () => {
      if (!m.vm.paused) {
        m.vm.pause();
        emit('STOP');
      }
      return {};
    },
    cont: () => {
      m.stopReason = undefined;
      if (m.vm.paused) {
        m.vm.resume();
        emit('RESUME');
      }
      return {};
    },
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
    device_add: (a) => {
      const driver = str(a, 'driver')!;
      if (driver !== 'vfio-pci')
        throw new CommandError('GenericError', `'${driver}' is not a valid device model name (tsvmm has: vfio-pci)`);
      // QEMU names a device without an id itself; tsvmm needs one to find it for device_del.
      const id = str(a, 'id');
      if (id === undefined) throw new CommandError('GenericError', "Parameter 'id' is missing");
      if (!/^[A-Za-z0-9._-]{1,64}$/.test(id))
        throw new CommandError('GenericError', `Parameter 'id' expects an identifier ([A-Za-z0-9._-], at most 64)`);
      const host = str(a, 'host'),
        sysfsdev = str(a, 'sysfsdev'),
        fdName = str(a, 'fd'),
        iommufdName = str(a, 'iommufd');
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
      const romfile = str(a, 'romfile');
      if (!host && !sysfsdev && !fdName)
        throw new CommandError('GenericError', "vfio-pci needs 'host', 'sysfsdev' or 'fd'");
      // Named fds are taken (and owned by the device) only once everything else checks out.
      const passed: PassedFd[] = [];
      const taken: number[] = [];
      let handed = false;
      try {
        let device: string | undefined;
        if (fdName) {
          const fd = fds.take(fdName);
          taken.push(fd);
          const p = vfioFdFor(fd, fdName);
          passed.push(p);
          if (p.kind === 'vfio-cdev') device = p.device;
        }
        if (iommufdName) {
          const fd = fds.take(iommufdName);
          taken.push(fd);
          const p: PassedFd = { name: iommufdName, kind: 'iommufd', fd };
          identify(p);
          passed.push(p);
        }
        const spec = {
          id,
          ...(host ? { host } : sysfsdev ? { sysfsdev } : { sysfsdev: `/sys/bus/pci/devices/${device}` }),
          ...(backend ? { backend } : {}),
          ...(slot !== undefined ? { slot } : {}),
          ...(rombar !== undefined ? { rombar } : {}),
          ...(romfile !== undefined ? { romfile } : {}),
        };
        if (!host && !sysfsdev && !device)
          throw new CommandError(
            'GenericError',
            `fd '${fdName}' is a VFIO group: say which of its devices with 'host'`,
          );
        handed = true; // from here the machine owns the fds (and closes them if it fails)
        m.deviceManager.hotplug(spec, passed);
      } catch (e) {
        if (!handed) for (const fd of taken) closeSync(fd);
        if (e instanceof CommandError) throw e;
        throw new CommandError('GenericError', (e as Error).message, e);
      }
      return {};
    },
    device_del: (a) => {
      const id = str(a, 'id')!;
      const dev = m.deviceManager.find(id);
      if (!dev) throw new CommandError('DeviceNotFound', `Device '${id}' not found`);
      // With ACPI the guest is asked and DEVICE_DELETED follows its eject; without, it goes at once.
      m.deviceManager.unplug(dev);
      return {};
    },
    // tsvmm's own (QEMU's x- convention for what is not a stable interface): has VFIO signal a
    // device's request or error notifier through its loopback, so the VM's answer can be seen
    // where no real unbind or AER error can be made.
    'x-vfio-signal-notifier': (a) => {
      const id = str(a, 'id')!,
        which = str(a, 'notifier')!;
      const dev = m.deviceManager.find(id);
      if (!dev) throw new CommandError('DeviceNotFound', `Device '${id}' not found`);
      if (which !== 'request' && which !== 'error')
        throw new CommandError(
          'GenericError',
          `Parameter 'notifier' does not accept value '${which}' (request or error)`,
        );
      try {
        m.deviceManager.signalNotifier(dev, which);
      } catch (e) {
        throw new CommandError('GenericError', (e as Error).message, e);
      }
      return {};
    },
    system_powerdown: () => {
      // QEMU emits POWERDOWN and presses the ACPI power button; a guest may ignore it.
      emit('POWERDOWN');
      m.requestPowerdown();
      return {};
    },
    system_reset: async () => {
      await m.systemReset();
      emit('RESET', { guest: false, reason: 'host-qmp-system-reset' });
      return {};
    },
    quit: () => {
      emit('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' });
      m.requestExit(0, 'QMP quit');
      return {};
    },
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
  let queue: Promise<unknown> = Promise.resolve();
  for (const name of SERIALIZED) {
    const h = commands[name]!;
    commands[name] = (a, ctx) => {
      const r = queue.then(() => h(a, ctx));
      queue = r.catch(() => {});
      return r;
    };
  }
  m.onDeviceDeleted = (id) => emit('DEVICE_DELETED', { device: id, path: `/machine/peripheral/${id}` });
  m.onEvent = (event, data) => emit(event, data);
  return { handlers: commands, argumentError, version, idle: () => queue.then(() => {}), close: () => fds.close() };
}
