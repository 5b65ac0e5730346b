// The QMP commands a tsvmm machine answers (a QEMU-compatible subset) and its events.
import { readFileSync } from 'node:fs';
import { QmpServer } from './qmp.js';
import type { Machine } from './machine.js';
import { projectRoot } from './paths.js';

export function machineQmp(m: Machine, path: string): QmpServer {
  const [major, minor, micro] = (JSON.parse(readFileSync(`${projectRoot}/package.json`, 'utf8')) as { version: string }).version.split('.').map(Number);
  const version = { major: major ?? 0, minor: minor ?? 0, micro: micro ?? 0 };
  let qmp: QmpServer;
  const commands: Record<string, (a: Record<string, unknown>) => unknown> = {
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
      if (m.vm.paused) { m.vm.resume(); qmp.emit('RESUME'); }
      return {};
    },
    quit: () => {
      qmp.emit('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' });
      m.requestExit(0, 'QMP quit');
      return {};
    },
  };
  qmp = new QmpServer(path, commands, version);
  return qmp;
}
