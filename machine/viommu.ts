// The machine's vIOMMU: a virtio-iommu on the PCI bus (hw/virtio/iommu.ts over the virtio-pci
// transport), its doorbells on KVM ioeventfds, the VIOT that names it and the endpoints behind it
// (hw/acpi.ts), and the host side that makes the guest's domains real for DMA: core/vfio/viommu.ts
// (VfioViommu, per-domain DMA address spaces on both VFIO backends), reached through the adapter
// below. An assigned device with "iommu": true is opened with `viommu: true` and becomes an
// endpoint of both, its id the requester ID the guest's virtio-iommu driver uses (bus 0, devfn).
import { closeSync, readSync } from 'node:fs';
import { native, EFD_NONBLOCK } from '../core/native.js';
import type { AddressSpace } from '../core/memory/index.js';
import type { PciBus } from '../hw/pci.js';
import type { Interrupts } from '../hw/interrupts.js';
import { viotPciRanges, type ViotOptions } from '../hw/acpi.js';
import { AddressSpaceMemory } from '../hw/virtio/guest-memory.js';
import { VirtioIommu } from '../hw/virtio/iommu.js';
import {
  VIRTIO_IOMMU_S_DEVERR,
  VIRTIO_IOMMU_S_INVAL,
  VIRTIO_IOMMU_S_NOENT,
  VIRTIO_IOMMU_S_NOMEM,
  VIRTIO_IOMMU_S_RANGE,
  VIRTIO_IOMMU_S_UNSUPP,
  type IommuHost,
  type IommuRefusal,
  type IommuResult,
} from '../hw/virtio/iommu-host.js';
import type { HostResult, RefusalStatus, VfioViommu, ViommuInspect } from '../core/vfio/viommu.js';
import type { Vfio } from '../core/vfio/vfio.js';
import type { VfioPciDevice } from '../hw/vfio-pci.js';
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
    bind(addr, len, onNotify, pio) {
      const n = native();
      const c = n.constants;
      const flags = pio ? c.KVM_IOEVENTFD_FLAG_PIO | c.KVM_IOEVENTFD_FLAG_DATAMATCH : 0;
      const datamatch = pio?.datamatch ?? 0;
      const fd = n.eventfd(0, EFD_NONBLOCK);
      try {
        n.kvmIoeventfd(vmFd, { addr, len, fd, flags, datamatch });
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
            n.kvmIoeventfd(vmFd, { addr, len, fd, flags: flags | c.KVM_IOEVENTFD_FLAG_DEASSIGN, datamatch });
          } catch {
            /* the VM is closing */
          }
          closeSync(fd);
        },
      };
    },
  };
}

const STATUS: Record<RefusalStatus, number> = {
  inval: VIRTIO_IOMMU_S_INVAL,
  range: VIRTIO_IOMMU_S_RANGE,
  // The device model checks endpoints and domains itself; a host that does not know one is out of step.
  noent: VIRTIO_IOMMU_S_NOENT,
  nomem: VIRTIO_IOMMU_S_NOMEM,
  devErr: VIRTIO_IOMMU_S_DEVERR,
  unsupp: VIRTIO_IOMMU_S_UNSUPP,
};

function result(r: HostResult): IommuResult {
  return r.ok ? undefined : { status: STATUS[r.status] as IommuRefusal['status'], reason: r.reason };
}

/**
 * The device model's IommuHost on VfioViommu. A bypass domain (ATTACH with F_BYPASS) is no
 * address space of its own on the host: its endpoints go to 'bypass' (all RAM 1:1), which is
 * what an identity domain is, in one mapping of RAM rather than one per guest page.
 */
export function vfioIommuHost(host: () => VfioViommu): IommuHost {
  const identity = new Set<number>();
  return {
    createDomain(domain, { bypass }) {
      if (bypass) {
        identity.add(domain);
        return undefined;
      }
      return result(host().createDomain(domain));
    },
    destroyDomain(domain) {
      if (identity.delete(domain)) return;
      const r = host().destroyDomain(domain);
      // The device model destroys only what it created: a refusal here is a bug worth a line.
      if (!r.ok) console.error(`tsvmm: viommu: destroying domain ${domain}: ${r.reason}`);
    },
    attach(endpoint, target) {
      const to = typeof target === 'object' ? (identity.has(target.domain) ? 'bypass' : target.domain) : target;
      return result(host().attach(endpoint, to));
    },
    map(domain, iova, gpa, size, flags) {
      return result(host().map(domain, iova, gpa, size, flags));
    },
    unmap(domain, iova, size) {
      const r = host().unmap(domain, iova, size);
      if (!r.ok) console.error(`tsvmm: viommu: unmapping 0x${iova.toString(16)} in domain ${domain}: ${r.reason}`);
    },
    reservedRegions(endpoint) {
      return host().reservedRegions(endpoint);
    },
  };
}

