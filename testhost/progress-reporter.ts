// A node --test reporter (--test-reporter=dist/testhost/progress-reporter.js) that appends each test's queueing,
// start and result to $TSVMM_TEST_PROGRESS as a JSON line, synchronously: what a suite did before it was killed at
// its time limit stays on disk (progress.ts reads it). It yields nothing: another reporter prints the results.
import { appendFileSync } from 'node:fs';
import type { ProgressEvent } from './progress.js';

interface TestEvent {
  type: string;
  data: { name: string; nesting: number; file?: string; details?: { type?: string } };
}

export default async function* progressReporter(source: AsyncIterable<TestEvent>): AsyncGenerator<string> {
  const path = process.env.TSVMM_TEST_PROGRESS;
  for await (const ev of source) {
    if (!path || !['test:dequeue', 'test:start', 'test:pass', 'test:fail'].includes(ev.type)) continue;
    const e: ProgressEvent = {
      type: ev.type as ProgressEvent['type'],
      name: ev.data.name,
      nesting: ev.data.nesting,
      ...(ev.data.file !== undefined ? { file: ev.data.file } : {}),
      ...(ev.data.details?.type ? { kind: ev.data.details.type } : {}),
    };
    appendFileSync(path, JSON.stringify(e) + '\n');
  }
  yield '';
}
