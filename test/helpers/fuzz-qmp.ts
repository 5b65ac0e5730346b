// QMP fuzzer: seeded random client sessions against a QMP socket served by another process (tsvmm
// run, or test/helpers/qmp-child.ts), then checks that the server lost nothing:
//   - it still greets and answers (query-name; query-status when the target is a VM, which runs);
//   - its RSS is back within 10% of where it was after the warm-up (a tenth of the sessions; after
//     garbage collection: `rss` says how the target measures it);
//   - it holds no more fds than before.
// A session is one of: connect and close at a random byte of a valid conversation (the greeting
// read or not); random bytes; valid commands mutated (bytes flipped, inserted, cut, repeated);
// several clients at once (one served, the others waiting, closed in random order); rarely, a
// huge input (a 10 MB string, 3 Mi tokens, deep nesting).
import { createConnection, type Socket } from 'node:net';
import { readdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

export interface QmpFuzzTarget {
  path: string;
  pid: number;
  /** The target's RSS in bytes, measured after garbage collection. */
  rss(): Promise<number>;
  /** Commands it is safe to send at random (not quit). */
  commands: string[];
  /** How many more times to read the RSS at the end while it is above the bound (see rss). */
  settleReads?: number;
  /** A VM: query-status must say running at the end (a fuzzed stop is undone first). */
  vm: boolean;
}

export interface QmpFuzzResult {
  sessions: number;
  bytes: number;
  replies: number;
  huge: number;
  rssStart: number;
  rssEnd: number;
  fdsStart: number;
  fdsEnd: number;
  ms: number;
  violations: string[];
}

/** mulberry32: a seed replays exactly. */
function rng(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n: number) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) / 4294967296) * n;
  };
}

const fds = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;

/** A client that counts what it receives and never throws. */
function connect(path: string, onData: (n: number) => void): Promise<Socket | undefined> {
  return new Promise((resolve) => {
    const s = createConnection(path);
    s.on('error', () => resolve(undefined));
    s.on('connect', () => resolve(s));
    s.on('data', (d: Buffer) => {
      let n = 0;
      for (const b of d) if (b === 0x0a) n++;
      onData(n);
    });
  });
}

/** A command session over one socket: greeting, negotiation, one command; its reply. */
export async function ask(path: string, execute: string, timeoutMs = 20000): Promise<Record<string, unknown>> {
  const s = createConnection(path);
  try {
    let buf = '';
    const lines: string[] = [];
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      buf += d;
      for (let i; (i = buf.indexOf('\n')) >= 0; buf = buf.slice(i + 1)) lines.push(buf.slice(0, i));
    });
    const err = new Promise<never>((_, rej) => s.on('error', rej));
    const want = async (n: number) => {
      for (const t0 = Date.now(); lines.length < n; await Promise.race([sleep(5), err]))
        if (Date.now() - t0 > timeoutMs) throw new Error(`no QMP answer from ${path} within ${timeoutMs} ms`);
    };
    await want(1);
    s.write('{"execute":"qmp_capabilities"}');
    await want(2);
    s.write(JSON.stringify({ execute }));
    await want(3);
    return JSON.parse(lines[2]!) as Record<string, unknown>;
  } finally {
    s.destroy();
  }
}

