// ACPI Generic Event Device (ACPI0013), the hardware-reduced platform's way to raise ACPI events
// (cloud-hypervisor and QEMU's microvm use it too): one level-triggered GSI and a 32-bit event
// register. Reading the register returns the pending events and clears them, which lowers the
// line; the DSDT's _EVT reads it once and runs the handler of each event bit (PCI slot scan,
// power button).
import { MemoryRegion } from '../core/memory/index.js';
import type { InterruptLine } from './interrupts.js';
import {
  amlAnd,
  amlBuffer,
  amlDevice,
  amlFieldDword,
  amlIf,
  amlInteger,
  amlLocal,
  amlMethod,
  amlName,
  amlNotify,
  amlOperationRegion,
  amlPath,
  amlStore,
  amlString,
  cat,
  eisaId,
  endTag,
  extendedInterrupt,
  AML_SYSTEM_IO,
} from './aml.js';
import type { Migratable, StateReader, StateWriter } from '../core/state.js';

export const GED_PORT = 0xaf00,
  GED_PORT_LEN = 4;
/** The GED's interrupt: an ISA-range IOAPIC pin nothing else uses (COM1 is 4, PCI INTx 16-23). */
export const GED_GSI = 5;
export const GED_EVENT_PCI_HOTPLUG = 1 << 0;
export const GED_EVENT_POWER_BUTTON = 1 << 1;

export class GenericEventDevice implements Migratable {
  readonly region: MemoryRegion;
  private pending = 0;

  constructor(private readonly irq: Pick<InterruptLine, 'setLevel'>) {
    this.region = MemoryRegion.io(
      'acpi-ged',
      GED_PORT_LEN,
      {
        read: () => {
          const v = this.pending;
          this.pending = 0;
          this.irq.setLevel(false);
          return v;
        },
        write: () => {
          /* read-only */
        },
      },
      { valid: { minAccessSize: 4, maxAccessSize: 4 } },
    );
  }

  /** Raises the events (bits of GED_EVENT_*); the guest's _EVT sees them at its next read. */
  notify(events: number): void {
    this.pending = (this.pending | events) >>> 0;
    if (this.pending) this.irq.setLevel(true);
  }

  /** After a reset nothing is pending and the line is low. */
  reset(): void {
    this.pending = 0;
    this.irq.setLevel(false);
  }

  // --- snapshot and migration (core/state.ts) ---------------------------------------------------
  readonly stateId = 'acpi-ged';
  readonly stateVersion = 1;
  saveState(w: StateWriter): void {
    w.u32(this.pending);
  }
  /** The pending events; the line is driven to match them. */
  loadState(r: StateReader): void {
    this.pending = r.u32('the pending events');
    this.irq.setLevel(this.pending !== 0);
  }
}

/**
 * \_SB.GED_ and \_SB.PWRB for the DSDT. `handlers` maps an event bit to the AML that runs when it
 * is set (the PCI hot-plug scan); the power button is built in.
 */
export function gedAml(handlers: { bit: number; body: Uint8Array }[]): Uint8Array {
  const power = { bit: GED_EVENT_POWER_BUTTON, body: amlNotify('\\_SB.PWRB', 0x80) };
  const evt = amlMethod(
    '_EVT',
    1,
    true,
    amlStore(amlPath('GDAT'), amlLocal(0)),
    ...[...handlers, power].map((h) => amlIf(amlAnd(amlLocal(0), amlInteger(h.bit)), h.body)),
  );
  const ged = amlDevice(
    'GED_',
    amlName('_HID', amlString('ACPI0013')),
    amlName('_UID', amlInteger(0)),
    amlName('_CRS', amlBuffer(cat(extendedInterrupt(GED_GSI, false), endTag()))),
    amlOperationRegion('GDST', AML_SYSTEM_IO, GED_PORT, GED_PORT_LEN),
    amlFieldDword('GDST', [['GDAT', 32]]),
    evt,
  );
  const pwrb = amlDevice('PWRB', amlName('_HID', amlInteger(eisaId('PNP0C0C'))), amlName('_UID', amlInteger(0)));
  return cat(ged, pwrb);
}
