// A VFIO device IRQ index whose signal means "tell the VMM", not "interrupt the guest": the
// request notifier (VFIO_PCI_REQ_IRQ_INDEX, the host wants the device back: an unbind waits for
// it) and the error notifier (VFIO_PCI_ERR_IRQ_INDEX, AER reported an uncorrectable error).
// VFIO signals an eventfd that the event loop watches (native fdWatch), so nothing polls.
import { closeSync, readSync } from 'node:fs';
import { native, EFD_NONBLOCK } from '../native.js';
import type { VfioDevice } from './device.js';

export class VfioNotifier {
  private readonly fd: number;
  private readonly watch: number;
  private closed = false;

  /** Arms the notifier, or returns undefined when the device has no such index (ERR on conventional PCI). */
  static open(device: VfioDevice, index: number, onSignal: () => void): VfioNotifier | undefined {
    const info = device.irqs[index];
    if (!info || info.count < 1) return undefined;
    return new VfioNotifier(device, index, onSignal);
  }

  private constructor(
    private readonly device: VfioDevice,
    readonly index: number,
    onSignal: () => void,
  ) {
    const n = native();
    const c = n.constants;
    this.fd = n.eventfd(0, EFD_NONBLOCK);
    try {
      device.setIrqs({
        index,
        start: 0,
        flags: c.VFIO_IRQ_SET_DATA_EVENTFD | c.VFIO_IRQ_SET_ACTION_TRIGGER,
        fds: [this.fd],
      });
    } catch (e) {
      closeSync(this.fd);
      throw e;
    }
    const buf = Buffer.alloc(8);
    // Unref'd: a quiet notifier must not keep the process alive once the VM has ended.
    this.watch = n.fdWatch(
      this.fd,
      () => {
        try {
          readSync(this.fd, buf, 0, 8, null);
        } catch {
          return;
        } // EAGAIN: already drained
        try {
          onSignal();
        } catch (e) {
          console.error(`tsvmm: ${device.name}: notifier ${index}: ${(e as Error).message}`);
        }
      },
      false,
    );
  }

  /**
   * Has the kernel signal the notifier as it would for a real event (VFIO's loopback: SET_IRQS
   * with DATA_BOOL on the index), so the whole path from vfio-pci's eventfd on can be exercised
   * where no real AER error or unbind can be made.
   */
  loopback(): void {
    const c = native().constants;
    this.device.setIrqs({
      index: this.index,
      start: 0,
      flags: c.VFIO_IRQ_SET_DATA_BOOL | c.VFIO_IRQ_SET_ACTION_TRIGGER,
      bools: [true],
    });
  }

  /** Disarms VFIO's side first (it must not signal a closed fd), then stops watching. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const c = native().constants;
    try {
      this.device.setIrqs({
        index: this.index,
        start: 0,
        flags: c.VFIO_IRQ_SET_DATA_NONE | c.VFIO_IRQ_SET_ACTION_TRIGGER,
        count: 0,
      });
    } catch {
      /* the device fd may be going away already: closing it disarms too */
    }
    native().fdUnwatch(this.watch);
    closeSync(this.fd);
  }
}
