// An MSI message as PCI defines it (address and data the device writes to raise an interrupt):
// one type for the capabilities (hw/msi.ts, hw/msix.ts), the interrupt groups and KVM's routes.
export interface MsiMessage {
  addressLo: number;
  addressHi: number;
  data: number;
}
