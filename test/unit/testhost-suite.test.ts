// `tsvmm testhost test` on a loaded machine: each step's limit stretches with the load, and a step cut off at its
// limit still says what passed, what failed and which test was running — from the progress log that a second
// node --test reporter (testhost/progress-reporter.ts) writes as the tests run. Also which outer paths the test
// host hides (and so shares separately: `testhost run`'s working directory under /tmp). A host whose kernel stops
// (no heartbeat from its /init) is told from a command that merely hangs, and its CPU read through QEMU's monitor.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runStep, stepSummary, suiteTimeoutMs, SUITE_BASE_MS } from '../../testhost/cli.js';
import { FROZEN_MS, Heartbeat, hiddenInHost, KICK_MS, type TestHostResult } from '../../testhost/index.js';
import { monitorCommands } from '../../testhost/qemu.js';
import { progressSummary, suiteArgs } from '../../testhost/progress.js';

test('suite limits: the base on an idle machine, stretched with the load per CPU, at most twice', () => {
  assert.equal(suiteTimeoutMs(SUITE_BASE_MS, 0.2, 2), SUITE_BASE_MS);
  assert.equal(suiteTimeoutMs(SUITE_BASE_MS, 2, 2), SUITE_BASE_MS);
  assert.equal(suiteTimeoutMs(SUITE_BASE_MS, 3, 2), 1.5 * SUITE_BASE_MS);
  assert.equal(suiteTimeoutMs(SUITE_BASE_MS, 11, 2), 2 * SUITE_BASE_MS);
  assert.equal(suiteTimeoutMs(SUITE_BASE_MS, 1, 0), SUITE_BASE_MS, 'no CPU count: no division by zero');
});

/** Runs node --test with the TAP and progress reporters on `files` in `dir`; kills it once `killWhen` is in the log. */
function runSuite(dir: string, files: string[], killWhen?: string): Promise<{ stdout: string; progress: string }> {
  const progressPath = join(dir, 'progress.jsonl');
  // Not as a child of this test run (NODE_TEST_CONTEXT would make it report to us instead of to its reporters).
  const { NODE_TEST_CONTEXT: _, ...env } = process.env;
  const child = spawn(process.execPath, suiteArgs(files), {
    cwd: dir,
    env: { ...env, TSVMM_TEST_PROGRESS: progressPath },
    stdio: ['ignore', 'pipe', 'ignore'],
    detached: true, // its own process group: killed with the test file's process it runs (which never ends)
  });
  let stdout = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  const poll = setInterval(() => {
    if (killWhen && existsSync(progressPath) && readFileSync(progressPath, 'utf8').includes(killWhen)) {
      clearInterval(poll);
      process.kill(-child.pid!, 'SIGKILL'); // as the test host's runner kills a suite at its limit
    }
  }, 50);
  return new Promise((resolve) =>
    child.on('close', () => {
      clearInterval(poll);
      resolve({ stdout, progress: existsSync(progressPath) ? readFileSync(progressPath, 'utf8') : '' });
    }),
  );
}

