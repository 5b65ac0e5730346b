// The machine's PCI devices: one manager for the config's devices and hot-plugged ones (QMP
// device_add). A model factory makes a device from its driver name ('vfio-pci' today), as QEMU's
// qdev does; the manager places it on the bus, arms VFIO's notifiers, and takes it away again on
// device_del (asking an ACPI guest to eject it), on a surprise removal, at reset and at close.
import { closeSync } from 'node:fs';
import { native } from '../core/native.js';
import type { PassedFd, PassedFds } from '../core/fdpass.js';
import { vfioPassedFdList, type Vfio, type VfioPassedFds } from '../core/vfio/vfio.js';
import { VfioNotifier } from '../core/vfio/notifier.js';
import { hotResetAll } from '../core/vfio/hot-reset.js';
import { findHostDevice, VfioSetupError } from '../core/vfio/sysfs.js';
import { TsvmmError } from '../core/errors.js';
import type { PciBus } from '../hw/pci.js';
import { placeBars } from '../hw/pci-bars.js';
import type { AcpiPciHotplug } from '../hw/pci-hotplug.js';
import type { Interrupts } from '../hw/interrupts.js';
import { VfioPciDevice } from '../hw/vfio-pci.js';
import type { MachineEvent } from './control.js';
import { endpointId, type Viommu } from './viommu.js';

import type { DeviceSpec as ConfigDeviceSpec } from './config/config.js';
/** The config's device spec, with the driver named by any string (the factory refuses one it lacks). */
export type DeviceSpec = Omit<ConfigDeviceSpec, 'type'> & { type?: string };

/** What a model is made with. */
export interface ModelContext {
  vfio: Vfio;
  interrupts: Interrupts;
}

/** A driver: makes the device model (and whatever host resource it holds) and releases it. */
export interface DeviceModel {
  create(ctx: ModelContext, spec: DeviceSpec, id: string, intxGsi: number): VfioPciDevice;
  release(ctx: ModelContext, dev: VfioPciDevice): void;
}

/** The model factory: driver name → model. */
export const DEVICE_MODELS: Readonly<Record<string, DeviceModel>> = {
  'vfio-pci': {
    create(ctx, spec, id, gsi) {
      // Behind the vIOMMU: a container (legacy) of its own, its DMA following the guest's domains.
      const assigned = ctx.vfio.open(spec.iommu ? { ...spec, viommu: true } : spec);
      try {
        return new VfioPciDevice(ctx.interrupts, assigned, {
          id,
          gsi,
          rom: {
            ...(spec.rombar !== undefined ? { bar: spec.rombar } : {}),
            ...(spec.romfile !== undefined ? { file: spec.romfile } : {}),
          },
        });
      } catch (e) {
        ctx.vfio.release(assigned);
        throw e;
      }
    },
    release(ctx, dev) {
      dev.destroy();
      ctx.vfio.release(dev.assigned);
    },
  },
};

export interface DeviceManagerOptions extends ModelContext {
  pciBus: PciBus;
  passedFds: PassedFds;
  pciHotplug: AcpiPciHotplug;
  /** Windows hot-plugged BARs are placed in. */
  windows: { mmio32: { base: number; end: number }; io: { base: number; end: number } };
  /** A slot's INTx GSI. */
  intxGsi: (slot: number) => number;
  /** Whether the guest has ACPI hot-plug (device_del asks it to eject), and how unplug goes. */
  acpi: () => boolean;
  unplug: () => 'surprise' | string | undefined;
  /** Events for the front ends: a device requested back, failed, or gone (machine/control.ts). */
  event: (event: MachineEvent) => void;
  /** VFIO reported an unrecoverable device error: the machine stops the VM. */
  deviceError: (dev: VfioPciDevice) => void;
  /** The machine's vIOMMU, once there is one (devices with "iommu": true go behind it). */
  viommu?: () => Viommu | undefined;
}

