// The QMP commands a tsvmm machine answers (a QEMU-compatible subset) and its events.
import { closeSync, readFileSync, readlinkSync } from 'node:fs';
import { QmpServer, QmpError, type QmpContext } from './qmp.js';
import type { Machine } from './machine.js';
import { projectRoot } from './paths.js';
import { identify, type PassedFd } from './fdpass.js';
import type { VfioBackendChoice, VfioPassedFds } from './vfio/vfio.js';

/** Named fds (getfd) and fd sets (add-fd), as QEMU's monitor keeps them. */
class FdStore {
  readonly named = new Map<string, number>();
  readonly sets = new Map<number, { fd: number; opaque?: string }[]>();

  take(name: string): number {
    const fd = this.named.get(name);
    if (fd === undefined) throw new QmpError('GenericError', `File descriptor named '${name}' has not been found`);
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

const str = (a: Record<string, unknown>, k: string, required = false): string | undefined => {
  const v = a[k];
  if (v === undefined) { if (required) throw new QmpError('GenericError', `Parameter '${k}' is missing`); return undefined; }
  if (typeof v !== 'string') throw new QmpError('GenericError', `Invalid parameter type for '${k}', expected: string`);
  return v;
};

function needFd(ctx: QmpContext): number {
  const fd = ctx.takeFd();
  if (fd === undefined) throw new QmpError('GenericError', 'No file descriptor supplied via SCM_RIGHTS');
  return fd;
}

/** A named fd given to device_add: a VFIO group (/dev/vfio/N) or a device cdev. */
function vfioFdFor(fd: number, name: string): PassedFd {
  let link = '';
  try { link = readlinkSync(`/proc/self/fd/${fd}`); } catch { /* identify says what it is */ }
  const p: PassedFd = { name, kind: /^\/dev\/vfio\/\d+$/.test(link) ? 'vfio-group' : 'vfio-cdev', fd };
  if (p.kind === 'vfio-group') p.group = Number(link.split('/').pop());
  identify(p);
  return p;
}

export function machineQmp(m: Machine, path: string): QmpServer {
  const [major, minor, micro] = (JSON.parse(readFileSync(`${projectRoot}/package.json`, 'utf8')) as { version: string }).version.split('.').map(Number);
  const version = { major: major ?? 0, minor: minor ?? 0, micro: micro ?? 0 };
  let qmp: QmpServer;
  const fds = new FdStore();
  const commands: Record<string, (a: Record<string, unknown>, ctx: QmpContext) => unknown> = {
    'query-version': () => ({ qemu: version, package: 'tsvmm' }),
    'query-commands': () => ['qmp_capabilities', ...Object.keys(commands)].map((name) => ({ name })),
    'query-status': () => {
      const paused = m.vm.paused;
      return { running: !paused, singlestep: false, status: paused ? 'paused' : 'running' };
    },
    'query-pci': () => [{
      bus: 0,
      devices: [...m.pciBus.devices.values()].map((d) => ({
        bus: 0, slot: d.slot, function: d.devfn & 7,
        class_info: { class: d.configRead(0x0a, 2) },
        id: { vendor: d.configRead(0, 2), device: d.configRead(2, 2) },
        qdev_id: d.name,
        regions: d.bars.filter((b) => b).map((b) => ({ bar: b!.index, type: b!.type === 'io' ? 'io' : 'memory', address: b!.mappedAt ?? -1, size: b!.size, prefetch: b!.prefetchable, mem_type_64: b!.type === 'mem64' })),
      })),
    }],
    stop: () => {
      if (!m.vm.paused) { m.vm.pause(); qmp.emit('STOP'); }
      return {};
    },
    cont: () => {
      m.stopReason = undefined;
      if (m.vm.paused) { m.vm.resume(); qmp.emit('RESUME'); }
      return {};
    },
    getfd: (a, ctx) => {
      const name = str(a, 'fdname', true)!;
      const fd = needFd(ctx);
      const old = fds.named.get(name);
      if (old !== undefined) closeSync(old); // QEMU replaces a name's fd
      fds.named.set(name, fd);
      return {};
    },
    closefd: (a) => {
      closeSync(fds.take(str(a, 'fdname', true)!));
      return {};
    },
    'add-fd': (a, ctx) => {
      const fd = needFd(ctx);
      const id = a['fdset-id'] ?? Math.max(-1, ...fds.sets.keys()) + 1;
      if (!Number.isInteger(id) || (id as number) < 0) { closeSync(fd); throw new QmpError('GenericError', "Parameter 'fdset-id' expects a non-negative integer"); }
      const opaque = str(a, 'opaque');
      const set = fds.sets.get(id as number) ?? [];
      set.push({ fd, ...(opaque !== undefined ? { opaque } : {}) });
      fds.sets.set(id as number, set);
      return { 'fdset-id': id, fd };
    },
    'remove-fd': (a) => {
      const id = a['fdset-id'] as number, fd = a.fd as number | undefined;
      const set = fds.sets.get(id);
      const hit = set?.filter((f) => fd === undefined || f.fd === fd) ?? [];
      if (!hit.length) throw new QmpError('GenericError', `File descriptor named 'fdset-id:${id}${fd !== undefined ? `, fd:${fd}` : ''}' not found`);
      for (const f of hit) closeSync(f.fd);
      const rest = set!.filter((f) => !hit.includes(f));
      if (rest.length) fds.sets.set(id, rest); else fds.sets.delete(id);
      return {};
    },
    'query-fdsets': () => [...fds.sets].map(([id, set]) => ({ 'fdset-id': id, fds: set.map((f) => ({ fd: f.fd, ...(f.opaque !== undefined ? { opaque: f.opaque } : {}) })) })),
    device_add: (a) => {
      const driver = str(a, 'driver', true)!;
      if (driver !== 'vfio-pci') throw new QmpError('GenericError', `'${driver}' is not a valid device model name (tsvmm has: vfio-pci)`);
      const id = str(a, 'id', true)!;
      if (!/^[A-Za-z0-9._-]{1,64}$/.test(id)) throw new QmpError('GenericError', `Parameter 'id' expects an identifier ([A-Za-z0-9._-], at most 64)`);
      const host = str(a, 'host'), sysfsdev = str(a, 'sysfsdev'), fdName = str(a, 'fd'), iommufdName = str(a, 'iommufd');
      const backend = str(a, 'backend') as VfioBackendChoice | undefined;
      if (backend !== undefined && !['auto', 'legacy', 'iommufd'].includes(backend)) throw new QmpError('GenericError', "Parameter 'backend' expects auto, legacy or iommufd");
      const slot = a.addr === undefined ? undefined : Number(a.addr);
      if (slot !== undefined && (!Number.isInteger(slot) || slot < 1 || slot > 31)) throw new QmpError('GenericError', "Parameter 'addr' expects a slot number 1-31");
      if (!host && !sysfsdev && !fdName) throw new QmpError('GenericError', "vfio-pci needs 'host', 'sysfsdev' or 'fd'");
      // Named fds are taken (and owned by the device) only once everything else checks out.
      const passed: VfioPassedFds = {};
      const taken: number[] = [];
      let handed = false;
      try {
        let device: string | undefined;
        if (fdName) {
          const fd = fds.take(fdName);
          taken.push(fd);
          const p = vfioFdFor(fd, fdName);
          if (p.kind === 'vfio-group') passed.groups = new Map([[p.group!, fd]]);
          else { passed.cdevs = new Map([[p.device!, fd]]); device = p.device; }
        }
        if (iommufdName) {
          const fd = fds.take(iommufdName);
          taken.push(fd);
          identify({ name: iommufdName, kind: 'iommufd', fd });
          passed.iommufd = fd;
        }
        const spec = { id, ...(host ? { host } : sysfsdev ? { sysfsdev } : { sysfsdev: `/sys/bus/pci/devices/${device}` }),
          ...(backend ? { backend } : {}), ...(slot !== undefined ? { slot } : {}) };
        if (!host && !sysfsdev && !device) throw new QmpError('GenericError', `fd '${fdName}' is a VFIO group: say which of its devices with 'host'`);
        handed = true; // from here the machine owns the fds (and closes them if it fails)
        m.hotplugVfioDevice(spec, passed);
      } catch (e) {
        if (!handed) for (const fd of taken) closeSync(fd);
        if (e instanceof QmpError) throw e;
        throw new QmpError('GenericError', (e as Error).message);
      }
      return {};
    },
    device_del: (a) => {
      const id = str(a, 'id', true)!;
      const dev = m.devices.find((d) => d.name === id);
      if (!dev) throw new QmpError('DeviceNotFound', `Device '${id}' not found`);
      // With ACPI the guest is asked and DEVICE_DELETED follows its eject; without, it goes at once.
      m.unplugVfioDevice(dev);
      return {};
    },
    system_powerdown: () => {
      qmp.emit('POWERDOWN');
      m.requestPowerdown();
      return {};
    },
    system_reset: async () => {
      await m.systemReset();
      qmp.emit('RESET', { guest: false, reason: 'host-qmp-system-reset' });
      return {};
    },
    quit: () => {
      qmp.emit('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' });
      m.requestExit(0, 'QMP quit');
      return {};
    },
  };
  qmp = new QmpServer(path, commands, version);
  m.onDeviceDeleted = (id) => qmp.emit('DEVICE_DELETED', { device: id, path: `/machine/peripheral/${id}` });
  m.onEvent = (event, data) => qmp.emit(event, data);
  qmp.onClose = () => fds.close();
  return qmp;
}