export async function fuzzQmp(
  t: QmpFuzzTarget,
  o: {
    seed: number;
    sessions: number;
    hugeEvery?: number;
    lanes?: number;
    progress?: (n: number) => void;
    /** Bytes of RSS growth allowed beyond the 10% (allocator noise of a short run on a loaded machine). */
    rssSlack?: number;
  },
): Promise<QmpFuzzResult> {
  const r = rng(o.seed);
  const pick = <T>(a: readonly T[]): T => a[Math.floor(r(a.length))]!;
  const hugeEvery = o.hugeEvery ?? 20000;
  const res: QmpFuzzResult = {
    sessions: 0,
    bytes: 0,
    replies: 0,
    huge: 0,
    rssStart: 0,
    rssEnd: 0,
    fdsStart: 0,
    fdsEnd: 0,
    ms: 0,
    violations: [],
  };
  const onData = (n: number) => (res.replies += n);
  const valid = () => {
    const parts = ['{"execute":"qmp_capabilities"}'];
    for (let i = Math.floor(r(4)); i >= 0; i--) {
      const cmd: Record<string, unknown> = { execute: pick(t.commands) };
      if (r(3) < 1) cmd.id = r(2) < 1 ? Math.floor(r(1e6)) : 'id' + Math.floor(r(100));
      if (r(4) < 1) cmd.arguments = r(2) < 1 ? {} : { x: pick([1, 'a', null, [], { y: true }]) };
      parts.push(JSON.stringify(cmd));
    }
    return Buffer.from(parts.join(pick(['', '\n', ' ', '\r\n'])));
  };
  const mutate = (b: Buffer): Buffer => {
    const out = [...b];
    for (let k = Math.floor(r(6)); k >= 0; k--) {
      const at = Math.floor(r(out.length + 1));
      switch (Math.floor(r(5))) {
        case 0:
          out[at] = Math.floor(r(256));
          break;
        case 1:
          out.splice(at, 0, pick([0x7b, 0x7d, 0x5b, 0x5d, 0x22, 0x27, 0x5c, 0x3a, 0x2c, 0xff, 0x00, 0x0a]));
          break;
        case 2:
          out.splice(at, Math.floor(r(8)));
          break;
        case 3:
          out.splice(at, 0, ...out.slice(at, at + Math.floor(r(32))));
          break;
        default:
          out.length = Math.min(out.length, at);
      }
    }
    return Buffer.from(out);
  };
  const huge = (): Buffer => {
    switch (res.huge++ % 3) {
      case 0:
        return Buffer.from(`{"execute":"query-name","arguments":{"s":"${'x'.repeat(10 * 2 ** 20)}"}}`);
      case 1:
        return Buffer.from('[' + '1,'.repeat(3 * 2 ** 20) + '1]');
      default:
        return Buffer.from('{"a":'.repeat(2000) + '1' + '}'.repeat(2000));
    }
  };

  /** One client: sends `data` (in random pieces), maybe waits a little for answers, then goes. */
  const client = async (data: Buffer, waitMs: number): Promise<void> => {
    const s = await connect(t.path, onData);
    if (!s) return;
    for (let at = 0; at < data.length && !s.destroyed; ) {
      const n = data.length > 65536 ? data.length : 1 + Math.floor(r(data.length - at));
      const ok = s.write(data.subarray(at, at + n));
      res.bytes += Math.min(n, data.length - at);
      at += n;
      if (!ok) await new Promise((done) => (s.once('drain', done), s.once('close', done)));
      if (r(4) < 1) await sleep(0);
    }
    if (waitMs) await Promise.race([sleep(waitMs), new Promise((done) => s.once('close', done))]);
    s.destroy();
  };

  const session = async (n: number): Promise<void> => {
    if (hugeEvery && n % hugeEvery === hugeEvery - 1) return client(huge(), 3000);
    switch (Math.floor(r(5))) {
      case 0: {
        // Connect and close at a random byte of a valid conversation.
        const v = valid();
        return client(v.subarray(0, Math.floor(r(v.length + 1))), r(2) < 1 ? 0 : Math.floor(r(5)));
      }
      case 1: {
        const b = Buffer.alloc(Math.floor(r(2048)));
        for (let i = 0; i < b.length; i++) b[i] = Math.floor(r(256));
        return client(b, Math.floor(r(3)));
      }
      case 2:
        return client(mutate(valid()), Math.floor(r(4)));
      case 3:
        return client(valid(), 3);
      default: {
        // Several at once: one is served, the others wait; they go in random order.
        const k = 2 + Math.floor(r(3));
        await Promise.all(Array.from({ length: k }, () => client(mutate(valid()), Math.floor(r(4)))));
      }
    }
  };

  const t0 = Date.now();
  // Warm-up before the baseline: code compiled, one huge input parsed, and the heap grown to a busy
  // server's working size (V8's young generation and malloc's arenas grow under a high rate of
  // short-lived sessions and keep that size). What the check catches is growth beyond it: a leak.
  // A few lanes of sessions at once: clients of one lane wait while another lane's is served. The
  // warm-up runs the same way, so that the server's threads (the poll and read work in libuv's pool,
  // each with a malloc arena of its own) reach the working size they have under that concurrency.
  const lanes = async (from: number, to: number, count: boolean) => {
    let next = from;
    const lane = async () => {
      for (let n; (n = next++) < to && !res.violations.length; ) {
        try {
          await session(n);
        } catch (e) {
          res.violations.push(`session ${n}: the fuzzer itself failed: ${(e as Error).message}`);
        }
        if (!count) continue;
        res.sessions++;
        if (o.progress && res.sessions % 10000 === 0) o.progress(res.sessions);
      }
    };
    await Promise.all(Array.from({ length: o.lanes ?? 4 }, lane));
  };
  const warm = Math.max(200, Math.floor(o.sessions / 10));
  await lanes(0, warm, false);
  for (let k = 0; k < 3; k++) await client(huge(), 3000); // each kind once
  res.huge = 0;
  await ask(t.path, 'query-name');
  res.rssStart = await t.rss();
  res.fdsStart = fds(t.pid);
  await lanes(warm, warm + o.sessions, true);
  try {
    const name = await ask(t.path, 'query-name');
    if (!('return' in name)) res.violations.push(`query-name after the fuzz: ${JSON.stringify(name)}`);
    if (t.vm) {
      await ask(t.path, 'cont');
      const st = await ask(t.path, 'query-status');
      if ((st.return as { status?: string } | undefined)?.status !== 'running')
        res.violations.push(`the VM does not run after the fuzz: ${JSON.stringify(st)}`);
    }
  } catch (e) {
    res.violations.push(`the server does not answer after the fuzz: ${(e as Error).message}`);
  }
  // A target that cannot be told to collect garbage gives its memory back when V8's memory reducer
  // runs, a while after the load stops (about a minute for tsvmm run): measure until then.
  res.rssEnd = await t.rss();
  const rssLimit = res.rssStart * 1.1 + (o.rssSlack ?? 0);
  for (let i = 0; i < (t.settleReads ?? 0) && res.rssEnd > rssLimit; i++) res.rssEnd = await t.rss();
  // Sessions the server is still closing (a client that stopped reading gets a moment) end first.
  for (let i = 0; i < 100 && fds(t.pid) > res.fdsStart; i++) await sleep(50);
  res.fdsEnd = fds(t.pid);
  if (res.rssEnd > rssLimit)
    res.violations.push(
      `RSS ${mib(res.rssStart)} after the warm-up, ${mib(res.rssEnd)} after the fuzz (> +10%${o.rssSlack ? ` + ${mib(o.rssSlack)}` : ''})`,
    );
  if (res.fdsEnd > res.fdsStart) res.violations.push(`fds: ${res.fdsStart} before, ${res.fdsEnd} after`);
  res.ms = Date.now() - t0;
  return res;
}

const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;

/** A process's RSS from /proc (for targets that cannot be told to collect garbage: after a pause). */
export function procRss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}
