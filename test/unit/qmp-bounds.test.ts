// What a client's big input costs the process that serves it, measured in a process of its own
// (test/helpers/qmp-child.ts): memory comes back after the message, and the parse runs in slices
// that let the event loop (vCPU 0's thread in tsvmm run) turn.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectRoot } from '../../core/paths.js';
import { QmpTestClient } from '../helpers/qmp.js';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-qmpb-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

async function child(): Promise<{ p: ChildProcess; path: string }> {
  const path = join(dir, `c${Math.random()}.sock`);
  const p = spawn(process.execPath, ['--expose-gc', join(projectRoot, 'dist/test/helpers/qmp-child.js'), path], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  await once(p.stdout!, 'data');
  return { p, path };
}

async function session(path: string): Promise<QmpTestClient> {
  const c = await QmpTestClient.connect(path);
  await c.next();
  assert.deepEqual(await c.call('qmp_capabilities'), { return: {} });
  return c;
}

const rss = async (c: QmpTestClient) => ((await c.call('x-rss')).return as { rss: number }).rss;

/** Writes a big input and waits until the server has taken all of it. */
async function writeAll(c: QmpTestClient, data: Buffer): Promise<void> {
  if (!c.s.write(data)) await once(c.s, 'drain');
}

test('memory: 10 MB lines (one string, or 5 Mi tokens over the limit) RSS back within 10% of its start after each round', async () => {
  const { p, path } = await child();
  try {
    const c = await session(path);
    // Warm-up: the slicing code compiled, a message over several slices parsed once.
    assert.equal(
      ((await c.call('query-name', { w: 'w'.repeat(300_000) })).error as { desc: string }).desc,
      "Parameter 'w' is unexpected",
    );
    const cold = await rss(c);
    const lines = async (x: QmpTestClient): Promise<QmpTestClient> => {
      await writeAll(x, Buffer.from(`{"execute":"query-name","arguments":{"big":"${'x'.repeat(10 * 2 ** 20)}"}}`));
      assert.deepEqual(await x.reply(), { error: { class: 'GenericError', desc: "Parameter 'big' is unexpected" } });
      x.s.on('error', () => {}); // the server closes the session before it has read it all (EPIPE)
      x.s.write(Buffer.from('[' + '1,'.repeat(5 * 2 ** 20) + '1]'));
      assert.deepEqual(await x.reply(), { error: { class: 'GenericError', desc: 'JSON token count limit exceeded' } });
      await new Promise((r) => x.s.once('close', r));
      return session(path);
    };
    // The parser's memory is returned whole when a message ends, and the session reads into one
    // buffer of its own: RSS after each round is back within 10% of where it started (5 Mi tokens
    // used to take the process over a GiB, and it stayed there).
    let x = c;
    const after: number[] = [];
    for (let round = 0; round < 3; round++) {
      x = await lines(x);
      after.push(await rss(x));
      assert.ok(
        after.at(-1)! <= cold * 1.1,
        `RSS ${mib(cold)} at the start, ${after.map(mib).join(', ')} after each round`,
      );
    }
    x.s.destroy();
  } finally {
    p.kill();
  }
});

const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;

test('the event loop turns while a 2 MB message is parsed (no one gap covers the parse)', async () => {
  const { p, path } = await child();
  try {
    const c = await session(path);
    const members = [];
    for (let i = 0; members.length * 12 < 2 * 2 ** 20; i++) members.push(`"k${i}":${i}`);
    const msg = Buffer.from(`{"execute":"query-name","arguments":{${members.join(',')}}}`);
    await c.call('x-loop'); // resets its counters
    const t0 = performance.now();
    await writeAll(c, msg);
    assert.deepEqual(await c.reply(), { error: { class: 'GenericError', desc: "Parameter 'k0' is unexpected" } });
    const took = performance.now() - t0;
    const loop = (await c.call('x-loop')).return as { maxGap: number; ticks: number };
    // Relative, not a timing: on a busy machine every turn may be slow, but a parse done in one
    // turn is one gap as long as the whole parse and a handful of ticks.
    assert.ok(loop.ticks >= 20, `${loop.ticks} ticks of a 1 ms timer during a ${took.toFixed(0)} ms parse`);
    assert.ok(loop.maxGap < took / 2, `longest gap ${loop.maxGap.toFixed(0)} ms of a ${took.toFixed(0)} ms parse`);
    c.s.destroy();
  } finally {
    p.kill();
  }
});
