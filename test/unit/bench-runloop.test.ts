// The run-loop rows' table (bench/runloop.ts renderRunloop): medians, the max-of-20 statistic, ratios.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { renderRunloop, type RunloopResults } from '../../bench/runloop.js';

test('run-loop table: medians with ranges, tsvmm ÷ each other column, max of 20 per launch', () => {
  const qmp = (base: number) => Array.from({ length: 20 }, (_, i) => base + i * 0.1);
  const r: RunloopResults = {
    date: '2026-11-27T12:00:00Z',
    where: 'here',
    rounds: 2,
    phaseMs: 1000,
    errors: ['qemu ap round 2: exit 1'],
    samples: {
      tsvmm: { pio: [100, 300], qmp: [...qmp(1), ...qmp(3)], sigint: [40, 60] },
      qemu: { pio: [200, 200], qmp: qmp(0.5) },
      null: { pio: [400, 400] },
    },
  };
  const md = renderRunloop(r);
  const row = (label: string) => md.split('\n').find((l) => l.startsWith(`| ${label}`))!;
  assert.match(
    row('Trapped port-I/O round trips'),
    /\| 200 \(100–300\) \| 200 \(200–200\) \| 400 \(400–400\) \| 1\.00× \| 0\.50× \|$/,
  );
  // Launch maxima: 2.9 and 4.9 → median 3.9; QEMU's one launch: 2.4.
  assert.match(
    row('QMP query-status under exit load, max of 20'),
    /\| 3\.90 \(2\.90–4\.90\) \| 2\.40 \(2\.40–2\.40\) \| – \| 1\.63× \| – \|$/,
  );
  assert.match(row('Trapped port I/O from an AP'), /\| – \| – \| – \| – \| – \|$/);
  assert.match(md, /- qemu ap round 2: exit 1/);
});
