// QMP as a transport of the command layer (frontend/commands.ts): the machine's commands and
// events over one or more QMP sockets (frontend/qmp/server.ts), each its own monitor with its own
// session, as QEMU's several -qmp options are. Events go to every monitor's client.
import { QmpServer } from './server.js';
import type { MachineControl } from '../../machine/index.js';
import { machineCommands, type MachineCommands } from '../commands.js';

export class QmpMonitors {
  constructor(
    readonly servers: readonly QmpServer[],
    private readonly release: () => void,
    /** The commands' migration state (the command line's --incoming waits on it). */
    readonly migration: MachineCommands['migration'],
  ) {}
  /** Opens every socket (in order; the first that cannot be opened throws). */
  async listen(): Promise<void> {
    for (const s of this.servers) await s.listen();
  }
  emit(event: string, data?: object): void {
    for (const s of this.servers) s.emit(event, data);
  }
  /** Closes every socket, then releases what commands kept (named fds, fd sets). */
  async close(): Promise<void> {
    await Promise.all(this.servers.map((s) => s.close()));
    this.release();
  }
}

export function machineQmp(
  m: MachineControl,
  paths: readonly string[],
  opts: { incoming?: 'defer' } = {},
): QmpMonitors {
  let monitors: QmpMonitors | undefined;
  const commands = machineCommands(m, (event, data) => monitors?.emit(event, data), opts);
  const servers = paths.map((path) => {
    const qmp = new QmpServer(path, commands.handlers, commands.version);
    Object.assign(qmp.argumentError, commands.argumentError);
    return qmp;
  });
  monitors = new QmpMonitors(servers, () => commands.close(), commands.migration);
  return monitors;
}
