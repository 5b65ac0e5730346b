import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { loadConfig } from '../../machine/config/config.js';
import { projectRoot } from '../../core/paths.js';

// The samples in configs/ are documentation: each must stay valid against the schema.
const dir = join(projectRoot, 'configs');
for (const f of readdirSync(dir).filter((f) => f.endsWith('.json') && f !== 'vm.schema.json')) {
  test(`configs/${f} is valid`, () => {
    const c = loadConfig(join(dir, f));
    assert.ok(c.memoryBytes > 0);
  });
}
