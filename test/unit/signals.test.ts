// bin/cli/signals.ts: a terminating signal that reached the installed bin/tsvmm.cts while the code
// was loading is taken over by run's handler (and the loader's listener goes), not lost.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { catchSignals, onSignal, releaseSignals } from '../../bin/cli/signals.js';

test('catchSignals takes over the loader’s early listener and the signal it kept', () => {
  const key = Symbol.for('tsvmm.earlySignals');
  const early = { pending: 'SIGTERM', listener: () => {} };
  for (const s of ['SIGHUP', 'SIGINT', 'SIGTERM']) process.on(s, early.listener);
  (globalThis as { [k: symbol]: unknown })[key] = early;
  try {
    catchSignals();
    for (const s of ['SIGHUP', 'SIGINT', 'SIGTERM'] as const)
      assert.equal(process.listeners(s).includes(early.listener), false, `${s}: the loader's listener is gone`);
    assert.equal((globalThis as { [k: symbol]: unknown })[key], undefined);
    assert.equal(
      onSignal(() => {}),
      'SIGTERM',
      'the early signal is the pending one',
    );
  } finally {
    releaseSignals();
    for (const s of ['SIGHUP', 'SIGINT', 'SIGTERM']) process.off(s, early.listener);
  }
});
