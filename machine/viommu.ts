// The machine's vIOMMU: a virtio-iommu on the PCI bus (hw/virtio/iommu.ts over the virtio-pci
// transport), its doorbells on KVM ioeventfds, the VIOT that names it and the endpoints behind it
// (hw/acpi.ts), and the host side that makes the guest's domains real for DMA.
//
// INTEGRATION POINT: the host side (guest domains as DMA address spaces in the memory API, VFIO
// containers / IOASes per domain) is built in core/ separately. Until it is plugged in here
// (`hostSide`), no device may be put behind the vIOMMU: the machine refuses "iommu": true rather
// than let a guest believe its devices are translated while they still reach all of RAM. With no
// endpoint behind it the virtio-iommu never calls the host side (every ATTACH, DETACH and PROBE
// names an endpoint it does not have: S_NOENT), so the device itself runs for real.
import { closeSync, readSync } from 'node:fs';
import { native, EFD_NONBLOCK } from '../core/native.js';
import { TsvmmError } from '../core/errors.js';
import type { AddressSpace } from '../core/memory/index.js';
import type { PciBus } from '../hw/pci.js';
import type { Interrupts } from '../hw/interrupts.js';
import { viotPciRanges, type ViotOptions } from '../hw/acpi.js';
import { AddressSpaceMemory } from '../hw/virtio/guest-memory.js';
import { VirtioIommu } from '../hw/virtio/iommu.js';
import type { IommuHost } from '../hw/virtio/iommu-host.js';
import { VirtioPciDevice, type VirtioNotifyBinder } from '../hw/virtio/pci.js';

/** PCI class of QEMU's virtio-iommu-pci: "other" (0xff). */
const CLASS_OTHER = 0xff0000;

/**
 * A doorbell write becomes an eventfd signal in the kernel (KVM_IOEVENTFD), watched on the event
 * loop: the vCPU that rings it goes on at once instead of waiting for the device model (an
 * application processor's MMIO exit otherwise waits for the main thread to answer it).
 */
export function kvmNotifyBinder(vmFd: number): VirtioNotifyBinder {
  return {
    bind(addr, len, onNotify) {
      const n = native();
      const fd = n.eventfd(0, EFD_NONBLOCK);
      try {
        n.kvmIoeventfd(vmFd, { addr, len, fd, flags: 0 });
      } catch (e) {
        closeSync(fd);
        throw e;
      }
      const buf = Buffer.alloc(8);
      const watch = n.fdWatch(
        fd,
        () => {
          try {
            readSync(fd, buf, 0, 8, null);
          } catch {
            return; // EAGAIN: drained already
          }
          onNotify();
        },
        false,
      );
      return {
        close() {
          n.fdUnwatch(watch);
          try {
            n.kvmIoeventfd(vmFd, { addr, len, fd, flags: n.constants.KVM_IOEVENTFD_FLAG_DEASSIGN });
          } catch {
            /* the VM is closing */
          }
          closeSync(fd);
        },
      };
    },
  };
}

/** The host side of the vIOMMU, where core/'s per-domain DMA address spaces plug in (see above). */
function hostSide(): IommuHost {
  const missing = (): never => {
    throw new TsvmmError('ERR_DEVICE', 'the host side of the vIOMMU is not in this build');
  };
  return { createDomain: missing, destroyDomain: missing, attach: missing, map: missing, unmap: missing };
}

export interface Viommu {
  iommu: VirtioIommu;
  dev: VirtioPciDevice;
  /** The VIOT's content: the virtio-iommu and the endpoints behind it. */
  viot(): ViotOptions;
}

/**
 * Devices the config puts behind the vIOMMU (their ids): refused until the host side is plugged in
 * (see above). Checked before anything is opened.
 */
export function checkDevicesBehind(behind: readonly string[]): void {
  if (behind.length > 0)
    throw new TsvmmError(
      'ERR_CONFIG',
      `${behind.join(', ')}: "iommu": true needs the vIOMMU's host side (guest domains as DMA address spaces), which this build does not have yet`,
      { fix: 'drop "iommu" from the device: it keeps the 1:1 mapping of guest RAM (the virtio-iommu itself can stay)' },
    );
}

/** Puts a virtio-iommu on the bus (at `slot`, or the first free one). */
export function createViommu(o: {
  bus: PciBus;
  slot: number | undefined;
  memory: AddressSpace;
  interrupts: Interrupts;
  intxGsi: (slot: number) => number;
  /** The VM fd to bind doorbells to KVM ioeventfds on; undefined: doorbells are MMIO exits. */
  ioeventfd: number | undefined;
}): Viommu {
  const slot = o.slot ?? o.bus.firstFreeSlot();
  const iommu = new VirtioIommu({ host: hostSide(), endpoints: [], name: 'virtio-iommu' });
  const dev = new VirtioPciDevice(iommu, {
    id: 'virtio-iommu',
    interrupts: o.interrupts,
    intxGsi: o.intxGsi(slot),
    mem: new AddressSpaceMemory(o.memory),
    classCode: CLASS_OTHER,
    ...(o.ioeventfd !== undefined ? { notifyBinder: kvmNotifyBinder(o.ioeventfd) } : {}),
  });
  o.bus.attach(dev, slot);
  return {
    iommu,
    dev,
    viot: () => ({ iommu: { segment: 0, bdf: dev.devfn }, ranges: viotPciRanges(iommu.endpoints) }),
  };
}
