// The vIOMMU's host side on the iommufd backend (an IOAS per domain, devices moved by replace) against the real kernel:
// guest domains as DMA address spaces, edu moved between them, the group rule on the bridge pair (a split refused, a move one function at a time followed).
import { test } from 'node:test';
import { hostDevice } from '../../helpers/testhost-env.js';
import { eduDomainsScenario, bridgeGroupScenario, vfioWiringScenario } from '../../helpers/viommu-edu.js';

test('iommufd: two domains map one IOVA to two buffers; edu DMA follows its domain, faults when unmapped, bypass is 1:1', () =>
  eduDomainsScenario('iommufd', hostDevice('edu')));

test('iommufd: the bridge pair (one IOMMU group) cannot be split across two domains with mappings, and moves one function at a time', () =>
  bridgeGroupScenario('iommufd', hostDevice('bridge-edu'), hostDevice('bridge-testdev')));

test("iommufd: through Vfio (the machine's wiring): open behind the vIOMMU, DMA through a domain, release, nothing left", () =>
  vfioWiringScenario('iommufd', hostDevice('edu'), hostDevice('bridge-edu'), hostDevice('bridge-testdev')));