export class DeviceManager {
  readonly devices: VfioPciDevice[] = [];
  private readonly models = new Map<VfioPciDevice, DeviceModel>();
  private readonly notifiers = new Map<VfioPciDevice, VfioNotifier[]>();
  /** Devices the guest was asked to eject (device_del) and has not yet. */
  private readonly unplugRequested = new Set<VfioPciDevice>();
  /** Devices with "iommu": true (behind the vIOMMU once it exists: config devices may come first). */
  private readonly behind = new Set<VfioPciDevice>();

  constructor(private readonly o: DeviceManagerOptions) {}

  find(id: string): VfioPciDevice | undefined {
    return this.devices.find((d) => d.name === id);
  }

  /** Makes a device with its driver's model and puts it on the bus (config or hot-plug). */
  add(spec: DeviceSpec, defaultId: string): VfioPciDevice {
    const driver = spec.type ?? 'vfio-pci';
    const model = DEVICE_MODELS[driver];
    if (!model)
      throw new TsvmmError(
        'ERR_DEVICE',
        `no device model '${driver}' (tsvmm has: ${Object.keys(DEVICE_MODELS).join(', ')})`,
      );
    if (spec.iommu && this.o.viommu?.() === undefined && !this.configPhase)
      throw new TsvmmError('ERR_DEVICE', `'${spec.id ?? defaultId}' is to be behind the vIOMMU, but the VM has none`, {
        fix: 'start the VM with a vIOMMU ("iommu": {"type": "virtio"}, or --device virtio-iommu-pci), or drop iommu',
      });
    const mate = spec.iommu && spec.slot === undefined && this.configPhase ? this.groupMateSlot(spec) : undefined;
    const slot = mate?.slot ?? spec.slot ?? this.o.pciBus.firstFreeSlot();
    const fn = mate?.fn ?? 0;
    // Checked before the host device is opened (and reset) for nothing.
    const taken = fn === 0 ? this.o.pciBus.devices.get(slot << 3) : undefined;
    if (slot < 0 || slot > 31 || taken)
      throw new TsvmmError(
        'ERR_DEVICE',
        taken
          ? `PCI slot ${slot} is taken by ${taken.name}`
          : `no free PCI slot for '${spec.id ?? defaultId}' (slots 0-31)`,
        {
          fix: taken
            ? 'choose a free slot (addr), or leave it out to take the first free one'
            : 'remove a device first',
        },
      );
    const dev = model.create(this.o, spec, spec.id ?? defaultId, this.o.intxGsi(slot));
    try {
      this.o.pciBus.attach(dev, slot, fn);
    } catch (e) {
      model.release(this.o, dev);
      throw e;
    }
    if (spec.iommu) {
      const v = this.o.viommu?.();
      try {
        v?.add(dev);
      } catch (e) {
        this.o.pciBus.detach(dev);
        model.release(this.o, dev);
        throw e;
      }
      this.behind.add(dev);
    }
    this.devices.push(dev);
    this.models.set(dev, model);
    this.armNotifiers(dev);
    return dev;
  }

  /**
   * Behind the vIOMMU, the functions of one host IOMMU group share one address space: they go in
   * one guest slot as its functions (no ACS there), so the guest groups them as the host does and
   * puts them in one domain. Where a config device with "iommu": true joins a group-mate placed
   * already: that slot and its next free function. (Hot-plugged devices take slots of their own.)
   */
  private groupMateSlot(spec: DeviceSpec): { slot: number; fn: number } | undefined {
    let group: number;
    try {
      group = findHostDevice(spec).group;
    } catch {
      return undefined; // the open below says what is wrong
    }
    const mate = [...this.behind].find((d) => d.assigned.host.group === group && (d.devfn & 7) === 0);
    if (!mate) return undefined;
    for (let fn = 1; fn < 8; fn++) if (!this.o.pciBus.devices.has(mate.devfn | fn)) return { slot: mate.slot, fn };
    return undefined;
  }

