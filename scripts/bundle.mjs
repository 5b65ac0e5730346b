// The installed CLI's one file: bundles the command line (dist/bin/cli/main.js and everything it
// can load) into dist/bin/tsvmm.bundle.cjs, then writes the V8 code cache bin/tsvmm.cts uses with
// it, which covers every function of the bundle (below).
// Runs after tsc (npm run build); see bin/tsvmm.cts for why.
import { build } from 'esbuild';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import v8 from 'node:v8';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'dist/bin/tsvmm.bundle.cjs');
const id = randomBytes(8).toString('hex');

// The bundle sits two levels under the root like every module that reads import.meta.url to find the
// root (dist/core/paths.js, dist/guest/index.js), so that one value serves them all; a module at
// another depth that reads it would get a wrong path, so the build refuses it.
const result = await build({
  entryPoints: [join(root, 'dist/bin/cli/main.js')],
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  outfile: out,
  // tinypool starts its workers from its own files. Every import() becomes a require(): code run by
  // vm.Script with a code cache has no dynamic import callback (and node's is experimental in 20);
  // node >= 20.19 require()s an ES module such as tinypool.
  external: ['tinypool'],
  supported: { 'dynamic-import': false },
  define: { 'import.meta.url': '__tsvmm_bundle_url' },
  banner: {
    js: `// tsvmm-bundle ${id}\nvar __tsvmm_bundle_url = require('node:url').pathToFileURL(__filename).href;`,
  },
  metafile: true,
  logLevel: 'warning',
});
if (/\bimport\(["'`]/.test(readFileSync(out, 'utf8'))) throw new Error(`${out} still has an import()`);
for (const input of Object.keys(result.metafile.inputs)) {
  const file = join(root, input);
  const depth = relative(root, file).split('/').length - 1;
  if (depth !== 2 && !input.includes('node_modules') && /import\.meta\.url/.test(readFileSync(file, 'utf8')))
    throw new Error(
      `${input} reads import.meta.url at depth ${depth}: in the bundle it would be wrong (use core/paths.js)`,
    );
}

// The code cache: the bundle compiled in this process with every function compiled, not only the
// top level (V8 compiles a function at its first call otherwise, and a launch calls hundreds that a
// build cannot run: the Machine needs KVM). V8 checks its flags against the cache's, so --no-lazy is
// on for that compile only. In the test host this took an edu launch from 1.11 to 0.96 s
// for 2 MiB more heap (the bytecode of every function).
const require = createRequire(import.meta.url);
const { loadBundle, CODE_CACHE } = require(join(root, 'dist/bin/tsvmm.cjs'));
delete process.env.TSVMM_NO_BUNDLE; // a user's switch for running tsvmm, not for building it
v8.setFlagsFromString('--no-lazy');
let loaded;
try {
  loaded = loadBundle(false);
} finally {
  v8.setFlagsFromString('--lazy');
}
if (!loaded || loaded.id !== id) throw new Error(`bundle ${out} did not load`);
await loaded.exports.loadAllCommands(); // every command's modules evaluate
writeFileSync(
  CODE_CACHE,
  Buffer.concat([Buffer.from(`// tsvmm-bundle ${id}\n`, 'latin1'), loaded.script.createCachedData()]),
);
const kib = (n) => `${Math.round(n / 1024)} KiB`;
console.log(
  `bundle: ${relative(root, out)} (${Object.keys(result.metafile.inputs).length} modules, ${kib(readFileSync(out).length)}), code cache ${kib(readFileSync(CODE_CACHE).length)}`,
);
