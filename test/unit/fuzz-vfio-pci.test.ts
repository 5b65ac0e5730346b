// The in-process vfio-pci fuzzer, CI-sized (`npm run fuzz` runs it long): see
// test/helpers/fuzz-vfio-pci.ts for what it does and checks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fuzzVfioPci } from '../helpers/fuzz-vfio-pci.js';

const seed = Number(process.env.TSVMM_FUZZ_SEED ?? Date.now() % 1000000);

test(`vfio-pci fuzz: 1000000 random accesses (seed ${seed}) keep tsvmm and the device in step, throw nothing, leak nothing`, () => {
  const r = fuzzVfioPci({ seed, count: 1000000, boardEvery: 50000 });
  assert.deepEqual(r.violations, [], `replay with TSVMM_FUZZ_SEED=${seed}`);
  assert.equal(r.accesses, 1000000);
  assert.ok(r.boards >= 10);
});
