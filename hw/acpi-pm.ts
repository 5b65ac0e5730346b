// The hardware-reduced ACPI sleep registers the FADT names (hw/acpi.ts): SLEEP_CONTROL at 0x600,
// SLEEP_STATUS at 0x601. Linux powers off by writing SLP_TYP(\_S5_) << 2 | SLP_EN to the
// control register; the VMM turns that into a clean exit. Other sleep states are not offered
// (the DSDT has no \_S1_-\_S4_), so any other write is only reported.
import { MemoryRegion } from '../core/memory/index.js';
import { ACPI_S5_SLP_TYP, ACPI_SLP_EN } from './acpi.js';
import type { StateReader, StateWriter } from '../core/state.js';

export class AcpiSleepControl {
  /** Two byte-wide registers: control at +0, status at +1. */
  readonly region: MemoryRegion;

  constructor(opts: { onPowerOff: () => void; onOther?: (value: number) => void }) {
    this.region = MemoryRegion.io('acpi-sleep', 2, {
      // Status: WAK_STS (bit 7) stays clear; the guest never wakes from S5.
      read: () => 0,
      write: (off, _size, v) => {
        if (off !== 0) return; // status: writes clear WAK_STS, nothing to do
        const value = Number(v) & 0xff;
        if (!(value & ACPI_SLP_EN)) return;
        if (((value >> 2) & 7) === ACPI_S5_SLP_TYP) opts.onPowerOff();
        else opts.onOther?.(value);
      },
    });
  }

  // --- snapshot and migration (a Migratable): nothing to keep (writes act, reads are constant) --
  readonly stateId = 'acpi-sleep';
  readonly stateVersion = 1;
  saveState(_w: StateWriter): void {}
  loadState(_r: StateReader): void {}
}
