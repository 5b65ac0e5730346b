// The typed constant list (core/native-constants.ts) and the addon agree: every name the type
// promises is exported by native/*.cc, and the addon exports nothing the type does not name.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../core/native.js';
import { NATIVE_CONSTANT_NAMES } from '../../core/native-constants.js';

test('native constants: the typed names are exactly the addon exports, each a number', () => {
  const exported = native().constants as unknown as Record<string, unknown>;
  assert.deepEqual(Object.keys(exported).sort(), [...NATIVE_CONSTANT_NAMES].sort());
  for (const name of NATIVE_CONSTANT_NAMES) assert.equal(typeof exported[name], 'number', name);
});
