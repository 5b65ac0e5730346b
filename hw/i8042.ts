// The smallest i8042 (PS/2 controller) that serves its one job here, as kvmtool's does: the
// keyboard controller's reset line. Linux without ACPI (acpi=off) reboots by writing 0xFE (pulse
// the reset line) to the command port 0x64 after waiting for the input buffer to drain; the
// status always reads "empty", so that wait is short, and the reset ends the VM. No keyboard,
// no AUX port: Linux's i8042 probe finds no controller (its self-test times out) and moves on.
import { MemoryRegion } from '../core/memory/index.js';
import type { Migratable, StateReader, StateWriter } from '../core/state.js';

export const I8042_DATA_PORT = 0x60,
  I8042_COMMAND_PORT = 0x64;
const CMD_RESET = 0xfe;

export class I8042 implements Migratable {
  readonly data: MemoryRegion;
  readonly command: MemoryRegion;

  constructor(opts: { onReset: () => void }) {
    this.data = MemoryRegion.io('i8042-data', 1, { read: () => 0, write: () => {} });
    this.command = MemoryRegion.io('i8042-command', 1, {
      read: () => 0, // status: output buffer empty, input buffer empty
      write: (_off, _size, v) => {
        if ((Number(v) & 0xff) === CMD_RESET) opts.onReset();
      },
    });
  }

  // --- snapshot and migration: nothing to keep (its registers read constants) -------------------
  readonly stateId = 'i8042';
  readonly stateVersion = 1;
  saveState(_w: StateWriter): void {}
  loadState(_r: StateReader): void {}
}
