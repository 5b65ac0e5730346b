// Test progress that survives a time limit: `tsvmm testhost test` runs node --test inside the test host with a
// second reporter (progress-reporter.ts) that appends one JSON line per test event to the run dir at once. A suite
// cut off by its limit has no summary ("# pass N"), but this log still says what passed, what failed and which test
// was running.
import { join } from 'node:path';
import { projectRoot } from '../core/paths.js';

/**
 * node's test runner over `files`, one at a time: TAP on stdout, and each test's start and end on
 * stderr through progress-reporter.ts as it happens (so a run cut off at its limit still says what
 * passed and what was running).
 */
export function suiteArgs(files: readonly string[]): string[] {
  return [
    '--test',
    '--test-concurrency=1',
    '--test-reporter=tap',
    '--test-reporter-destination=stdout',
    `--test-reporter=${join(projectRoot, 'dist/testhost/progress-reporter.js')}`,
    '--test-reporter-destination=stderr',
    ...files,
  ];
}

/** One line of the progress log. */
export interface ProgressEvent {
  type: 'test:dequeue' | 'test:start' | 'test:pass' | 'test:fail';
  name: string;
  nesting: number;
  file?: string;
  /** details.type: 'suite' for a describe() block. */
  kind?: string;
}

export interface ProgressSummary {
  pass: number;
  fail: number;
  failed: string[];
  /** The innermost test queued or started and not finished, "file › outer › inner" (undefined when none is). */
  running?: string;
}

const label = (e: ProgressEvent) => (e.file ? `${e.file.replace(/^.*\/dist\//, 'dist/')} › ` : '') + e.name;

/** Sums up a progress log (lines that do not parse are ignored: the last one may have been cut off mid-write). */
export function progressSummary(log: string): ProgressSummary {
  const s: ProgressSummary = { pass: 0, fail: 0, failed: [] };
  const open: ProgressEvent[] = [];
  for (const line of log.split('\n')) {
    let e: ProgressEvent;
    try {
      e = JSON.parse(line) as ProgressEvent;
    } catch {
      continue;
    }
    if (e.file !== undefined && e.name === e.file) continue; // the per-file wrapper
    // A test at nesting n closes whatever was open at n or deeper.
    while (open.length && open[open.length - 1]!.nesting >= e.nesting) open.pop();
    if (e.type === 'test:dequeue' || e.type === 'test:start') {
      open.push(e);
      continue;
    }
    if (e.kind === 'suite') continue;
    if (e.type === 'test:pass') s.pass++;
    else {
      s.fail++;
      s.failed.push(label(e));
    }
  }
  if (open.length)
    s.running =
      label(open[0]!) +
      open
        .slice(1)
        .map((e) => ` › ${e.name}`)
        .join('');
  return s;
}
