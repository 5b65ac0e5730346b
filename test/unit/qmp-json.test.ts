// The QMP JSON stream reader against QEMU's lexer/streamer/parser behaviour: framing without
// newlines, splits at every byte, QEMU's error texts, limits and recovery.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { JsonStreamParser, MAX_NESTING, MAX_TOKEN_SIZE, type JsonResult } from '../../frontend/qmp/json.js';

function parse(...chunks: (string | Buffer)[]): JsonResult[] {
  const out: JsonResult[] = [];
  const p = new JsonStreamParser((r) => out.push(r));
  for (const c of chunks) p.feed(typeof c === 'string' ? Buffer.from(c, 'utf8') : c);
  return out;
}
const errors = (rs: JsonResult[]) => rs.map((r) => ('error' in r ? r.error : JSON.stringify(r.value)));

test('compact JSON with no newline is a complete message (as qemu.qmp sends it)', () => {
  assert.deepEqual(parse('{"execute":"qmp_capabilities"}'), [{ value: { execute: 'qmp_capabilities' } }]);
});

test('several messages in one chunk, with or without whitespace between them', () => {
  assert.deepEqual(parse('{"execute":"a"}{"execute":"b","id":1}\n  {"execute":"c"}'), [
    { value: { execute: 'a' } },
    { value: { execute: 'b', id: 1 } },
    { value: { execute: 'c' } },
  ]);
});

test('a message split at every possible byte gives the same value', () => {
  const msg =
    '{"execute": "device_add", "arguments": {"driver": "vfio-pci", "id": "d\\u00e9v\\ud83d\\ude00", "n": [1, -2.5e3, 0, true, false, null], "s": \'it\\\'s\'}, "id": "é"}';
  const whole = parse(msg);
  assert.equal(whole.length, 1);
  assert.deepEqual((whole[0] as { value: unknown }).value, {
    execute: 'device_add',
    arguments: { driver: 'vfio-pci', id: 'dév😀', n: [1, -2500, 0, true, false, null], s: "it's" },
    id: 'é',
  });
  const bytes = Buffer.from(msg, 'utf8');
  for (let i = 1; i < bytes.length; i++)
    assert.deepEqual(parse(bytes.subarray(0, i), bytes.subarray(i)), whole, `split at ${i}`);
  const out: JsonResult[] = [];
  const p = new JsonStreamParser((r) => out.push(r));
  for (const b of bytes) p.feed(Uint8Array.of(b));
  assert.deepEqual(out, whole, 'one byte at a time');
});

test('random messages under random chunking parse as JSON.parse does', () => {
  let seed = 7;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const value = (depth: number): unknown => {
    switch (rnd(depth > 3 ? 4 : 6)) {
      case 0:
        return rnd(1e6) - 5e5;
      case 1:
        return ['', 'a b', 'q"uote', 'back\\slash', 'ünï', '\n\t'][rnd(6)];
      case 2:
        return [true, false, null][rnd(3)];
      case 3:
        return rnd(1000) / 8;
      case 4:
        return Array.from({ length: rnd(4) }, () => value(depth + 1));
      default:
        return Object.fromEntries(Array.from({ length: rnd(4) }, (_, i) => [`k${i}`, value(depth + 1)]));
    }
  };
  for (let n = 0; n < 200; n++) {
    const msgs = Array.from({ length: 1 + rnd(3) }, () => ({ execute: 'x', arguments: value(0) }));
    const text = Buffer.from(msgs.map((m) => JSON.stringify(m, null, rnd(2) ? 1 : undefined)).join(rnd(2) ? '\n' : ''));
    const chunks: Buffer[] = [];
    for (let i = 0; i < text.length; ) {
      const l = 1 + rnd(20);
      chunks.push(text.subarray(i, i + l));
      i += l;
    }
    assert.deepEqual(
      parse(...chunks).map((r) => (r as { value: unknown }).value),
      msgs,
    );
  }
});

test("QEMU's parse errors: stray characters, bad keywords, missing colon, duplicate keys, bad escapes", () => {
  assert.deepEqual(
    errors(parse('{"execute": @}')),
    ["JSON parse error, stray '@'", 'JSON parse error, expecting value'],
    'the lexer recovers at the next structural character, where a lone } is its own error (as QEMU answers)',
  );
  assert.deepEqual(errors(parse('{"execute": nul}')), ["JSON parse error, invalid keyword 'nul'"]);
  assert.deepEqual(errors(parse('{"execute" "x"}')), ['JSON parse error, missing : in object pair']);
  assert.deepEqual(errors(parse('{"a": 1 "b": 2}')), ['JSON parse error, expected separator in dict']);
  assert.deepEqual(errors(parse('{"a": 1, "a": 2}')), ['JSON parse error, duplicate key']);
  assert.deepEqual(errors(parse('{1: 2}')), ['JSON parse error, key is not a string in object']);
  assert.deepEqual(errors(parse('[1 2]')), ['JSON parse error, expected separator in list']);
  assert.deepEqual(errors(parse('{"a": "\\x"}')), ['JSON parse error, invalid escape sequence in string']);
  assert.deepEqual(errors(parse('{"a": "\\ud800"}')), ['JSON parse error, \\ud800 is not a valid Unicode character']);
  assert.deepEqual(errors(parse(Buffer.from([0x22, 0xc3, 0x28, 0x22]))), [
    'JSON parse error, invalid UTF-8 sequence in string',
  ]);
  assert.deepEqual(errors(parse('{"a": 01}')), ["JSON parse error, stray '01'", 'JSON parse error, expecting value']);
  assert.deepEqual(errors(parse('{"a": "x\ny"}\n')), [
    "JSON parse error, stray '\"x\n'",
    'JSON parse error, expecting value',
  ]);
});

test('after an error the stream carries on: the next message is read normally (0xFF resynchronises)', () => {
  assert.deepEqual(
    errors(parse(Buffer.concat([Buffer.from('{"a": ['), Buffer.from([0xff]), Buffer.from('{"execute":"x"}')]))),
    ["JSON parse error, stray '\xff'", '{"execute":"x"}'],
  );
  assert.deepEqual(errors(parse('garbage {"execute":"x"}')), [
    "JSON parse error, invalid keyword 'garbage'",
    '{"execute":"x"}',
  ]);
});

test('scalars and unbalanced closers are complete (erroneous) messages, as in QEMU', () => {
  assert.deepEqual(errors(parse('1 "s" ] {}')), ['1', '"s"', 'JSON parse error, expecting value', '{}']);
});

test("QEMU's limits: nesting depth and token size", () => {
  const deep = parse('['.repeat(MAX_NESTING + 1));
  assert.deepEqual(errors(deep), ['JSON nesting depth limit exceeded']);
  assert.deepEqual(
    errors(parse('['.repeat(MAX_NESTING) + ']'.repeat(MAX_NESTING))).length,
    1,
    'exactly the limit is fine',
  );
  const big = Buffer.alloc(MAX_TOKEN_SIZE + 16, 0x61);
  big[0] = 0x22;
  // QEMU's lexer drops the oversized token and starts afresh mid-string; a client resynchronises
  // with 0xFF (qmp-spec), after which the next command is read normally.
  const r = parse(
    Buffer.from('{"execute": '),
    big.subarray(0, 1 << 20),
    big.subarray(1 << 20),
    Buffer.from([0xff]),
    Buffer.from('{"execute":"after"}'),
  );
  assert.equal((r[0] as { error: string }).error, 'JSON token size limit exceeded');
  assert.deepEqual(r.at(-1), { value: { execute: 'after' } }, 'the stream recovers after an oversized token');
});
