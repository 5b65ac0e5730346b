// The VM's GSI routing table. KVM_SET_GSI_ROUTING replaces the whole table, so it is kept here
// and pushed after each batch of changes. GSIs 0-23 are the irqchip pins (PIC + IOAPIC, as
// KVM's default table has them); MSI routes get GSIs from 24 up.
import { native, type GsiRoute } from '../native.js';
import type { MsiMessage } from '../msi.js';

export const IRQCHIP_PINS = 24;

export class GsiRouting {
  private readonly msi = new Map<number, MsiMessage>();
  private readonly free: number[] = [];
  private next = IRQCHIP_PINS;
  /** Starts dirty: the first commit replaces KVM's default table with this one. */
  private dirty = true;
  /** Number of KVM_SET_GSI_ROUTING calls (for tests and benchmarks). */
  commits = 0;

  constructor(
    private readonly vmFd: number,
    private readonly maxGsi = 1024,
  ) {}

  allocMsi(msg: MsiMessage): number {
    const gsi = this.free.pop() ?? this.next++;
    if (gsi >= this.maxGsi) throw new Error(`out of GSIs for MSI routes (limit ${this.maxGsi})`);
    this.msi.set(gsi, { ...msg });
    this.dirty = true;
    return gsi;
  }

  updateMsi(gsi: number, msg: MsiMessage): void {
    const cur = this.msi.get(gsi);
    if (!cur) throw new Error(`GSI ${gsi} is not an MSI route`);
    if (cur.addressLo === msg.addressLo && cur.addressHi === msg.addressHi && cur.data === msg.data) return;
    this.msi.set(gsi, { ...msg });
    this.dirty = true;
  }

  release(gsi: number): void {
    if (this.msi.delete(gsi)) {
      this.free.push(gsi);
      this.dirty = true;
    }
  }

  /** Pushes the table to KVM if anything changed. */
  commit(): void {
    if (!this.dirty) return;
    const c = native().constants;
    const routes: GsiRoute[] = [];
    for (let pin = 0; pin < IRQCHIP_PINS; pin++) {
      // As QEMU's kvm_pc_setup_irq_routing: ISA IRQs drive both PICs and the IOAPIC; IRQ 2 is
      // the PIC cascade, and the PIT's IRQ 0 arrives on IOAPIC pin 2 (the usual override).
      if (pin < 16 && pin !== 2)
        routes.push({
          gsi: pin,
          type: 'irqchip',
          irqchip: pin < 8 ? c.KVM_IRQCHIP_PIC_MASTER : c.KVM_IRQCHIP_PIC_SLAVE,
          pin: pin % 8,
        });
      if (pin !== 2)
        routes.push({ gsi: pin, type: 'irqchip', irqchip: c.KVM_IRQCHIP_IOAPIC, pin: pin === 0 ? 2 : pin });
    }
    for (const [gsi, m] of this.msi) routes.push({ gsi, type: 'msi', ...m });
    native().kvmSetGsiRouting(this.vmFd, routes);
    this.commits++;
    this.dirty = false;
  }
}