test('a suite killed at its limit: what passed, what failed, and which test was running', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-progress-'));
  try {
    writeFileSync(
      join(dir, 'a.test.mjs'),
      "import { test, describe } from 'node:test';\n" +
        "test('first', () => {});\n" +
        "describe('group', () => { test('inside', () => {}); test('broken', () => { throw new Error('no'); }); });\n",
    );
    writeFileSync(
      join(dir, 'b.test.mjs'),
      "import { test } from 'node:test';\n" +
        "test('outer', async (t) => { await t.test('quick', () => {}); });\n" +
        "test('never ends', () => new Promise(() => setInterval(() => {}, 1000)));\n",
    );
    const r = await runSuite(dir, ['a.test.mjs', 'b.test.mjs'], '"name":"never ends"');
    assert.doesNotMatch(r.stdout, /^# tests \d+/m, 'killed: the runner printed no summary');
    const p = progressSummary(r.progress);
    assert.equal(p.pass, 4, r.progress); // first, inside, quick, outer
    assert.equal(p.fail, 1);
    assert.match(p.failed[0]!, /a\.test\.mjs › broken$/);
    assert.match(p.running!, /b\.test\.mjs › never ends$/);

    const s = stepSummary({
      exitCode: 124,
      timedOut: true,
      error: 'the command did not finish within its time limit (885 s); killed',
      stdout: r.stdout,
      progress: r.progress,
    });
    assert.equal(s.ok, false);
    assert.equal(s.pass, 4);
    assert.equal(s.fail, 1);
    assert.match(
      s.why,
      /^the command did not finish within its time limit .*; counts from the progress log.*; running when it stopped: .*b\.test\.mjs › never ends; failed: .*broken/,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a step that finished: the runner's own counts; without any test: no tests ran", async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-progress-'));
  try {
    writeFileSync(
      join(dir, 'c.test.mjs'),
      "import { test } from 'node:test';\ntest('one', () => {});\ntest('two', () => {});\n",
    );
    const r = await runSuite(dir, ['c.test.mjs']);
    assert.deepEqual(stepSummary({ exitCode: 0, timedOut: false, stdout: r.stdout, progress: r.progress }), {
      pass: 2,
      fail: 0,
      ok: true,
      why: 'ok',
    });
    assert.deepEqual(progressSummary(r.progress), { pass: 2, fail: 0, failed: [] });
    const none = stepSummary({ exitCode: 125, timedOut: false, stdout: '', progress: '' });
    assert.equal(none.ok, false);
    assert.match(none.why, /no tests ran/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('paths the test host hides behind its own mounts, which runInTestHost shares separately', () => {
  for (const p of ['/tmp', '/tmp/x/project', '/run/user/0/p', '/dev/shm/p']) assert.equal(hiddenInHost(p), true, p);
  for (const p of ['/', '/root/project', '/home/u/p', '/tmpfoo', '/work/tsvmm'])
    assert.equal(hiddenInHost(p), false, p);
});

test('the heartbeat: a change restarts the count; unchanged, a kick at most every kick limit, then frozen', () => {
  const h = new Heartbeat(1000);
  assert.deepEqual(h.check('', 1000 + KICK_MS - 1), { state: 'ok', seconds: 30 });
  assert.equal(h.check('', 1000 + KICK_MS).state, 'kick', 'nothing written yet after the kick limit');
  assert.deepEqual(h.check('', 1000 + FROZEN_MS + 1000), { state: 'frozen', seconds: 121 });
  const b = new Heartbeat(0, 60_000, 20_000);
  assert.equal(b.check('5.01 4.00', 5000).state, 'ok');
  assert.equal(b.check('10.02 9.00', 10_000).state, 'ok');
  assert.equal(b.check('10.02 9.00', 29_000).state, 'ok', '19 s unchanged');
  assert.deepEqual(b.check('10.02 9.00', 31_000), { state: 'kick', seconds: 21 });
  assert.equal(b.check('10.02 9.00', 36_000).state, 'ok', 'kicked 5 s ago');
  assert.equal(b.check('10.02 9.00', 51_000).state, 'kick', 'again after the kick limit');
  assert.equal(b.check('61.00 50.00', 52_000).state, 'ok', 'a beat again');
  assert.equal(b.check('61.00 50.00', 71_000).state, 'ok', '19 s unchanged, and kicked 20 s ago');
  assert.equal(b.check('61.00 50.00', 73_000).state, 'kick');
  assert.deepEqual(b.check('61.00 50.00', 113_000), { state: 'frozen', seconds: 61 });
});

test("monitorCommands: each command's answer without the prompt and the echo; '' without a socket", async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-monitor-'));
  // A stand-in for QEMU's human monitor: a banner, a prompt, the echoed command, its answer.
  const server = createServer((c) => {
    c.write("QEMU 7.2.22 monitor - type 'help' for more information\r\n(qemu) ");
    c.setEncoding('latin1').on('data', (d: string) => {
      for (const cmd of d.split('\n').filter(Boolean))
        c.write(
          `${cmd}\r\n${cmd === 'info registers' ? 'RAX=0000000000000000 RBX=1\r\nRIP=ffffffff81000000 RFL=00000246\r\n' : ''}(qemu) `,
        );
    });
  });
  try {
    const sock = join(dir, 'monitor.sock');
    server.listen(sock);
    await once(server, 'listening');
    const out = await monitorCommands(sock, ['info registers'], 3000);
    assert.match(out, /^RIP=ffffffff81000000 RFL=00000246$/m, out);
    assert.doesNotMatch(out, /\(qemu\)|^QEMU /m, out);
    assert.equal(await monitorCommands(join(dir, 'none.sock'), ['info registers']), '');
  } finally {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a step whose host froze runs once more, and only then: a failed step does not, a second freeze stands', async () => {
  const result = (o: Partial<TestHostResult>): TestHostResult => ({
    exitCode: 0,
    stdout: '',
    stderr: '',
    consoleLog: '',
    timedOut: false,
    devices: {},
    kernel: { kind: 'iommufd', version: 'test' },
    timings: [],
    ...o,
  });
  const running =
    JSON.stringify({ type: 'test:start', nesting: 0, name: 'live migration', file: '/p/dist/test/host/m.test.js' }) +
    '\n';
  const runs = (...rs: TestHostResult[]) => {
    const calls = { n: 0, froze: [] as string[] };
    return {
      calls,
      run: async () => rs[calls.n++]!,
      onFroze: (_: TestHostResult, during: string) => void calls.froze.push(during),
    };
  };
  const failed = runs(result({ exitCode: 1 }));
  assert.deepEqual(await runStep(failed.run, failed.onFroze), { r: result({ exitCode: 1 }) });
  assert.equal(failed.calls.n, 1, 'a failed step is not run again');

  const thenOk = runs(result({ exitCode: 125, frozen: true, progress: running }), result({ exitCode: 0 }));
  const a = await runStep(thenOk.run, thenOk.onFroze);
  assert.equal(thenOk.calls.n, 2);
  assert.equal(a.r.exitCode, 0);
  assert.equal(a.froze, 'dist/test/host/m.test.js › live migration');
  assert.deepEqual(thenOk.calls.froze, [a.froze]);

  const twice = runs(result({ exitCode: 125, frozen: true }), result({ exitCode: 125, frozen: true }), result({}));
  const b = await runStep(twice.run, twice.onFroze);
  assert.equal(twice.calls.n, 2, 'no third run');
  assert.equal(b.r.frozen, true);
  assert.equal(stepSummary(b.r).ok, false);
});
