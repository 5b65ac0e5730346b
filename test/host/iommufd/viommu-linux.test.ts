// Runs INSIDE the test host (the iommufd kernel): assigned devices behind tsvmm's virtio-iommu in a Linux guest (the
// Debian kernel, from the cache the test host reads), on the iommufd backend: an IOAS per guest domain (the
// scenarios: test/helpers/viommu-linux.ts).
import { test } from 'node:test';
import {
  bridgePairBehindViommu,
  guestVfioBehindViommu,
  hotplugBehindViommu,
  nvmeBehindViommu,
} from '../../helpers/viommu-linux.js';

test(
  'iommufd: nvme behind the virtio-iommu (strict): blocks read as written from outside, the guest groups nvme under the virtio-iommu, maps and unmaps reach the host; system_reset tears every domain down',
  { timeout: 420_000 },
  () => nvmeBehindViommu('strict', 'iommufd'),
);

test(
  "iommufd: the guest's own VFIO behind the virtio-iommu: vfio-edu's DMA both ways with MSI; an unmapped IOVA is stopped by the host IOMMU",
  { timeout: 420_000 },
  () => guestVfioBehindViommu('iommufd'),
);

test(
  'iommufd: hot-plug behind the virtio-iommu: nvme added by device_add iommu=on is translated and reads right; device_del releases it',
  { timeout: 420_000 },
  () => hotplugBehindViommu('iommufd'),
);

test(
  "iommufd: the bridge pair (one host IOMMU group) behind the virtio-iommu: one guest slot, one guest group, one domain; the guest's VFIO moves the group one function at a time, vfio-edu DMAs both ways, the host group ends whole",
  { timeout: 420_000 },
  () => bridgePairBehindViommu('iommufd'),
);
