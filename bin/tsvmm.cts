#!/usr/bin/env node
// The installed `tsvmm`: runs the command line from one bundled file (tsvmm.bundle.cjs, written by
// scripts/bundle.mjs at build time) compiled with the V8 code cache made beside it, so a launch reads
// two files and compiles nothing instead of resolving, reading and compiling each module (over a slow
// file system that was most of tsvmm's start-up: docs/startup.md). Without the bundle (a build
// that did not make it, or TSVMM_NO_BUNDLE=1) it runs the same code from the modules (bin/tsvmm.js).
// A code cache from another node or V8 is refused by V8 and goes unused.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import Module = require('node:module');
import vm = require('node:vm');

export interface LoadedBundle {
  exports: {
    runCli(argv: string[]): Promise<void>;
    loadAllCommands(): Promise<void>;
  };
  script: vm.Script;
  /** The build id on the bundle's first line; the cache file starts with the same one. */
  id: string;
  cache: 'accepted' | 'rejected' | 'absent';
}

export const BUNDLE = join(__dirname, 'tsvmm.bundle.cjs');
export const CODE_CACHE = `${BUNDLE}.cache`;
/** "// tsvmm-bundle <id>\n": scripts/bundle.mjs's banner; the cache file begins with the same line. */
const ID_LINE = /^\/\/ tsvmm-bundle (\S+)\n/;

/** The bundle compiled and evaluated (not run), or undefined if there is none to use. */
export function loadBundle(useCache = true): LoadedBundle | undefined {
  if (process.env.TSVMM_NO_BUNDLE) return undefined;
  let source: string;
  try {
    source = readFileSync(BUNDLE, 'utf8');
  } catch {
    return undefined;
  }
  const id = ID_LINE.exec(source)?.[1];
  if (!id) return undefined;
  // The cache is used only with the bundle it was made from: V8 itself checks only the length.
  let cachedData: Buffer | undefined;
  if (useCache) {
    try {
      const file = readFileSync(CODE_CACHE);
      const head = `// tsvmm-bundle ${id}\n`;
      if (file.subarray(0, head.length).toString('latin1') === head) cachedData = file.subarray(head.length);
    } catch {
      // no cache: compile from source
    }
  }
  const script = new vm.Script(Module.wrap(source), {
    filename: BUNDLE,
    cachedData,
  });
  const m = new Module(BUNDLE, module);
  m.filename = BUNDLE;
  m.paths = (Module as unknown as { _nodeModulePaths(dir: string): string[] })._nodeModulePaths(dirname(BUNDLE));
  const fn = script.runInThisContext() as (...args: unknown[]) => void;
  fn.call(m.exports, m.exports, Module.createRequire(BUNDLE), m, BUNDLE, dirname(BUNDLE));
  const cache = cachedData === undefined ? 'absent' : script.cachedDataRejected ? 'rejected' : 'accepted';
  return { exports: m.exports as LoadedBundle['exports'], script, id, cache };
}

if (require.main === module) {
  // First: SIGUSR1 must not open Node's inspector while the code loads (bin/cli/signals.ts,
  // refuseInspectorSignal, which finds this one by the symbol and keeps it).
  (globalThis as { [k: symbol]: unknown })[Symbol.for('tsvmm.noInspector')] = true;
  let told = false;
  process.on('SIGUSR1', () => {
    if (!told)
      process.stderr.write('tsvmm: SIGUSR1 ignored: tsvmm starts no inspector (for one: node --inspect <tsvmm> ...)\n');
    told = true;
  });
  const argv = process.argv.slice(2);
  // run: a terminating signal while the code loads is kept for run's own handler, which takes it
  // over (bin/cli/signals.ts, catchSignals).
  if (argv[0] === 'run') {
    const early: { pending?: NodeJS.Signals; listener: (s: NodeJS.Signals) => void } = {
      listener: (sig) => (early.pending ??= sig),
    };
    for (const s of ['SIGHUP', 'SIGINT', 'SIGTERM']) process.on(s, early.listener);
    (globalThis as { [k: symbol]: unknown })[Symbol.for('tsvmm.earlySignals')] = early;
  }
  const b = loadBundle();
  if (process.env.TSVMM_LOADER_DEBUG)
    process.stderr.write(`tsvmm: loader: ${b ? `bundle ${b.id}, code cache ${b.cache}` : 'modules'}\n`);
  if (b) void b.exports.runCli(argv);
  else void import('./tsvmm.js');
}
