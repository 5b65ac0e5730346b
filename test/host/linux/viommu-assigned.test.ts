// Runs INSIDE the test host (Debian kernel: the legacy backend): assigned devices behind tsvmm's virtio-iommu in a
// Linux guest (the scenarios: test/helpers/viommu-linux.ts).
import { test } from 'node:test';
import {
  bridgePairBehindViommu,
  e1000eBehindViommu,
  guestVfioBehindViommu,
  hotplugBehindViommu,
  nvmeBehindViommu,
} from '../../helpers/viommu-linux.js';

for (const mode of ['strict', 'lazy'] as const)
  test(
    `legacy: nvme behind the virtio-iommu (${mode}): blocks read as written from outside, the guest groups nvme under the virtio-iommu, maps and unmaps reach the host; system_reset tears every domain down`,
    { timeout: 420_000 },
    () => nvmeBehindViommu(mode, 'legacy'),
  );

test(
  "legacy: the guest's own VFIO behind the virtio-iommu: vfio-edu maps a buffer, edu DMAs both ways with MSI; a DMA to an unmapped IOVA is stopped by the host IOMMU, the buffer unchanged, tsvmm running",
  { timeout: 420_000 },
  () => guestVfioBehindViommu('legacy'),
);

test(
  'legacy: hot-plug behind the virtio-iommu: nvme added by device_add iommu=on into a running guest is translated and reads right; device_del releases its pins and fds',
  { timeout: 420_000 },
  () => hotplugBehindViommu('legacy'),
);

test(
  "legacy: e1000e behind the virtio-iommu: DHCP from the test host's user network and a ping of its server",
  { timeout: 420_000 },
  () => e1000eBehindViommu('legacy'),
);

test(
  "legacy: the bridge pair (one host IOMMU group) behind the virtio-iommu: one guest slot, one guest group, one domain; the guest's VFIO moves the group one function at a time, vfio-edu DMAs both ways, the host group ends whole",
  { timeout: 420_000 },
  () => bridgePairBehindViommu('legacy'),
);
