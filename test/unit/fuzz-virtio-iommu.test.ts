// The virtio-iommu fuzzer, CI-sized (`npm run fuzz` runs 10^6 requests): see
// test/helpers/fuzz-virtio-iommu.ts for what it does and checks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fuzzVirtioIommu } from '../helpers/fuzz-virtio-iommu.js';

const seed = Number(process.env.TSVMM_FUZZ_SEED ?? Date.now() % 1000000);

test(`virtio-iommu fuzz: 30000 random requests and descriptor tables (seed ${seed}) throw nothing, keep the host side in step, leak no mapping`, () => {
  const r = fuzzVirtioIommu({ seed, count: 30000 });
  assert.deepEqual(r.violations, [], `replay with TSVMM_FUZZ_SEED=${seed}`);
  assert.equal(r.requests, 30000);
  assert.ok(r.resets > 10, 'resets happened');
  assert.ok(r.needsReset > 10, 'broken chains were met');
  assert.ok(r.maxMappings > 3, 'mappings were made');
});
