// QMP query-pci's answer for one device, as QEMU gives it (hw/pci/pci-qmp-cmds.c).
import type { PciDeviceState } from '../machine/index.js';

/** QEMU's pci_class_descriptions (hw/pci/pci.c): query-pci's class_info.desc. */
const PCI_CLASS_DESC: Record<number, string> = {
  0x0001: 'VGA controller',
  0x0100: 'SCSI controller',
  0x0101: 'IDE controller',
  0x0102: 'Floppy controller',
  0x0103: 'IPI controller',
  0x0104: 'RAID controller',
  0x0106: 'SATA controller',
  0x0107: 'SAS controller',
  0x0180: 'Storage controller',
  0x0200: 'Ethernet controller',
  0x0201: 'Token Ring controller',
  0x0202: 'FDDI controller',
  0x0203: 'ATM controller',
  0x0280: 'Network controller',
  0x0300: 'VGA controller',
  0x0301: 'XGA controller',
  0x0302: '3D controller',
  0x0380: 'Display controller',
  0x0400: 'Video controller',
  0x0401: 'Audio controller',
  0x0402: 'Phone',
  0x0403: 'Audio controller',
  0x0480: 'Multimedia controller',
  0x0500: 'RAM controller',
  0x0501: 'Flash controller',
  0x0580: 'Memory controller',
  0x0600: 'Host bridge',
  0x0601: 'ISA bridge',
  0x0602: 'EISA bridge',
  0x0603: 'MC bridge',
  0x0604: 'PCI bridge',
  0x0605: 'PCMCIA bridge',
  0x0606: 'NUBUS bridge',
  0x0607: 'CARDBUS bridge',
  0x0608: 'RACEWAY bridge',
  0x0680: 'Bridge',
  0x0700: 'Serial port',
  0x0701: 'Parallel port',
  0x0800: 'Interrupt controller',
  0x0801: 'DMA controller',
  0x0802: 'Timer',
  0x0803: 'RTC',
  0x0900: 'Keyboard',
  0x0901: 'Pen',
  0x0902: 'Mouse',
  0x0a00: 'Dock station',
  0x0b00: 'i386 cpu',
  0x0c00: 'Firewire controller',
  0x0c01: 'Access bus controller',
  0x0c02: 'SSA controller',
  0x0c03: 'USB controller',
  0x0c04: 'Fibre channel controller',
  0x0c05: 'SMBus',
};

/** query-pci's PciDeviceInfo for one device (hw/pci/pci-qmp-cmds.c qmp_query_pci_device). */
export function pciDeviceInfo(d: PciDeviceState): object {
  const cls = d.class >> 8;
  const normal = (d.headerType & 0x7f) === 0;
  return {
    bus: 0,
    slot: d.slot,
    function: d.function,
    class_info: { ...(PCI_CLASS_DESC[cls] ? { desc: PCI_CLASS_DESC[cls] } : {}), class: cls },
    id: {
      device: d.device,
      vendor: d.vendor,
      ...(normal ? { subsystem: d.subsystem, 'subsystem-vendor': d.subsystemVendor } : {}),
    },
    ...(d.interruptPin ? { irq: d.interruptLine } : {}),
    irq_pin: d.interruptPin,
    qdev_id: d.id,
    // tsvmm's own (QEMU's x- convention): the device is behind the vIOMMU.
    ...(d.iommu ? { 'x-iommu': true } : {}),
    regions: d.bars.map((b) => ({
      bar: b.index,
      type: b.type === 'io' ? 'io' : 'memory',
      address: b.address ?? -1,
      size: b.size,
      ...(b.type === 'io' ? {} : { prefetch: b.prefetchable, mem_type_64: b.type === 'mem64' }),
    })),
  };
}
