// An assigned device's INTx: VFIO's trigger eventfd goes straight to the machine's interrupt line;
// the guest's EOI signals the resample eventfd, from which VFIO unmasks the (auto-masked) line
// (QEMU's vfio_intx_enable_kvm), so no interrupt wakes the VMM. Devices that cannot unmask from
// an eventfd are unmasked by the VMM instead.
import { readSync } from 'node:fs';
import { isSyscallError } from '../core/native.js';
import type { VfioIntx } from '../core/vfio/irq.js';
import type { InterruptLine } from './interrupts.js';

export class IntxRouting {
  private on = false;
  private resampleWatch: { fd: number; timer: NodeJS.Timeout; unmasks: number } | undefined;
  private readonly resampleBuf = Buffer.alloc(8);

  constructor(
    private readonly name: string,
    private readonly intx: VfioIntx,
    private readonly line: InterruptLine,
  ) {}

  /** Connects the line (when the device has a pin and VFIO offers INTx). */
  enable(hasPin: boolean): void {
    if (this.on || !hasPin || !this.intx.available) return;
    const { trigger, resample } = this.line.connect();
    this.on = true;
    try {
      this.intx.trigger(trigger);
      this.intx.mask();
      try {
        this.intx.unmaskOn(resample);
      } catch (e) {
        // Some mdev drivers (mtty) cannot unmask from an eventfd (ENOTTY): the trigger still goes
        // straight to the line, and the VMM unmasks after each guest EOI instead (QEMU does the same).
        if (!isSyscallError(e, 'ENOTTY') && !isSyscallError(e, 'EINVAL')) throw e;
        this.watchResample(resample);
      }
      this.intx.unmask();
    } catch (e) {
      this.disable();
      throw e;
    }
  }

  /** Turns INTx off at VFIO and at the line (MSI/MSI-X take over, or the device goes away). */
  disable(): void {
    if (!this.on) return;
    this.on = false;
    try {
      this.intx.disable();
    } catch {
      /* already off */
    }
    this.line.disconnect();
  }

  /** Userspace INTx unmask (for devices that cannot unmask from an eventfd): the guest's EOI
   *  signals the resample eventfd, and the VMM unmasks when it sees that. It looks before every
   *  trapped BAR access (the guest EOIs before it touches the device again, so an interrupt the
   *  access raises is never lost to a stale mask, as QEMU's vfio_eoi on BAR access) and on a
   *  slow timer for interrupts the device raises by itself. */
  private watchResample(fd: number): void {
    if (this.resampleWatch) return;
    const timer = setInterval(() => this.poll(), 5);
    timer.unref();
    this.resampleWatch = { fd, timer, unmasks: 0 };
  }

  /** Before a trapped BAR access: unmask if the guest EOI'd (userspace unmasking only). */
  poll(): void {
    const w = this.resampleWatch;
    if (!w || !this.on) return;
    try {
      readSync(w.fd, this.resampleBuf, 0, 8, null);
    } catch {
      return; // EAGAIN: no EOI since the last look
    }
    try {
      this.intx.unmask();
      w.unmasks++;
    } catch (e) {
      console.error(`tsvmm: ${this.name}: INTx unmask failed: ${(e as Error).message}`);
    }
  }

  /** Userspace INTx unmasks done so far (undefined when VFIO unmasks from the resample eventfd). */
  get userspaceUnmasks(): number | undefined {
    return this.resampleWatch?.unmasks;
  }

  /** Releases the line for good (the device goes away). */
  close(): void {
    this.disable();
    if (this.resampleWatch) clearInterval(this.resampleWatch.timer);
    this.resampleWatch = undefined;
    this.line.close();
  }
}
