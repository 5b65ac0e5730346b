// VFIO_DEVICE_SET_IRQS for an assigned device's interrupts: which eventfd each MSI / MSI-X vector
// signals, and the INTx trigger / mask / unmask sequence. Where a signal goes from there (a KVM
// irqfd, a GSI route) is the machine's business (machine/interrupts.ts), not VFIO's.
//
// MSI / MSI-X vectors are handed to VFIO as the guest first uses them (QEMU's
// vfio_msix_vector_do_use): without NORESIZE, SET_IRQS for just that vector, leaving the others
// be; with it, the index is disabled and re-enabled larger.
import { native } from '../native.js';
import type { VfioDevice } from './device.js';

export class VfioIrqVectors {
  /** The eventfd of each vector handed to VFIO (-1: none). */
  private readonly fds: number[] = [];
  /** How many vectors VFIO currently has enabled for this index (0 = index disabled). */
  private enabled = 0;
  private readonly noresize: boolean;
  /** SET_IRQS calls made (tests check that vectors are added without re-enabling). */
  setIrqsCalls = 0;

  constructor(
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

  /** Enables the index with vectors [0, count) as they are now (-1 for unused ones). */
  private enableAll(count: number): void {
    if (this.enabled) this.disableIndex();
    this.setIrqs(
      0,
      Array.from({ length: count }, (_, v) => this.fds[v] ?? -1),
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

  /** MSI-X enabled with no vector in use yet: VFIO still has to put the device in MSI-X mode. */
  enableEmpty(): void {
    if (!this.enabled) this.enableAll(1);
  }

  /** Has VFIO signal `fd` for vector v (nothing if it does already), growing the index if needed. */
  set(v: number, fd: number): void {
    if (v >= this.max) throw new RangeError(`vector ${v} ≥ ${this.max}`);
    if (this.fds[v] === fd && v < this.enabled) return;
    this.fds[v] = fd;
    if (v < this.enabled) this.setIrqs(v, [fd]);
    else if (this.enabled > 0 && !this.noresize) {
      this.setIrqs(v, [fd]);
      this.enabled = v + 1;
    } else this.enableAll(v + 1);
  }

  /** Turns the index off at VFIO and forgets the vectors. */
  disable(): void {
    this.fds.length = 0;
    if (!this.enabled) return;
    try {
      this.disableIndex();
    } catch {
      /* device already gone */
    }
    this.enabled = 0;
  }
}

/** INTx at VFIO: the line's trigger eventfd, and unmasking from a resample eventfd. */
export class VfioIntx {
  constructor(private readonly device: VfioDevice) {}

  private set(action: 'TRIGGER' | 'MASK' | 'UNMASK', fd?: number): void {
    const c = native().constants;
    const act = {
      TRIGGER: c.VFIO_IRQ_SET_ACTION_TRIGGER,
      MASK: c.VFIO_IRQ_SET_ACTION_MASK,
      UNMASK: c.VFIO_IRQ_SET_ACTION_UNMASK,
    }[action];
    const index = c.VFIO_PCI_INTX_IRQ_INDEX;
    if (fd === undefined) this.device.setIrqs({ index, start: 0, flags: c.VFIO_IRQ_SET_DATA_NONE | act, count: 1 });
    else this.device.setIrqs({ index, start: 0, flags: c.VFIO_IRQ_SET_DATA_EVENTFD | act, fds: [fd] });
  }

  /** Whether the device has an INTx line VFIO can signal. */
  get available(): boolean {
    const irq = this.device.irqs[native().constants.VFIO_PCI_INTX_IRQ_INDEX];
    return !!irq && irq.count > 0;
  }

  trigger(fd: number): void {
    this.set('TRIGGER', fd);
  }
  mask(): void {
    this.set('MASK');
  }
  /** VFIO unmasks the (auto-masked) line when `fd` is signalled (the guest's EOI). Some mdev
   *  drivers (mtty) refuse: ENOTTY or EINVAL. */
  unmaskOn(fd: number): void {
    this.set('UNMASK', fd);
  }
  unmask(): void {
    this.set('UNMASK');
  }
  disable(): void {
    const c = native().constants;
    this.device.setIrqs({
      index: c.VFIO_PCI_INTX_IRQ_INDEX,
      start: 0,
      flags: c.VFIO_IRQ_SET_DATA_NONE | c.VFIO_IRQ_SET_ACTION_TRIGGER,
      count: 0,
    });
  }
}