  /** The config's devices are added before the vIOMMU (it takes the first slot free after them). */
  configPhase = true;

  /** The config's devices are in and the vIOMMU (if any) exists: those with "iommu": true go behind it. */
  configured(v: Viommu | undefined): void {
    this.configPhase = false;
    if (v) for (const d of this.behind) if (!v.iommu.hasEndpoint(endpointId(d))) v.add(d);
  }

  /** Whether a device is behind the vIOMMU (query-pci, inspect). */
  isBehindIommu(dev: VfioPciDevice): boolean {
    return this.behind.has(dev);
  }

  /**
   * Hot-plug (device_add) while the guest runs. The passed fds are handed to the machine's
   * PassedFds (closed on failure). Its BARs are placed around the others', which never move; an
   * ACPI guest is told through the hot-plug controller, another finds it by rescanning the bus.
   */
  hotplug(spec: DeviceSpec & { id: string }, fds: VfioPassedFds | PassedFd[] = {}): VfioPciDevice {
    const list = Array.isArray(fds) ? fds : vfioPassedFdList(fds);
    const refused = this.o.vfio.refusePassed(list);
    const why = this.find(spec.id)
      ? new TsvmmError('ERR_DEVICE', `a device with id '${spec.id}' exists already`)
      : refused !== undefined
        ? new VfioSetupError(refused)
        : undefined;
    if (why) {
      for (const p of list) closeSync(p.fd);
      throw why;
    }
    this.o.passedFds.add(list);
    const closeAll = () => this.o.passedFds.closeUntaken(list.map((p) => p.fd));
    let dev: VfioPciDevice;
    try {
      dev = this.add(spec, spec.id);
    } catch (e) {
      closeAll(); // whatever the failed open did not take
      throw e;
    }
    try {
      placeBars(this.o.pciBus, dev, this.o.windows.mmio32, this.o.windows.io);
    } catch (e) {
      this.remove(dev);
      throw e;
    }
    // Passed fds the device did not take (a group or iommufd it does not use) are closed now, so
    // they cannot refuse a later device_add that needs them.
    closeAll();
    if (this.o.acpi()) this.o.pciHotplug.plugged(dev.slot);
    return dev;
  }

  /**
   * device_del: a guest with ACPI is asked to eject the device (it leaves when the guest's _EJ0
   * runs, and a 'device-deleted' event tells); a guest without is surprised: the device goes at once. Returns
   * whether it is gone already.
   */
  unplug(dev: VfioPciDevice): boolean {
    if (this.o.acpi() && this.o.unplug() !== 'surprise') {
      this.unplugRequested.add(dev);
      this.o.pciHotplug.requestUnplug(dev.slot);
      return false;
    }
    this.delete(dev);
    return true;
  }

  /** The guest ran a slot's _EJ0: the device there leaves. */
  ejected(slot: number): void {
    const dev = this.devices.find((d) => d.slot === slot);
    if (dev) this.delete(dev);
  }

  /** A device leaves and the front end hears of it. */
  delete(dev: VfioPciDevice): void {
    this.remove(dev);
    this.o.event({ type: 'device-deleted', device: dev.name });
  }

  /** Takes a device off the bus and releases it (no event). */
  remove(dev: VfioPciDevice): void {
    const i = this.devices.indexOf(dev);
    if (i < 0) return;
    this.devices.splice(i, 1);
    this.unplugRequested.delete(dev);
    for (const n of this.notifiers.get(dev) ?? []) n.close();
    this.notifiers.delete(dev);
    if (this.behind.delete(dev)) this.o.viommu?.()?.remove(dev);
    this.o.pciBus.detach(dev);
    this.models.get(dev)!.release(this.o, dev);
    this.models.delete(dev);
  }

