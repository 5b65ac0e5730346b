// ACPI PCI hot-plug for the root bus, the scheme QEMU's i440fx and cloud-hypervisor use: three
// 32-bit registers with a bit per slot, and AML that turns them into Notify on the slot objects.
//   PCIU (+0, read clears): slots where a device arrived      → Notify(Sxx, 1) device check
//   PCID (+4, read clears): slots whose device should leave   → Notify(Sxx, 3) eject request
//   B0EJ (+8, write):       the guest ejected these slots (its _EJ0 ran)
// The guest learns of a change through the GED (hw/ged.ts), whose _EVT calls PSCN. A guest that
// never ejects keeps the device, as under QEMU.
import { MemoryRegion } from '../core/memory/index.js';
import {
  amlAnd,
  amlArg,
  amlCall,
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
  amlShiftLeft,
  amlStore,
  amlString,
  cat,
  eisaId,
  AML_SYSTEM_IO,
} from './aml.js';
import type { Migratable, StateReader, StateWriter } from '../core/state.js';

export const PCI_HOTPLUG_PORT = 0xae00,
  PCI_HOTPLUG_PORT_LEN = 12;
const PCIU = 0,
  PCID = 4,
  B0EJ = 8;

export const slotSeg = (slot: number): string => `S${slot.toString(16).toUpperCase().padStart(2, '0')}`;

export class AcpiPciHotplug implements Migratable {
  readonly region: MemoryRegion;
  private up = 0;
  private down = 0;

  /**
   * `notify` raises the GED's hot-plug event; `onEject` runs for each slot whose _EJ0 the guest
   * evaluated (after it stopped using the device).
   */
  constructor(
    private readonly notify: () => void,
    onEject: (slot: number) => void,
  ) {
    this.region = MemoryRegion.io(
      'acpi-pci-hotplug',
      PCI_HOTPLUG_PORT_LEN,
      {
        read: (off) => {
          if (off === PCIU) {
            const v = this.up;
            this.up = 0;
            return v;
          }
          if (off === PCID) {
            const v = this.down;
            this.down = 0;
            return v;
          }
          return 0;
        },
        write: (off, _size, v) => {
          if (off !== B0EJ) return;
          const bits = Number(v) >>> 0;
          for (let slot = 0; slot < 32; slot++) if (bits & (1 << slot)) onEject(slot);
        },
      },
      { valid: { minAccessSize: 4, maxAccessSize: 4 } },
    );
  }

  /** A device was plugged into `slot`: the guest gets a device check for it. */
  plugged(slot: number): void {
    this.up = (this.up | (1 << slot)) >>> 0;
    this.notify();
  }

  /** Asks the guest to give up the device in `slot` (it answers with _EJ0, or not at all). */
  requestUnplug(slot: number): void {
    this.down = (this.down | (1 << slot)) >>> 0;
    this.notify();
  }

  reset(): void {
    this.up = 0;
    this.down = 0;
  }

  // --- snapshot and migration (core/state.ts) ---------------------------------------------------
  readonly stateId = 'acpi-pci-hotplug';
  readonly stateVersion = 1;
  /** The slots whose arrival or removal the guest has not read yet. */
  saveState(w: StateWriter): void {
    w.u32(this.up).u32(this.down);
  }
  loadState(r: StateReader): void {
    this.up = r.u32('PCIU');
    this.down = r.u32('PCID');
  }
}

/**
 * Slot objects for \_SB.PCI0 (one per hot-pluggable slot: _ADR, _SUN, _EJ0) — to be placed inside
 * the PCI0 device.
 */
export function pciSlotsAml(slots: number[]): Uint8Array {
  return cat(
    ...slots.map((s) =>
      amlDevice(
        slotSeg(s),
        amlName('_ADR', amlInteger((s << 16) >>> 0)),
        amlName('_SUN', amlInteger(s)),
        amlMethod('_EJ0', 1, false, amlCall('\\_SB.PHPR.PCEJ', amlInteger(s))),
      ),
    ),
  );
}

/** \_SB.PHPR (a generic container, as QEMU names it): the registers and the PCEJ/PSCN methods. */
export function pciHotplugAml(slots: number[]): Uint8Array {
  const scan = amlMethod(
    'PSCN',
    0,
    true,
    amlStore(amlPath('PCIU'), amlLocal(0)),
    amlStore(amlPath('PCID'), amlLocal(1)),
    ...slots.flatMap((s) => [
      amlIf(amlAnd(amlLocal(0), amlInteger((1 << s) >>> 0)), amlNotify(`\\_SB.PCI0.${slotSeg(s)}`, 1)),
      amlIf(amlAnd(amlLocal(1), amlInteger((1 << s) >>> 0)), amlNotify(`\\_SB.PCI0.${slotSeg(s)}`, 3)),
    ]),
  );
  return amlDevice(
    'PHPR',
    amlName('_HID', amlInteger(eisaId('PNP0A06'))),
    amlName('_UID', amlString('PCI hotplug')),
    amlOperationRegion('PCST', AML_SYSTEM_IO, PCI_HOTPLUG_PORT, PCI_HOTPLUG_PORT_LEN),
    amlFieldDword('PCST', [
      ['PCIU', 32],
      ['PCID', 32],
      ['B0EJ', 32],
    ]),
    amlMethod('PCEJ', 1, true, amlStore(amlShiftLeft(amlInteger(1), amlArg(0)), amlPath('B0EJ'))),
    scan,
  );
}
