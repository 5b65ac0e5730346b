// How device models raise interrupts, without knowing what delivers them (rust-vmm's
// InterruptSourceGroup; cloud-hypervisor's MsiInterruptGroup and LegacyIrqGroup). The machine
// implements it (machine/interrupts.ts: KVM GSI routes and irqfds); a model only asks for an MSI
// group or an INTx line and uses it. Eventfds are the currency so that a source outside the VMM
// (VFIO) can signal an interrupt that never wakes the VMM.
import type { MsiMessage } from '../core/msi.js';

export interface MsiVectorConfig extends MsiMessage {
  /** A masked vector keeps its route, but a signal only makes it pending (see pending()). */
  masked: boolean;
}

/** The MSI or MSI-X vectors of one device function. */
export interface MsiInterruptGroup {
  readonly count: number;
  /** Routes vector v to this message (its first update sets the vector up), masked or not. */
  update(v: number, cfg: MsiVectorConfig): void;
  /** Masks vector v with the message it has; nothing for a vector never set up. */
  mask(v: number): void;
  /** The eventfd whose signal is vector v (for VFIO); undefined until v is set up. */
  notifier(v: number): number | undefined;
  /** Delivers vector v now (a pending interrupt the guest just unmasked). */
  trigger(v: number): void;
  /** Whether masked vector v was signalled since it was masked (consumes the signal). */
  pending(v: number): boolean;
  /** Tears every vector down (routes, eventfds); the group can be used again. */
  disable(): void;
}

/** A wired interrupt line (an IOAPIC pin: INTx, ISA IRQs), level-triggered. */
export interface InterruptLine {
  readonly gsi: number;
  /** The VMM drives the line (emulated devices). */
  setLevel(level: boolean): void;
  /**
   * A source outside the VMM drives the line (VFIO INTx): a signal on `trigger` asserts it, and
   * `resample` is signalled when the guest's EOI lowers it again, for the source to unmask.
   * The eventfds belong to the line and stay the same across connect/disconnect.
   */
  connect(): { trigger: number; resample: number };
  disconnect(): void;
  close(): void;
}

/** What a device model is given to raise interrupts with. */
export interface Interrupts {
  msiGroup(count: number): MsiInterruptGroup;
  line(gsi: number): InterruptLine;
}
