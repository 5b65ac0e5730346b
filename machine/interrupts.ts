// The device models' interrupts (hw/interrupts.ts) on KVM: an MSI vector is an eventfd bound by
// an irqfd to a GSI route built from the guest's message; an INTx line is an IOAPIC pin, driven
// by KVM_IRQ_LINE or by an irqfd with a resample eventfd (QEMU's vfio_intx_enable_kvm).
//
// Masking (as cloud-hypervisor's MsiInterruptGroup): a masked vector keeps its route and its
// eventfd, and only its irqfd is removed, so a signal waits in the eventfd. pending() reads it
// (the PBA bit); unmasking binds the irqfd again, and KVM delivers at once what waits there.
// Removing the route instead loses interrupts (seen in other VMMs).
import { closeSync, readSync, writeSync } from 'node:fs';
import { native, EFD_NONBLOCK } from '../core/native.js';
import type { KvmVm } from '../core/kvm/vm.js';
import type { MsiMessage } from '../core/msi.js';
import type { Interrupts, InterruptLine, MsiInterruptGroup, MsiVectorConfig } from '../hw/interrupts.js';

/** The parts of the VM this needs (tests give a fake). */
export type KvmIrqChip = Pick<KvmVm, 'gsi' | 'irqfd' | 'irqfdRemove' | 'setIrqLine'>;

const ONE = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);

export class KvmInterrupts implements Interrupts {
  constructor(private readonly vm: KvmIrqChip) {}
  msiGroup(count: number): MsiInterruptGroup {
    return new KvmMsiGroup(this.vm, count);
  }
  line(gsi: number): InterruptLine {
    return new KvmLine(this.vm, gsi);
  }
}

interface Vector {
  trigger: number;
  gsi: number;
  masked: boolean;
}

export class KvmMsiGroup implements MsiInterruptGroup {
  private readonly vectors = new Map<number, Vector>();
  private readonly buf = Buffer.alloc(8);

  constructor(
    private readonly vm: KvmIrqChip,
    readonly count: number,
  ) {}

  /** The GSI route of vector v (tests). */
  gsiOf(v: number): number | undefined {
    return this.vectors.get(v)?.gsi;
  }

  update(v: number, cfg: MsiVectorConfig): void {
    if (!Number.isInteger(v) || v < 0 || v >= this.count) throw new RangeError(`vector ${v} ≥ ${this.count}`);
    const msg: MsiMessage = { addressLo: cfg.addressLo, addressHi: cfg.addressHi, data: cfg.data };
    const x = this.vectors.get(v);
    if (!x) {
      // A guest can exhaust GSIs: whatever was taken before a step failed is given back.
      const gsi = this.vm.gsi.allocMsi(msg);
      let trigger: number | undefined;
      try {
        trigger = native().eventfd(0, EFD_NONBLOCK);
        this.vm.gsi.commit();
        if (!cfg.masked) this.vm.irqfd(trigger, gsi);
      } catch (e) {
        if (trigger !== undefined) closeSync(trigger);
        this.vm.gsi.release(gsi);
        throw e;
      }
      this.vectors.set(v, { trigger, gsi, masked: cfg.masked });
      return;
    }
    this.vm.gsi.updateMsi(x.gsi, msg);
    this.vm.gsi.commit();
    if (x.masked === cfg.masked) return;
    if (cfg.masked) this.vm.irqfdRemove(x.trigger, x.gsi);
    else this.vm.irqfd(x.trigger, x.gsi); // KVM delivers a signal already waiting in the eventfd
    x.masked = cfg.masked;
  }

  mask(v: number): void {
    const x = this.vectors.get(v);
    if (!x || x.masked) return;
    this.vm.irqfdRemove(x.trigger, x.gsi);
    x.masked = true;
  }

  notifier(v: number): number | undefined {
    return this.vectors.get(v)?.trigger;
  }

  trigger(v: number): void {
    const x = this.vectors.get(v);
    if (x) writeSync(x.trigger, ONE);
  }

  pending(v: number): boolean {
    const x = this.vectors.get(v);
    if (!x || !x.masked) return false;
    try {
      return readSync(x.trigger, this.buf, 0, 8, null) === 8;
    } catch {
      return false; // EAGAIN: nothing
    }
  }

  disable(): void {
    for (const x of this.vectors.values()) {
      if (!x.masked) {
        try {
          this.vm.irqfdRemove(x.trigger, x.gsi);
        } catch {
          /* VM closing */
        }
      }
      this.vm.gsi.release(x.gsi);
      closeSync(x.trigger);
    }
    this.vectors.clear();
    try {
      this.vm.gsi.commit();
    } catch {
      /* VM closing */
    }
  }
}

export class KvmLine implements InterruptLine {
  private fds: { trigger: number; resample: number } | undefined;
  private connected = false;

  constructor(
    private readonly vm: KvmIrqChip,
    readonly gsi: number,
  ) {}

  setLevel(level: boolean): void {
    this.vm.setIrqLine(this.gsi, level);
  }

  connect(): { trigger: number; resample: number } {
    if (!this.fds) {
      const trigger = native().eventfd(0, EFD_NONBLOCK);
      try {
        this.fds = { trigger, resample: native().eventfd(0, EFD_NONBLOCK) };
      } catch (e) {
        closeSync(trigger);
        throw e;
      }
    }
    if (!this.connected) {
      this.vm.irqfd(this.fds.trigger, this.gsi, this.fds.resample);
      this.connected = true;
    }
    return this.fds;
  }

  disconnect(): void {
    if (!this.connected) return;
    this.connected = false;
    try {
      this.vm.irqfdRemove(this.fds!.trigger, this.gsi);
    } catch {
      /* VM closing */
    }
  }

  close(): void {
    this.disconnect();
    if (this.fds) {
      closeSync(this.fds.trigger);
      closeSync(this.fds.resample);
    }
    this.fds = undefined;
  }
}
