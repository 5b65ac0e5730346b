// MSI / MSI-X vectors of an assigned device, wired VFIO → eventfd → KVM irqfd → GSI route, so
// interrupts reach the guest without waking the VMM (QEMU's vfio_msix_vector_do_use & co).
//
// - A vector is set up the first time the guest uses it: a trigger eventfd, an MSI route (GSI)
//   built from the guest's address/data, and an irqfd binding the two.
// - VFIO learns of it without tearing the others down when the kernel allows (no NORESIZE:
//   SET_IRQS for just that vector); otherwise the index is disabled and re-enabled larger.
// - A masked vector keeps its route; VFIO is pointed at a userspace eventfd instead, and a
//   signal there means "pending" (the PBA bit). Unmasking re-points VFIO at the trigger and
//   delivers what was pending. Removing routes to mask lost interrupts in other VMMs.
import { closeSync, readSync, writeSync } from 'node:fs';
import { native, EFD_NONBLOCK } from '../native.js';
import type { Vm } from '../kvm/vm.js';
import type { MsiMessage } from '../kvm/gsi-routing.js';
import type { VfioDevice } from './device.js';

interface Vector {
  trigger: number;
  gsi: number;
  masked: boolean;
  maskFd: number | undefined;
}

const ONE = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);

export class VfioIrqVectors {
  private readonly vectors = new Map<number, Vector>();
  /** How many vectors VFIO currently has enabled for this index (0 = index disabled). */
  private enabled = 0;
  private readonly noresize: boolean;
  private readonly buf = Buffer.alloc(8);
  /** SET_IRQS calls made (tests check that vectors are added without re-enabling). */
  setIrqsCalls = 0;

  constructor(
    private readonly vm: Vm,
    private readonly device: VfioDevice,
    readonly index: number,
    readonly max: number,
  ) {
    const info = device.irqs[index];
    if (!info || info.count === 0) throw new Error(`${device.name}: VFIO reports no vectors for IRQ index ${index}`);
    this.noresize = (info.flags & native().constants.VFIO_IRQ_INFO_NORESIZE) !== 0;
  }

  get active(): boolean {
    return this.enabled > 0;
  }
  gsiOf(v: number): number | undefined {
    return this.vectors.get(v)?.gsi;
  }

  private setIrqs(start: number, fds: number[]): void {
    const c = native().constants;
    this.setIrqsCalls++;
    this.device.setIrqs({
      index: this.index,
      start,
      flags: c.VFIO_IRQ_SET_DATA_EVENTFD | c.VFIO_IRQ_SET_ACTION_TRIGGER,
      fds,
    });
  }

  private target(v: number): number {
    const x = this.vectors.get(v);
    return !x ? -1 : x.masked ? x.maskFd! : x.trigger;
  }

  /** Enables the index with vectors [0, count) as they are now (-1 for unused ones). */
  private enableAll(count: number): void {
    if (this.enabled) this.disableIndex();
    this.setIrqs(
      0,
      Array.from({ length: count }, (_, v) => this.target(v)),
    );
    this.enabled = count;
  }

  private disableIndex(): void {
    const c = native().constants;
    this.setIrqsCalls++;
    this.device.setIrqs({
      index: this.index,
      start: 0,
      flags: c.VFIO_IRQ_SET_DATA_NONE | c.VFIO_IRQ_SET_ACTION_TRIGGER,
      count: 0,
    });
    this.enabled = 0;
  }

  /** Points VFIO's vector v at its current target, growing the index if needed. */
  private wire(v: number): void {
    if (v < this.enabled) this.setIrqs(v, [this.target(v)]);
    else if (this.enabled > 0 && !this.noresize) {
      this.setIrqs(v, [this.target(v)]);
      this.enabled = v + 1;
    } else this.enableAll(v + 1);
  }

  /** MSI-X enabled with no vector in use yet: VFIO still has to put the device in MSI-X mode. */
  enableEmpty(): void {
    if (!this.enabled) this.enableAll(1);
  }

  /** The guest uses vector v with this message (first use allocates; later calls re-route). */
  use(v: number, msg: MsiMessage, masked = false): void {
    if (v >= this.max) throw new RangeError(`vector ${v} ≥ ${this.max}`);
    let x = this.vectors.get(v);
    if (!x) {
      // A guest can exhaust GSIs: whatever was taken before a step failed is given back.
      const gsi = this.vm.gsi.allocMsi(msg);
      const trigger = native().eventfd(0, EFD_NONBLOCK);
      try {
        this.vm.gsi.commit();
        this.vm.irqfd(trigger, gsi);
      } catch (e) {
        closeSync(trigger);
        this.vm.gsi.release(gsi);
        throw e;
      }
      x = { trigger, gsi, masked, maskFd: undefined };
      if (masked) x.maskFd = native().eventfd(0, EFD_NONBLOCK);
      this.vectors.set(v, x);
      this.wire(v);
      return;
    }
    this.vm.gsi.updateMsi(x.gsi, msg);
    this.vm.gsi.commit();
    if (x.masked !== masked) this.setMasked(v, masked);
  }

  /**
   * Masks or unmasks vector v. Unmasking returns whether an interrupt arrived while masked
   * (the caller clears its PBA bit); that interrupt is delivered now.
   */
  setMasked(v: number, masked: boolean): boolean {
    const x = this.vectors.get(v);
    if (!x || x.masked === masked) return false;
    x.masked = masked;
    if (masked) {
      x.maskFd ??= native().eventfd(0, EFD_NONBLOCK);
      this.wire(v);
      return false;
    }
    this.wire(v);
    const pending = this.drain(x.maskFd);
    if (pending) writeSync(x.trigger, ONE);
    return pending;
  }

  /** Delivers vector v now (a pending interrupt the guest just unmasked). */
  fire(v: number): void {
    const x = this.vectors.get(v);
    if (x) writeSync(x.trigger, ONE);
  }

  /** Whether masked vector v has fired since it was masked (consumes the signal). */
  pending(v: number): boolean {
    const x = this.vectors.get(v);
    return !!x && x.masked && this.drain(x.maskFd);
  }

  private drain(fd: number | undefined): boolean {
    if (fd === undefined) return false;
    try {
      return readSync(fd, this.buf, 0, 8, null) === 8;
    } catch {
      return false;
    } // EAGAIN: nothing
  }

  /** Tears everything down: VFIO index off, irqfds, routes, eventfds. */
  disable(): void {
    if (this.enabled) {
      try {
        this.disableIndex();
      } catch {
        /* device already gone */
      }
    }
    for (const x of this.vectors.values()) {
      try {
        this.vm.irqfdRemove(x.trigger, x.gsi);
      } catch {
        /* VM closing */
      }
      this.vm.gsi.release(x.gsi);
      closeSync(x.trigger);
      if (x.maskFd !== undefined) closeSync(x.maskFd);
    }
    this.vectors.clear();
    try {
      this.vm.gsi.commit();
    } catch {
      /* VM closing */
    }
  }
}