  /** Every device, last first (VM teardown). */
  releaseAll(): void {
    for (const d of [...this.devices].reverse()) {
      try {
        this.remove(d);
      } catch (e) {
        console.error(`tsvmm: releasing ${d.name}: ${(e as Error).message}`);
      }
    }
  }

  /**
   * system_reset, with the vCPUs parked: every device reset (a bus/slot reset for those without
   * one of their own), and an unplug the guest was asked for and has not done is completed (a
   * rebooting guest will not answer it).
   */
  reset(): void {
    for (const d of this.devices) d.reset();
    this.hotReset();
  }
  completePendingUnplugs(): void {
    for (const dev of [...this.unplugRequested]) this.delete(dev);
  }

  /**
   * Devices without a reset of their own (no FLR, a shared bus) get a bus/slot reset through
   * VFIO_DEVICE_PCI_HOT_RESET, once per set of affected functions, when the VM owns them all; else
   * they keep their state and tsvmm says why (as QEMU does).
   */
  private hotReset(): void {
    const { reset, failed } = hotResetAll(
      this.devices.map((d) => d.assigned),
      this.o.vfio.groups,
    );
    for (const set of reset) console.error(`tsvmm: hot reset (VFIO_DEVICE_PCI_HOT_RESET) of ${set.join(', ')}`);
    for (const f of failed) console.error(`tsvmm: ${f.device} not reset: ${f.error.message}`);
  }

  /**
   * VFIO's notifiers for the device: the host asking for it back (an unbind from vfio-pci waits
   * for us) becomes an unplug request to the guest, as QEMU does; an uncorrectable error (AER)
   * stops the VM rather than letting the guest run on a broken device (QEMU: vm_stop), and `cont`
   * resumes it.
   */
  private armNotifiers(dev: VfioPciDevice): void {
    const c = native().constants;
    const vd = dev.assigned.device;
    const list: VfioNotifier[] = [];
    try {
      const req = VfioNotifier.open(vd, c.VFIO_PCI_REQ_IRQ_INDEX, () => {
        console.error(
          `tsvmm: the host asks for ${dev.assigned.host.name} back (VFIO request): ${this.o.acpi() ? `asking the guest to eject '${dev.name}'` : `removing '${dev.name}'`}`,
        );
        this.o.event({ type: 'device-requested', device: dev.name, host: dev.assigned.host.name });
        this.unplug(dev);
      });
      if (req) list.push(req);
      const err = VfioNotifier.open(vd, c.VFIO_PCI_ERR_IRQ_INDEX, () => {
        console.error(
          `tsvmm: ${dev.name} (${dev.assigned.host.name}): unrecoverable device error reported (VFIO error notifier): VM stopped; 'cont' resumes it`,
        );
        this.o.event({ type: 'device-error', device: dev.name, host: dev.assigned.host.name });
        this.o.deviceError(dev);
      });
      if (err) list.push(err);
    } catch (e) {
      // A kernel that refuses a notifier costs the feature, not the device.
      console.error(`tsvmm: ${dev.name}: VFIO notifiers not armed: ${(e as Error).message}`);
    }
    this.notifiers.set(dev, list);
  }

  /**
   * Has VFIO signal a device's request or error notifier through its loopback (tests, and a
   * drill of what the VM does on an unplug request or a device error).
   */
  signalNotifier(dev: VfioPciDevice, which: 'request' | 'error'): void {
    const c = native().constants;
    const index = which === 'request' ? c.VFIO_PCI_REQ_IRQ_INDEX : c.VFIO_PCI_ERR_IRQ_INDEX;
    const n = this.notifiers.get(dev)?.find((x) => x.index === index);
    if (!n)
      throw new TsvmmError(
        'ERR_DEVICE',
        `${dev.name} has no ${which} notifier (${which === 'error' ? 'VFIO reports one for PCI Express devices only' : 'VFIO did not offer one'})`,
      );
    n.loopback();
  }
}
