// The vIOMMU's host side on the legacy backend (type1 containers) against the real kernel:
// guest domains as DMA address spaces, edu moved between them, the group rule on the
// bridge pair (a split refused, a move one function at a time followed).
import { test } from 'node:test';
import { hostDevice } from '../../helpers/testhost-env.js';
import {
  eduDomainsScenario,
  bridgeGroupScenario,
  vfioWiringScenario,
  dmaLimitScenario,
} from '../../helpers/viommu-edu.js';

test('legacy: two domains map one IOVA to two buffers; edu DMA follows its domain, faults when unmapped, bypass is 1:1', () =>
  eduDomainsScenario('legacy', hostDevice('edu')));

test('legacy: the bridge pair (one IOMMU group) cannot be split across two domains with mappings, and moves one function at a time', () =>
  bridgeGroupScenario('legacy', hostDevice('bridge-edu'), hostDevice('bridge-testdev')));

test("legacy: through Vfio (the machine's wiring): open behind the vIOMMU, DMA through a domain, release, nothing left", () =>
  vfioWiringScenario('legacy', hostDevice('edu'), hostDevice('bridge-edu'), hostDevice('bridge-testdev')));

test("legacy: type1's DMA-entry limit is a refusal naming it, not a crash", () => dmaLimitScenario(hostDevice('edu')));
