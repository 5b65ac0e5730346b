// The installed CLI's one file: bundles the command line (dist/bin/cli/main.js and everything it
// can load) into dist/bin/tsvmm.bundle.cjs, then writes the V8 code cache bin/tsvmm.cts uses with
// it, made after loading every command's modules and checking the sample configs (so it covers
// their compile, not just the bundle's top level).
// Runs after tsc (npm run build); see bin/tsvmm.cts for why.
import { build } from 'esbuild';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
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

// The code cache: made in this process from the bundle's compile plus every command's module loading.
const require = createRequire(import.meta.url);
const { loadBundle, CODE_CACHE } = require(join(root, 'dist/bin/tsvmm.cjs'));
const loaded = loadBundle(false);
if (!loaded || loaded.id !== id) throw new Error(`bundle ${out} did not load`);
await loaded.exports.loadAllCommands();
// And what a launch runs before it needs KVM: parsing the command line and checking a config (the
// samples; on this machine they may fail, e.g. no such host device, which still runs the checks).
const write = [process.stdout.write, process.stderr.write];
process.stdout.write = process.stderr.write = () => true;
try {
  for (const sample of ['demo.json', 'edu-vfio.json', 'linux/linux-nvme.json'])
    await loaded.exports.main(['validate', join(root, 'configs', sample)]).catch(() => {});
} finally {
  [process.stdout.write, process.stderr.write] = write;
  process.exitCode = undefined;
}
writeFileSync(
  CODE_CACHE,
  Buffer.concat([Buffer.from(`// tsvmm-bundle ${id}\n`, 'latin1'), loaded.script.createCachedData()]),
);
const kib = (n) => `${Math.round(n / 1024)} KiB`;
console.log(
  `bundle: ${relative(root, out)} (${Object.keys(result.metafile.inputs).length} modules, ${kib(readFileSync(out).length)}), code cache ${kib(readFileSync(CODE_CACHE).length)}`,
);
