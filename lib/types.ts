// The library's public types (lib/index.ts exports them): its options and results, and the QMP commands' and
// events' types (generated/qmp-types.ts, from frontend/qmp/schema.json) its command() and on() are typed by.
import type { MachineInspection } from '../machine/index.js';
import type { QmpCommands, QmpEvents } from '../generated/qmp-types.js';

export type {
  QmpCommands,
  QmpEvents,
  QmpStatusInfo,
  QmpRunState,
  QmpShutdownCause,
  QmpVersionInfo,
  QmpPciInfo,
  QmpPciDeviceInfo,
  QmpAddfdInfo,
  QmpFdsetInfo,
  QmpSchemaInfo,
} from '../generated/qmp-types.js';

export interface CreateVmOptions {
  /** Where COM1 output goes besides the VM's buffer (Vm.serial): 'capture' (default: kept, not
   *  printed) or 'inherit' (also written to process.stdout). The config's serial.output is not used. */
  serial?: 'capture' | 'inherit';
  /** Relative paths in the config (and deviceAdd's romfile) resolve against this (default: process.cwd()). */
  baseDir?: string;
  /** Aborting closes the VM. */
  signal?: AbortSignal;
  /** A file Vm.save() (or QMP migrate to file:) wrote: the VM starts from that state instead of
   *  booting (its config must be the saved VM's: memory, vCPUs, devices). Relative to baseDir. */
  restore?: string;
}

export interface WaitOptions {
  /** Default 30000; Infinity waits for ever. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface VmExit {
  status: number;
  reason: string;
}

/** Vm.inspect()'s snapshot: memory, memslots, DMA mappings, pinned bytes, exits, interrupts, PCI devices. */
// An interface of its own (not an alias), so that editors show its name rather than the machine's.
// eslint-disable-next-line @typescript-eslint/no-empty-object-type
export interface VmInspection extends MachineInspection {}
export type VmStatus =
  | 'running'
  | 'paused'
  | 'internal-error'
  | 'shutdown'
  | 'finish-migrate'
  | 'postmigrate'
  | 'inmigrate';

/** A QMP event's name (frontend/qmp/schema.json's events). */
export type VmEventName = keyof QmpEvents;
/** Any event's data (on('SHUTDOWN', …) and the like give one event's data, typed exactly). */
export type VmEventData = NonNullable<QmpEvents[VmEventName]>;
/** An 'event' listener: every event, by name, with its data (none for STOP, RESUME and POWERDOWN). */
export type VmEventListener = (name: VmEventName, data?: VmEventData) => void;
/** The arguments of QMP command `C` (optional when it takes none or only optional ones). */
export type VmCommandArgs<C extends keyof QmpCommands> =
  Record<string, never> extends QmpCommands[C]['args']
    ? [args?: QmpCommands[C]['args']]
    : [args: QmpCommands[C]['args']];
