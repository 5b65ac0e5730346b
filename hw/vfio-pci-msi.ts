// An assigned device's MSI and MSI-X: the capabilities (and the MSI-X table and PBA) are emulated
// (hw/msi.ts, hw/msix.ts); VFIO signals each vector's eventfd, which the machine's MSI group
// (hw/interrupts.ts: on KVM, an irqfd) delivers. Turning either on takes INTx off, and back.
import { native } from '../core/native.js';
import type { AssignedDevice } from '../core/vfio/vfio.js';
import { VfioIrqVectors } from '../core/vfio/irq.js';
import type { Interrupts, MsiInterruptGroup } from './interrupts.js';
import type { MsiMessage } from '../core/msi.js';
import { MsixCap } from './msix.js';
import { MsiCap, msiCapSize, type MsiVectorCount } from './msi.js';
import type { MsixLayout } from './vfio-pci-layout.js';

/** What the capabilities need of the device. */
export interface MsiHost {
  name: string;
  assigned: AssignedDevice;
  interrupts: Interrupts;
  config: Uint8Array;
  wmask: Uint8Array;
  /** Runs guest-triggered work so that no error of it reaches the vCPU exit loop. */
  contain(what: string, fn: () => void): void;
  intx: { enable(): void; disable(): void };
}

/** A capability with the VFIO vectors behind it and the interrupt group they signal. */
export interface MsiRouting<C> {
  cap: C;
  vectors: VfioIrqVectors;
  group: MsiInterruptGroup;
}

/** Vector v in use with this message: routed and unmasked (a signal that waited while it was
 *  masked is delivered), and VFIO signals its eventfd. */
function vectorUse(vectors: VfioIrqVectors, group: MsiInterruptGroup, v: number, msg: MsiMessage): void {
  if (v >= vectors.max) return; // the guest named a vector VFIO cannot back: ignore it
  group.update(v, { ...msg, masked: false });
  vectors.set(v, group.notifier(v)!);
}

export function disableVectors(r: { vectors: VfioIrqVectors; group: MsiInterruptGroup }): void {
  r.vectors.disable(); // VFIO first: it stops signalling before the eventfds close
  r.group.disable();
}

/** MSI-X: the capability and table are emulated; undefined when VFIO offers no MSI-X vectors. */
export function setupMsix(h: MsiHost, m: MsixLayout): MsiRouting<MsixCap> | undefined {
  const c = native().constants;
  const irq = h.assigned.device.irqs[c.VFIO_PCI_MSIX_IRQ_INDEX];
  if (!irq || irq.count === 0) return undefined;
  const vectors = new VfioIrqVectors(h.assigned.device, c.VFIO_PCI_MSIX_IRQ_INDEX, Math.min(m.vectors, irq.count));
  const group = h.interrupts.msiGroup(vectors.max);
  const cap: MsixCap = new MsixCap(
    { ...m, name: h.name },
    {
      onControl: (enabled) =>
        h.contain('MSI-X enable/disable', () => {
          if (enabled) {
            h.intx.disable();
            vectors.enableEmpty();
          } else {
            disableVectors({ vectors, group });
            h.intx.enable();
          }
        }),
      vectorUse: (v, msg) => h.contain('MSI-X vector set-up', () => vectorUse(vectors, group, v, msg)),
      vectorRelease: (v) => h.contain('MSI-X vector mask', () => group.mask(v)),
      notify: (v) => h.contain('MSI-X delivery', () => group.trigger(v)),
      pbaPoll: (first, end) =>
        h.contain('MSI-X PBA poll', () => {
          for (let v = first; v < end; v++) if (group.pending(v)) cap.setPending(v);
        }),
    },
  );
  cap.writeCapabilityTo(h.config, h.wmask);
  return { cap, vectors, group };
}

/** MSI: emulated capability at `p`, all vectors enabled together (MSI cannot grow while enabled);
 *  undefined when VFIO offers no MSI vectors. */
export function setupMsi(h: MsiHost, p: number): (MsiRouting<MsiCap> & { size: number }) | undefined {
  const c = native().constants;
  const irq = h.assigned.device.irqs[c.VFIO_PCI_MSI_IRQ_INDEX];
  if (!irq || irq.count === 0) return undefined;
  const ctrl = h.config[p + 2]! | (h.config[p + 3]! << 8);
  const is64bit = (ctrl & 0x80) !== 0,
    perVectorMask = (ctrl & 0x100) !== 0;
  const capable = Math.min(1 << ((ctrl >> 1) & 7), irq.count, 32);
  const count = (1 << Math.floor(Math.log2(capable))) as MsiVectorCount;
  const vectors = new VfioIrqVectors(h.assigned.device, c.VFIO_PCI_MSI_IRQ_INDEX, count);
  const group = h.interrupts.msiGroup(count);
  const cap: MsiCap = new MsiCap(
    { capOffset: p, vectors: count, is64bit, perVectorMask },
    {
      onControl: (enabled) =>
        h.contain('MSI enable/disable', () => {
          if (enabled) h.intx.disable();
          else {
            disableVectors({ vectors, group });
            h.intx.enable();
          }
        }),
      vectorUse: (v, msg) => h.contain('MSI vector set-up', () => vectorUse(vectors, group, v, msg)),
      vectorRelease: (v) => h.contain('MSI vector mask', () => group.mask(v)),
      notify: (v) => h.contain('MSI delivery', () => group.trigger(v)),
      pendingPoll: (first, end) =>
        h.contain('MSI pending poll', () => {
          for (let v = first; v < end; v++) if (cap.isMasked(v) && group.pending(v)) cap.setPending(v);
        }),
    },
  );
  cap.writeCapabilityTo(h.config, h.wmask);
  return { cap, vectors, group, size: msiCapSize(is64bit, perVectorMask) };
}
