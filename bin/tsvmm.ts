#!/usr/bin/env node
// tsvmm's command line from the compiled modules, one file per module (the installed `tsvmm` is
// bin/tsvmm.cts, which runs the same code from one bundled file).
import { runCli } from './cli/main.js';

await runCli(process.argv.slice(2));
