// QMP as a transport of the command layer (frontend/commands.ts): the machine's commands and
// events over a QMP socket (frontend/qmp/server.ts).
import { QmpServer } from './server.js';
import type { MachineControl } from '../../machine/index.js';
import { machineCommands } from '../commands.js';

export function machineQmp(m: MachineControl, path: string): QmpServer {
  let qmp: QmpServer | undefined;
  const commands = machineCommands(m, (event, data) => qmp?.emit(event, data));
  qmp = new QmpServer(path, commands.handlers, commands.version);
  Object.assign(qmp.argumentError, commands.argumentError);
  qmp.onClose = () => commands.close();
  return qmp;
}
