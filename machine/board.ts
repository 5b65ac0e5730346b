// The board: the guest-physical layout (PC-like), where RAM goes and the e820 map that says so,
// and the devices every tsvmm machine has (COM1, the PCI host bridge, a debug-exit port, the PC's
// i8042 and ACPI sleep registers, the GED and the ACPI PCI hot-plug registers) as a table of
// {device, address space, address}. The config check (machine/config/image.ts) reads the layout
// from here, so the two cannot disagree; building the devices needs no KVM.
import type { E820Entry } from './loader/multiboot.js';
import type { MemoryRegion } from '../core/memory/index.js';
import type { InterruptLine } from '../hw/interrupts.js';
import { Serial16550 } from '../hw/serial-16550.js';
import { DebugExit, DEBUG_EXIT_PORT } from '../hw/debug-exit.js';
import { ACPI_SLEEP_CONTROL_PORT } from '../hw/acpi.js';
import { AcpiSleepControl } from '../hw/acpi-pm.js';
import type { RegisterWindow } from '../hw/published-registers.js';
import { I8042, I8042_COMMAND_PORT, I8042_DATA_PORT } from '../hw/i8042.js';
import { GenericEventDevice, GED_EVENT_PCI_HOTPLUG, GED_GSI, GED_PORT } from '../hw/ged.js';
import { AcpiPciHotplug, PCI_HOTPLUG_PORT } from '../hw/pci-hotplug.js';
import { PciHostBridge, PCI_CONF1_PORT } from '../hw/pci-host.js';
import type { PciBus } from '../hw/pci.js';
import type { Migratable } from '../core/state.js';

// Guest-physical layout (PC-like): RAM below the 32-bit PCI hole, the rest above 4 GiB.
export const LOW_RAM_END = 0xc000_0000;
export const PCI_MMIO32_BASE = 0xc000_0000;
export const PCI_MMIO32_END = 0xfec0_0000; // IOAPIC and LAPIC live above
export const HIGH_RAM_BASE = 2 ** 32;
export const MULTIBOOT_INFO_ADDR = 0x9000;
export const COM1_PORT = 0x3f8,
  COM1_IRQ = 4;
export const PCI_IO_BASE = 0xc000,
  PCI_IO_END = 0x10000;
/** PCI windows BARs are placed in (at start and on hot-plug). */
export const PCI_WINDOWS = {
  mmio32: { base: PCI_MMIO32_BASE, end: PCI_MMIO32_END },
  io: { base: PCI_IO_BASE, end: PCI_IO_END },
};
/** PCI slots for devices: 1-31 (slot 0 is the host bridge). */
export const PCI_DEVICE_SLOTS = 31;
/** INTx of PCI devices: IOAPIC pins 16-23 (like q35's PIRQs), one per device where possible. */
export const PCI_INTX_GSI_BASE = 16;
/** A slot's INTx line, fixed by the slot (slot 1 → 16 … slot 8 → 23, then round again), so the
 *  DSDT can route slots that fill up later (hot-plug). */
export const pciIntxGsi = (slot: number): number => PCI_INTX_GSI_BASE + ((slot + 7) % 8);
/** Slots a guest is told it may find devices in later (slot 0 is the host bridge's). */
export const HOTPLUG_SLOTS = Array.from({ length: PCI_DEVICE_SLOTS }, (_, i) => i + 1);

/** Where `size` bytes of guest RAM go: below the PCI hole, then above 4 GiB; and the e820 map. */
export function ramLayout(size: number): { lowSize: number; highSize: number; e820: E820Entry[] } {
  const lowSize = Math.min(size, LOW_RAM_END);
  const e820: E820Entry[] = [
    { addr: 0, size: 0x9fc00, type: 1 },
    { addr: 0x9fc00, size: 0x60400, type: 2 },
    { addr: 0x100000, size: lowSize - 0x100000, type: 1 },
  ];
  if (size > lowSize) e820.push({ addr: HIGH_RAM_BASE, size: size - lowSize, type: 1 });
  return { lowSize, highSize: size - lowSize, e820 };
}

/** What the board's devices tell the machine. */
export interface BoardHooks {
  serialOutput: (bytes: Uint8Array) => void;
  /** The line COM1 raises, and the GED's. */
  line: (gsi: number) => InterruptLine;
  /** Where a device at `size` ports from `port` publishes the registers a vCPU thread may answer itself. */
  registers?: (port: number, size: number) => RegisterWindow;
  pciBus: PciBus;
  /** The guest asked the machine to end (debug exit, reset, ACPI S5). */
  exit: (status: number, reason: string) => void;
  /** The guest ejected the device in a slot (ACPI hot-plug). */
  ejected: (slot: number) => void;
}

/** One fixed device: where it sits. */
export interface BoardDevice {
  device: string;
  space: 'io' | 'memory';
  address: number;
  region: MemoryRegion;
}

export interface Board {
  serial: Serial16550;
  ged: GenericEventDevice;
  pciHotplug: AcpiPciHotplug;
  table: BoardDevice[];
  /** The devices with state a snapshot keeps (the PCI host bridge is saved with the PCI bus). */
  migratable: Migratable[];
}

/**
 * The fixed devices, as QEMU's pc/q35 have them whatever the guest: without ACPI, Linux reboots
 * through the keyboard controller's reset line; with it, powers off by the ACPI sleep registers
 * the FADT names (machine/loader/linux.ts writes the tables).
 */
export function createBoard(h: BoardHooks): Board {
  const serial = new Serial16550({
    output: h.serialOutput,
    irq: h.line(COM1_IRQ),
    ...(h.registers ? { registers: h.registers(COM1_PORT, 8) } : {}),
  });
  const i8042 = new I8042({
    onReset: () => h.exit(0, 'guest reset the machine through the i8042 (tsvmm does not reboot; like QEMU -no-reboot)'),
  });
  const sleep = new AcpiSleepControl({
    onPowerOff: () => h.exit(0, 'guest powered off (ACPI S5)'),
    onOther: (v) =>
      console.error(`tsvmm: guest asked for sleep state SLP_TYP=${(v >> 2) & 7}, which is not offered; ignored`),
  });
  const pciHost = new PciHostBridge(h.pciBus, {
    onResetRequest: () => h.exit(0, 'guest requested a reset (tsvmm does not reboot; like QEMU -no-reboot)'),
  });
  const ged = new GenericEventDevice(h.line(GED_GSI));
  const pciHotplug = new AcpiPciHotplug(() => ged.notify(GED_EVENT_PCI_HOTPLUG), h.ejected);
  const debugExit = new DebugExit((v) => h.exit(v & 0xff, `guest wrote ${v} to the debug-exit port`));
  const io = (device: string, address: number, region: MemoryRegion): BoardDevice => ({
    device,
    space: 'io',
    address,
    region,
  });
  return {
    serial,
    ged,
    pciHotplug,
    migratable: [serial, i8042, sleep, ged, pciHotplug],
    table: [
      io('com1', COM1_PORT, serial.region),
      io('debug-exit', DEBUG_EXIT_PORT, debugExit.region),
      io('i8042-data', I8042_DATA_PORT, i8042.data),
      io('i8042-command', I8042_COMMAND_PORT, i8042.command),
      io('acpi-sleep', ACPI_SLEEP_CONTROL_PORT, sleep.region),
      io('pci-conf1', PCI_CONF1_PORT, pciHost.conf1),
      io('ged', GED_PORT, ged.region),
      io('pci-hotplug', PCI_HOTPLUG_PORT, pciHotplug.region),
    ],
  };
}
