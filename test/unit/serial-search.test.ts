// Vm.waitForSerial's search of the growing console (lib/args.ts GrowingTextSearch): fed the text in pieces, it
// finds what a full search of the text so far finds, at the same moment, for patterns within a line, ending at a
// newline, spanning lines and anchored; and what it searches again after a miss is bounded by a line, not by
// everything printed so far (a long console must not make waiting quadratic).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GrowingTextSearch, maySpanLines, serialPattern } from '../../lib/args.js';
import { linePattern } from '../../lib/testing.js';

/** A deterministic pseudo-random sequence (xorshift32), so a failure is reproducible. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
}

const text =
  'tsvmm-guest: start\r\nready\nxxxx\ncount=1\ncount=12\nirq ready\nirq 1\nirq 2\n' +
  'a line without its newline yet and then one\nedu: ok\n\nlast words';
const patterns: (string | RegExp)[] = [
  'ready',
  'ready\n',
  'count=12',
  /count=(\d+)\n/,
  /irq (\d)\nirq (\d)/, // spans lines
  /^ready$/m,
  /^tsvmm/, // anchored at `from`
  /(?<=irq )2/, // a lookbehind
  /yet and then/,
  /words$/,
  /[\s\S]{3}edu/,
  /[^x]+ok/,
  linePattern(/count=(\d+)/),
  linePattern('irq'),
  'never printed',
];

/** What the original full search found: the pattern against text.slice(from) after each piece. */
function fullSearch(re: RegExp, pieces: string[], from: number): { after: number; index: number; m: string[] } | null {
  let t = '';
  for (let i = 0; i < pieces.length; i++) {
    t += pieces[i];
    const m = re.exec(t.slice(from));
    if (m) return { after: i, index: m.index + from, m: [...m] };
  }
  return null;
}

test('fed in pieces, the search finds what a full search finds, when it finds it', () => {
  const next = rng(26);
  for (let round = 0; round < 200; round++) {
    const pieces: string[] = [];
    for (let i = 0; i < text.length; ) {
      const n = 1 + Math.floor(next() * 12);
      pieces.push(text.slice(i, i + n));
      i += n;
    }
    const from = round % 4 === 0 ? Math.floor(next() * 40) : 0;
    for (const p of patterns) {
      const re = serialPattern(p);
      const want = fullSearch(re, pieces, from);
      const s = new GrowingTextSearch(re, from);
      let t = '';
      let got: { after: number; index: number; m: string[] } | null = null;
      for (let i = 0; i < pieces.length && !got; i++) {
        t += pieces[i];
        const m = s.look(t.length, (pos) => t.slice(pos));
        if (m) got = { after: i, index: m.index, m: [...m] };
      }
      assert.deepEqual(got, want, `${String(p)} from ${from}, pieces ${JSON.stringify(pieces)}`);
    }
  }
});

test('after a miss, only the incomplete last line is searched again: a long console stays linear', () => {
  const s = new GrowingTextSearch(serialPattern('never printed'), 0);
  let t = '';
  let searched = 0;
  for (let i = 0; i < 20_000; i++) {
    t += `line ${i} of a long console\n`;
    assert.equal(
      s.look(t.length, (pos) => {
        searched += t.length - pos;
        return t.slice(pos);
      }),
      undefined,
    );
    assert.ok(s.windowLength < 40, `window ${s.windowLength} after line ${i}`);
  }
  assert.equal(searched, t.length, 'each character handed over once');
  // A line arriving in pieces keeps only that line in the window until its newline.
  const w = new GrowingTextSearch(serialPattern(linePattern('done')), 0);
  let u = '';
  for (const piece of ['first\nsecond li', 'ne still', ' going', ' done', '\n']) {
    u += piece;
    const m = w.look(u.length, (pos) => u.slice(pos));
    if (piece !== '\n') assert.equal(m, undefined, piece);
    else assert.equal(m?.[0], 'second line still going done\n');
  }
});

test('which patterns may span lines: conservative, but not for line patterns and plain strings', () => {
  for (const p of [
    'ready',
    'ready\n',
    'a.b',
    linePattern(/count=(\d+)/),
    linePattern('x'),
    /^ok$/m,
    /\bfoo\b/,
    /[a-z]+/,
  ])
    assert.equal(maySpanLines(serialPattern(p)), false, String(p));
  for (const p of ['a\nb', /a\sb/, /[^x]/, /[\0-\x7f]/, /(?<=a)b/, /^start/, /a.b/s, /\x0a/, /\u000a/, /[\W]/])
    assert.equal(maySpanLines(serialPattern(p)), true, String(p));
});
