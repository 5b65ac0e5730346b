// The machine's public module: all that front ends (frontend/, lib/, bin/) import from machine/
// (test/unit/layers.test.ts holds them to it). A machine is reached through MachineControl only.
// The machine itself (KVM, VFIO, device models) loads on the first createMachine(), so a command
// that only checks a config (`tsvmm validate`) does not load it.
import type { MachineConfig } from './config/config.js';
import type { MachineControl } from './control.js';
import type { MachineOptions } from './machine.js';

export type {
  MachineControl,
  MachineDevices,
  MachineEvent,
  MachineListener,
  MachineInspection,
  MachineResult,
  MachineStatus,
  ExitCause,
  DeviceAddSpec,
  PciDeviceState,
} from './control.js';
export type { MachineOptions } from './machine.js';
export {
  checkConfig,
  loadConfig,
  readConfigFile,
  resolveConfigPaths,
  ConfigError,
  type MachineConfig,
  type VmConfig,
  type VfioPciConfig,
  type VfioBackendChoice,
} from './config/config.js';
export { buildInitramfs } from './loader/initramfs.js';
export {
  openIncoming,
  openOutgoing,
  parseMigrationUri,
  type Incoming,
  type Outgoing,
  type TakeFd,
} from './migration/transport.js';
export type { ByteSink, ByteSource } from './migration/stream.js';
export type { MigrationProgress } from './migration/machine-state.js';

/** A machine from a checked config; the guest does not run until run(). */
export async function createMachine(config: MachineConfig, opts: MachineOptions = {}): Promise<MachineControl> {
  const { Machine } = await import('./machine.js');
  return new Machine(config, opts);
}