export interface Viommu {
  iommu: VirtioIommu;
  dev: VirtioPciDevice;
  /** The VIOT's content: the virtio-iommu and the endpoints behind it. */
  viot(): ViotOptions;
  /** Puts an assigned device (opened with `viommu: true`, on the bus) behind the vIOMMU. */
  add(dev: VfioPciDevice): void;
  /** Takes it from behind the vIOMMU before it is released (device_del, close). */
  remove(dev: VfioPciDevice): void;
  /** system_reset: every domain torn down, every endpoint back to bypass (after the device's own reset). */
  reset(): void;
  /** The host side: domains with their endpoints and mapping counts, host groups, counters. */
  host(): ViommuInspect;
}

/** Slots with no device (function 0 free): where device_add may put one. */
const freeSlots = (bus: PciBus): number[] =>
  Array.from({ length: 31 }, (_, i) => i + 1).filter((s) => !bus.devices.has(s << 3));

/** The requester ID the guest's driver names a device by (everything is on bus 0). */
export const endpointId = (dev: { devfn: number }): number => dev.devfn;

/** Puts a virtio-iommu on the bus (at `slot`, or the first free one). */
export function createViommu(o: {
  bus: PciBus;
  slot: number | undefined;
  memory: AddressSpace;
  interrupts: Interrupts;
  intxGsi: (slot: number) => number;
  /** The VM fd to bind doorbells to KVM ioeventfds on; undefined: doorbells are MMIO exits. */
  ioeventfd: number | undefined;
  /** Where the host side lives (VfioViommu, made on first use). */
  vfio: Vfio;
}): Viommu {
  const slot = o.slot ?? o.bus.firstFreeSlot();
  const iommu = new VirtioIommu({ host: vfioIommuHost(() => o.vfio.viommu), endpoints: [], name: 'virtio-iommu' });
  const dev = new VirtioPciDevice(iommu, {
    id: 'virtio-iommu',
    interrupts: o.interrupts,
    intxGsi: o.intxGsi(slot),
    mem: new AddressSpaceMemory(o.memory),
    classCode: CLASS_OTHER,
    // Its requests are answered on the vCPU that rings (the guest driver spins on the used ring),
    // so the exit's cost is the request's: a port exit needs no instruction fetched and decoded.
    pioNotify: true,
    ...(o.ioeventfd !== undefined ? { notifyBinder: kvmNotifyBinder(o.ioeventfd) } : {}),
  });
  o.bus.attach(dev, slot);
  return {
    iommu,
    dev,
    // The endpoints behind it, and the slots free at boot: the guest reads the VIOT once, so a device
    // hot-added behind the vIOMMU is found behind it only where the VIOT named its slot already. (One
    // hot-added 1:1 there is no endpoint: the guest's PROBE gets S_NOENT and it uses direct DMA.)
    viot: () => ({
      iommu: { segment: 0, bdf: dev.devfn },
      ranges: viotPciRanges([...iommu.endpoints, ...freeSlots(o.bus).map((s) => s << 3)]),
    }),
    add(d) {
      const ep = endpointId(d);
      o.vfio.viommu.addEndpoint(ep, d.assigned);
      iommu.addEndpoint(ep);
    },
    remove(d) {
      const ep = endpointId(d);
      if (!iommu.hasEndpoint(ep)) return;
      iommu.removeEndpoint(ep); // detached in the guest's model (its domain goes if it was the last in it)
      o.vfio.viommu.removeEndpoint(ep); // back to 1:1 before VFIO releases it
    },
    reset() {
      o.vfio.viommu.reset();
    },
    host: () => o.vfio.viommu.inspect(),
  };
}
