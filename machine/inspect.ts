// Read-only views of a machine for front ends: the inspection snapshot, one PCI device as the guest
// sees it, and a vCPU's stop in words.
import type { VcpuStop } from '../core/kvm/exit-channel.js';
import type { KvmVm } from '../core/kvm/vm.js';
import type { Vfio } from '../core/vfio/vfio.js';
import type { PciDevice } from '../hw/pci.js';
import { VfioPciDevice } from '../hw/vfio-pci.js';
import type { MachineInspection, PciDeviceState } from './control.js';

/** The snapshot: memslots, what VFIO maps and pins, the exits the VMM answered, the interrupt
 *  vectors the guest enabled on each assigned device, and the PCI devices with their BARs. */
export function inspectMachine(m: {
  memory: MachineInspection['memory'];
  vm: KvmVm;
  vfio: Vfio;
  devices: readonly VfioPciDevice[];
  pciDevices: PciDeviceState[];
  viommu?: MachineInspection['viommu'];
}): MachineInspection {
  const stats = m.vm.stats;
  let pinnedBytes = 0;
  const dmaMappings: MachineInspection['dmaMappings'] = [];
  for (const l of m.vfio.listeners)
    for (const [section, map] of l.mappings) {
      dmaMappings.push({ iova: map.iova, size: map.size, readonly: map.readonly, region: map.region });
      if (section.region.kind === 'ram') pinnedBytes += map.size; // RAM is pinned; a BAR's mmap is not
    }
  return {
    memory: m.memory,
    memslots: m.vm.memslots
      .slots()
      .map((s) => ({ slot: s.slot, guestAddr: s.gpa, size: s.size, readonly: s.readonly })),
    dmaMappings: dmaMappings.sort((a, b) => a.iova - b.iova),
    pinnedBytes,
    exits: { io: stats.ioExits, mmio: stats.mmioExits, total: stats.ioExits + stats.mmioExits },
    interrupts: m.devices.map((d) => ({ device: d.name, host: d.assigned.host.name, ...d.interruptState() })),
    pciDevices: m.pciDevices.map((d) => ({
      slot: d.slot,
      id: d.id,
      vendor: d.vendor,
      device: d.device,
      class: d.class,
      ...(d.host !== undefined ? { host: d.host } : {}),
      ...(d.iommu ? { iommu: true } : {}),
      bars: d.bars.map((b) => ({ index: b.index, type: b.type, address: b.address, size: b.size })),
    })),
    vcpus: m.vm.vcpus.length,
    ...(m.viommu ? { viommu: m.viommu } : {}),
  };
}

export function pciDeviceState(d: PciDevice): PciDeviceState {
  return {
    slot: d.slot,
    function: d.devfn & 7,
    id: d.name,
    vendor: d.configRead(0, 2),
    device: d.configRead(2, 2),
    class: (d.configRead(0x0b, 1) << 16) | (d.configRead(0x0a, 1) << 8) | d.configRead(0x09, 1),
    headerType: d.configRead(0x0e, 1),
    subsystemVendor: d.configRead(0x2c, 2),
    subsystem: d.configRead(0x2e, 2),
    interruptLine: d.configRead(0x3c, 1),
    interruptPin: d.configRead(0x3d, 1),
    ...(d instanceof VfioPciDevice ? { host: d.assigned.host.name } : {}),
    bars: d.bars
      .filter((b) => b !== undefined)
      .map((b) => ({ index: b.index, type: b.type, address: b.mappedAt, size: b.size, prefetchable: b.prefetchable })),
  };
}

export function describeStop(s: VcpuStop): { status: number; reason: string } {
  switch (s.reason) {
    case 'stopped':
      return { status: 0, reason: 'stopped' };
    case 'hlt':
      return { status: 0, reason: 'guest halted' };
    case 'shutdown':
      return { status: 1, reason: 'guest shut down the CPU (triple fault)' };
    case 'system-event':
      return { status: 0, reason: `guest system event ${s.type} (1 shutdown, 2 reset)` };
    case 'internal-error':
      return {
        status: 1,
        reason: `KVM internal error, suberror ${s.suberror} (1 = emulation failure), data [${s.data.join(' ')}]`,
      };
    case 'fail-entry':
      return { status: 1, reason: `KVM could not enter the guest (hardware reason ${s.hwReason})` };
    case 'unhandled-exit':
      return { status: 1, reason: `unhandled KVM exit reason ${s.exitReason}` };
    case 'error':
      return { status: 1, reason: `vCPU thread failed: ${s.message}` };
  }
}
