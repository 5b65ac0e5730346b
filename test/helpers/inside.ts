// The one door tests have into a machine's private parts, for what no interface shows: KVM's
// memslots and exit counts, VFIO's containers and groups, a device model's own state, guest RAM
// by host view. Every test that uses it says why in one line.
import type { Machine } from '../../machine/machine.js';

export function inside(m: Machine) {
  return {
    vm: m['vm'],
    vfio: m['vfio'],
    guestRam: m['guestRam'],
    pciBus: m['pciBus'],
    serial: m['serial'],
    e820: m['e820'],
    config: m['config'],
    devices: m['deviceManager'].devices,
  };
}
