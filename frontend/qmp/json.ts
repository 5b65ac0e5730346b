// QMP's JSON stream reader, as QEMU's (qobject/json-lexer.c, json-streamer.c, json-parser.c):
// bytes in, one callback per complete top-level value or error. Values need no newline between
// them (qemu.qmp sends compact JSON without one), several may come in one read and one may be
// spread over many. The lexer is QEMU's state table (its string extensions included: single-quoted
// strings and the \' escape); the limits and error texts are QEMU's, so a client sees the same
// "JSON parse error, ..." answers and the same recovery after bad input.
//
// A client controls how much it sends, so the representation is bounded and flat: a message's
// tokens live in one byte arena plus two typed arrays (not one object per token: 2 Mi tokens of
// those took over a GiB), released when the message is done. The work is done in slices
// (feedAsync yields to the event loop every SLICE units) because the parser runs on the thread
// that also runs vCPU 0: a 2 MiB message must not stall the guest.

export const MAX_TOKEN_SIZE = 64 * 2 ** 20;
export const MAX_TOKEN_COUNT = 2 * 2 ** 20;
export const MAX_NESTING = 1024;

/** Token types. */
const enum T {
  LCurly,
  RCurly,
  LSquare,
  RSquare,
  Colon,
  Comma,
  String,
  Integer,
  Float,
  Keyword,
}

/** A complete top-level value, or what went wrong (QEMU's Error text). `limit`: one of QEMU's
 *  limits was exceeded (token size, token count, nesting). */
export type JsonResult = { value: unknown } | { error: string; limit?: true };

/** Work units (bytes lexed or scanned, tokens parsed × TOKEN_COST) between two yields of feedAsync. */
export const SLICE = 64 * 1024;
const TOKEN_COST = 32;
/** Arenas at most this big are kept between messages; bigger ones are dropped when a message ends. */
const KEEP = 16 * 1024;

const enum S {
  Start,
  Recovery,
  DqString,
  DqEscape,
  SqString,
  SqEscape,
  Zero,
  Sign,
  Digits,
  Mantissa,
  MantissaDigits,
  ExpE,
  ExpSign,
  ExpDigits,
  Keyword,
}

const isDigit = (c: number) => c >= 0x30 && c <= 0x39;
const inString = (c: number) => c >= 0x20 && c <= 0xfd;
/** Structural characters: their token type + 1 (0: not structural). */
const STRUCTURAL = new Uint8Array(256);
for (const [c, t] of [
  [0x7b, T.LCurly],
  [0x7d, T.RCurly],
  [0x5b, T.LSquare],
  [0x5d, T.RSquare],
  [0x3a, T.Colon],
  [0x2c, T.Comma],
] as const)
  STRUCTURAL[c] = t + 1;
const LEX_ERROR = -1;

/** The part of WebAssembly's API used here (the TypeScript libs this project builds with lack it). */
interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}
declare const WebAssembly: { Memory: new (d: { initial: number; maximum: number }) => WasmMemory };

/** WebAssembly pages (64 KiB). */
const PAGE = 64 * 1024;

/**
 * Growable memory that goes back to the system when dropped. A big message's bytes are kept in
 * WebAssembly memory (mapped and unmapped whole by V8), not in Buffers: malloc keeps what such
 * Buffers freed (glibc raises its mmap threshold after a big free), and the process stayed
 * megabytes bigger after each client that sent a big message.
 */
class Grow {
  private mem: WasmMemory | undefined;
  u8: Buffer = EMPTY;
  u32: Uint32Array = new Uint32Array(0);
  constructor(
    private readonly small: number,
    private readonly max: number,
  ) {}
  /** Room for `n` bytes, keeping the first `used`. The small buffer is made on first use (most
   *  sessions send little, many send nothing). */
  reserve(n: number, used: number): void {
    if (n <= this.u8.length) return;
    if (n <= this.small) {
      this.u8 = Buffer.alloc(this.small);
      this.u32 = new Uint32Array(this.u8.buffer, this.u8.byteOffset, this.small >> 2);
      return;
    }
    const pages = Math.min(Math.ceil(this.max / PAGE), Math.ceil((n + (n >> 1)) / PAGE));
    if (!this.mem) {
      const mem = new WebAssembly.Memory({ initial: pages, maximum: Math.ceil(this.max / PAGE) });
      Buffer.from(mem.buffer).set(this.u8.subarray(0, used));
      this.mem = mem;
    } else this.mem.grow(pages - this.mem.buffer.byteLength / PAGE);
    this.u8 = Buffer.from(this.mem.buffer);
    this.u32 = new Uint32Array(this.mem.buffer);
  }
  /** Drops the big memory (the garbage collector's now); the next message starts small. */
  release(): void {
    if (!this.mem) return;
    this.mem = undefined;
    this.u8 = EMPTY;
    this.u32 = new Uint32Array(0);
  }
}

const EMPTY = Buffer.alloc(0);

/** A token: its type in the top bits, where its bytes start in the arena below (< 2^27: the stored
 *  bytes are at most MAX_TOKEN_SIZE). */
const TYPE_SHIFT = 27;
const START_MASK = (1 << TYPE_SHIFT) - 1;

export class JsonStreamParser {
  private state = S.Start;
  /** The message's token bytes, then the token being lexed (from `cur`). */
  private arena = new Grow(KEEP, 2 * MAX_TOKEN_SIZE + 2 * PAGE);
  private arenaLen = 0;
  /** Where the token being lexed starts in the arena. */
  private cur = 0;
  private toks = new Grow(KEEP, 4 * (MAX_TOKEN_COUNT + 1));
  private count = 0;
  private tokenSize = 0;
  private braces = 0;
  private brackets = 0;
  private budget = SLICE;
  private closed = false;

  constructor(private readonly emit: (r: JsonResult) => void) {}

  /** Reads a chunk to its end at once (small inputs: a client's replies). */
  feed(chunk: Uint8Array): void {
    const g = this.run(chunk);
    while (!g.next().done);
  }

  /** Reads a chunk, yielding to the event loop between slices of work; emits in order. */
  async feedAsync(chunk: Uint8Array): Promise<void> {
    const g = this.run(chunk);
    while (!g.next().done) {
      await new Promise<void>((r) => setImmediate(r));
      if (this.closed) return;
    }
  }

  /** Drops what is buffered; nothing more is emitted. */
  close(): void {
    this.closed = true;
    this.reset();
  }

  private append(buf: Buffer, from: number, to: number): void {
    const n = to - from;
    if (n <= 0) return;
    this.arena.reserve(this.arenaLen + n, this.arenaLen);
    const a = this.arena.u8;
    // Most tokens are a few bytes: a loop is cheaper than Buffer.copy's views for those.
    if (n <= 32) for (let k = 0; k < n; k++) a[this.arenaLen + k] = buf[from + k]!;
    else buf.copy(a, this.arenaLen, from, to);
    this.arenaLen += n;
  }

  private *run(chunk: Uint8Array): Generator<void> {
    const buf = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    let start = -1; // where the current token's bytes in this chunk begin (the chunk outlives a yield)
    const flushPart = (end: number) => {
      if (start >= 0) this.append(buf, start, end);
      start = -1;
    };
    let i = 0;
    while (i < buf.length) {
      if (this.closed) return;
      if (this.budget <= 0) {
        this.budget = SLICE;
        yield;
        continue;
      }
      const from = i;
      const sliceEnd = Math.min(buf.length, i + this.budget);
      let complete = false;
      while (i < sliceEnd && !complete && !this.closed) {
        const c = buf[i]!;
        const s = this.state;
        // Each case either consumes c (i++) or leaves it to be read again from Start (lookahead).
        let done: T | typeof LEX_ERROR | undefined;
        switch (s) {
          case S.Start: {
            if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) {
              i++;
              break;
            }
            this.cur = this.arenaLen;
            start = i;
            i++;
            const st = STRUCTURAL[c]!;
            if (c === 0x22) this.state = S.DqString;
            else if (c === 0x27) this.state = S.SqString;
            else if (c === 0x30) this.state = S.Zero;
            else if (c === 0x2d) this.state = S.Sign;
            else if (st) {
              start = -1; // structural tokens keep no bytes
              done = st - 1;
            } else if (c >= 0x31 && c <= 0x39) this.state = S.Digits;
            else if (c >= 0x61 && c <= 0x7a) this.state = S.Keyword;
            else done = LEX_ERROR;
            break;
          }
          case S.Recovery:
            // Skip to a structural character, a control character other than tab, or 0xFE/0xFF:
            // the points where QEMU's lexer resynchronises (docs/interop/qmp-spec).
            if ((c < 0x20 && c !== 0x09) || c >= 0xfe || STRUCTURAL[c]) this.state = S.Start;
            else i++;
            break;
          case S.DqString:
          case S.SqString: {
            if (start < 0) start = i;
            i++;
            const quote = s === S.DqString ? 0x22 : 0x27;
            if (c === quote) done = T.String;
            else if (c === 0x5c) this.state = s === S.DqString ? S.DqEscape : S.SqEscape;
            else if (!inString(c)) done = LEX_ERROR;
            break;
          }
          case S.DqEscape:
          case S.SqEscape:
            if (start < 0) start = i;
            i++;
            if (inString(c)) this.state = s === S.DqEscape ? S.DqString : S.SqString;
            else done = LEX_ERROR;
            break;
          default: {
            // Numbers and keywords: a character that cannot continue the token ends it (terminal
            // states) or is an error (states that need more).
            const next = numberStep(s, c);
            if (next !== undefined) {
              if (start < 0) start = i;
              i++;
              if (next === 'error') done = LEX_ERROR;
              else this.state = next;
            } else if (s === S.Zero || s === S.Digits) done = T.Integer;
            else if (s === S.MantissaDigits || s === S.ExpDigits) done = T.Float;
            else if (s === S.Keyword) done = T.Keyword;
            else {
              if (start < 0) start = i;
              i++;
              done = LEX_ERROR;
            }
          }
        }
        if (done === LEX_ERROR) {
          flushPart(i);
          const stray = this.arena.u8.toString('latin1', this.cur, this.arenaLen);
          this.state = S.Recovery;
          this.fail(`JSON parse error, stray '${stray}'`);
        } else if (done !== undefined) {
          flushPart(i);
          this.state = S.Start;
          complete = this.token(done);
        } else if (start >= 0 && this.arenaLen - this.cur + (i - start) > MAX_TOKEN_SIZE) {
          // One token may not grow without bound either (json_lexer_feed_char).
          start = -1;
          this.state = S.Start;
          this.fail('JSON token size limit exceeded', true);
        }
      }
      this.budget -= i - from;
      if (complete) yield* this.parse();
    }
    flushPart(buf.length);
  }

  /** json_message_process_token: count nesting, enforce the limits; true when the message is complete. */
  private token(type: T): boolean {
    const len = type >= T.String ? this.arenaLen - this.cur : 1;
    if (type === T.LCurly) this.braces++;
    else if (type === T.RCurly) this.braces--;
    else if (type === T.LSquare) this.brackets++;
    else if (type === T.RSquare) this.brackets--;
    if (this.tokenSize + len + 1 > MAX_TOKEN_SIZE) return this.fail('JSON token size limit exceeded', true);
    if (this.count + 1 > MAX_TOKEN_COUNT) return this.fail('JSON token count limit exceeded', true);
    if (this.braces + this.brackets > MAX_NESTING) return this.fail('JSON nesting depth limit exceeded', true);
    this.toks.reserve(4 * (this.count + 1), 4 * this.count);
    this.toks.u32[this.count++] = (type << TYPE_SHIFT) | this.cur;
    this.tokenSize += len;
    return !((this.braces > 0 || this.brackets > 0) && this.braces >= 0 && this.brackets >= 0);
  }

  private fail(error: string, limit?: true): false {
    this.reset();
    this.emit(limit ? { error, limit } : { error });
    return false;
  }

  private reset(): void {
    this.count = 0;
    this.tokenSize = 0;
    this.braces = 0;
    this.brackets = 0;
    this.arenaLen = 0;
    this.cur = 0;
    this.arena.release();
    this.toks.release();
  }

  /** json-parser.c over the message's tokens, in slices: emits its value or its first error. */
  private *parse(): Generator<void> {
    const p = new TokenParser(this.arena.u8, this.arenaLen, this.toks.u32, this.count);
    for (;;) {
      const r = p.step(this.budget);
      if (r !== undefined) {
        this.budget -= p.spent;
        break;
      }
      this.budget = SLICE;
      yield;
      if (this.closed) return;
    }
    const error = p.error;
    const value = p.value;
    this.reset();
    if (this.closed) return;
    this.emit(error !== undefined ? { error } : { value });
  }
}

/** The number/keyword rows of QEMU's lexer table: the next state, 'error', or undefined when
 *  the character ends the token (or, in a state that needs more, is an error: the caller says). */
function numberStep(s: S, c: number): S | 'error' | undefined {
  const e = c === 0x65 || c === 0x45;
  switch (s) {
    case S.Zero:
      return isDigit(c) ? 'error' : c === 0x2e ? S.Mantissa : undefined;
    case S.Sign:
      return c === 0x30 ? S.Zero : c >= 0x31 && c <= 0x39 ? S.Digits : undefined;
    case S.Digits:
      return isDigit(c) ? S.Digits : e ? S.ExpE : c === 0x2e ? S.Mantissa : undefined;
    case S.Mantissa:
      return isDigit(c) ? S.MantissaDigits : undefined;
    case S.MantissaDigits:
      return isDigit(c) ? S.MantissaDigits : e ? S.ExpE : undefined;
    case S.ExpE:
      return c === 0x2d || c === 0x2b ? S.ExpSign : isDigit(c) ? S.ExpDigits : undefined;
    case S.ExpSign:
      return isDigit(c) ? S.ExpDigits : undefined;
    case S.ExpDigits:
      return isDigit(c) ? S.ExpDigits : undefined;
    case S.Keyword:
      return c >= 0x61 && c <= 0x7a ? S.Keyword : undefined;
    default:
      return undefined;
  }
}

// ignoreBOM: a U+FEFF at the start of a string is part of it.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const SIMPLE: Record<number, string> = {
  0x22: '"',
  0x27: "'",
  0x5c: '\\',
  0x2f: '/',
  0x62: '\b',
  0x66: '\f',
  0x6e: '\n',
  0x72: '\r',
  0x74: '\t',
};

/** A container being filled: an object waiting for a key, a colon+value or a separator; a list. */
interface Frame {
  obj: Record<string, unknown> | unknown[];
  list: boolean;
  key: string | undefined;
  /** For objects: the next value is the key. */
  wantKey: boolean;
}

/** A string token being read, in slices: its escapes undone into `buf` (never longer than the
 *  token), then `buf` decoded as UTF-8. */
interface StringWork {
  b: Buffer;
  /** Next byte of `b` to read (phase 1), or of `buf` to decode (phase 2). */
  p: number;
  buf: Buffer | undefined;
  len: number;
  decoding: boolean;
  out: string;
  decoder: InstanceType<typeof TextDecoder> | undefined;
}

/**
 * json-parser.c: a recursive descent over one message's tokens, with its error texts — written
 * with an explicit stack so that it can stop after a slice of work and go on later.
 */
class TokenParser {
  error: string | undefined;
  value: unknown;
  spent = 0;
  private i = 0;
  private stack: Frame[] = [];
  private str: StringWork | undefined;
  constructor(
    private readonly arena: Buffer,
    private readonly arenaLen: number,
    private readonly toks: Uint32Array,
    private readonly count: number,
  ) {}

  private fail(msg: string): true {
    this.error ??= `JSON parse error, ${msg}`;
    return true;
  }
  private type(i: number): T {
    return this.toks[i]! >>> TYPE_SHIFT;
  }
  private start(i: number): number {
    return this.toks[i]! & START_MASK;
  }
  private end(i: number): number {
    return i + 1 < this.count ? this.start(i + 1) : this.arenaLen;
  }
  private text(i: number): string {
    return this.arena.toString('latin1', this.start(i), this.end(i));
  }
  /** An integer token's value: digits summed when exact (the common case), else as QEMU's double. */
  private number(i: number): number {
    const a = this.arena,
      s = this.start(i),
      e = this.end(i);
    if (e - s > 15 || this.type(i) !== T.Integer) return Number(this.text(i));
    const neg = a[s] === 0x2d;
    let v = 0;
    for (let k = neg ? s + 1 : s; k < e; k++) v = v * 10 + a[k]! - 0x30;
    return neg ? -v : v;
  }

  /** Works for about `budget` units; true when done (value or error set), undefined to go on. */
  step(budget: number): true | undefined {
    this.spent = 0;
    while (this.spent < budget) {
      if (this.str) {
        const s = this.stringStep(budget - this.spent);
        if (s === undefined) continue;
        this.str = undefined;
        if (s === false) return true;
        if (this.complete(s)) return true;
        continue;
      }
      this.spent += TOKEN_COST;
      if (this.stack.length === 0 && this.i > 0) return true;
      const top = this.stack[this.stack.length - 1];
      if (top && !top.list && !top.wantKey && top.key === undefined) {
        // after an object's value: '}' or ','
        const t = this.i < this.count ? this.type(this.i++) : undefined;
        if (t === undefined) return this.fail('premature EOI');
        if (t === T.RCurly) {
          this.stack.pop();
          if (this.complete(top.obj)) return true;
        } else if (t !== T.Comma) return this.fail('expected separator in dict');
        else {
          if (this.i >= this.count) return this.fail('premature EOI');
          top.wantKey = true;
        }
        continue;
      }
      if (top && top.list && top.key === '') {
        // after a list's element: ']' or ','
        const t = this.i < this.count ? this.type(this.i++) : undefined;
        if (t === undefined) return this.fail('premature EOI');
        if (t === T.RSquare) {
          this.stack.pop();
          if (this.complete(top.obj)) return true;
        } else if (t !== T.Comma) return this.fail('expected separator in list');
        else top.key = undefined;
        continue;
      }
      if (top && !top.list && top.key !== undefined) {
        // after a key: ':' then the value
        const t = this.i < this.count ? this.type(this.i++) : undefined;
        if (t === undefined) return this.fail('premature EOI');
        if (t !== T.Colon) return this.fail('missing : in object pair');
      }
      if (this.value0()) return true;
    }
    return undefined;
  }

  /** parse_value at token i: opens a container, starts a string, or completes a scalar. */
  private value0(): boolean {
    const i = this.i;
    if (i >= this.count) return this.fail('premature EOI');
    const t = this.type(i);
    this.i++;
    switch (t) {
      case T.LCurly:
        if (this.i >= this.count) return this.fail('premature EOI');
        if (this.type(this.i) === T.RCurly) {
          this.i++;
          return this.complete({});
        }
        this.stack.push({ obj: {}, list: false, key: undefined, wantKey: true });
        return false;
      case T.LSquare:
        if (this.i >= this.count) return this.fail('premature EOI');
        if (this.type(this.i) === T.RSquare) {
          this.i++;
          return this.complete([]);
        }
        this.stack.push({ obj: [], list: true, key: undefined, wantKey: false });
        return false;
      case T.String: {
        const b = this.arena.subarray(this.start(i), this.end(i));
        this.str = { b, p: 1, buf: undefined, len: 0, decoding: false, out: '', decoder: undefined };
        return false;
      }
      case T.Integer:
      case T.Float:
        return this.complete(this.number(i));
      case T.Keyword: {
        const k = this.text(i);
        if (k === 'true') return this.complete(true);
        if (k === 'false') return this.complete(false);
        if (k === 'null') return this.complete(null);
        return this.fail(`invalid keyword '${k}'`);
      }
      default:
        return this.fail('expecting value');
    }
  }

  /** A value is complete: it is the message, an object's key or value, or a list's element. */
  private complete(v: unknown): boolean {
    const top = this.stack[this.stack.length - 1];
    if (!top) {
      this.value = v;
      return true;
    }
    if (top.list) {
      (top.obj as unknown[]).push(v);
      top.key = ''; // a separator or the end next
      return false;
    }
    const obj = top.obj as Record<string, unknown>;
    if (top.wantKey) {
      if (typeof v !== 'string') return this.fail('key is not a string in object');
      top.wantKey = false;
      top.key = v;
      return false;
    }
    const key = top.key!;
    if (Object.prototype.hasOwnProperty.call(obj, key)) return this.fail('duplicate key');
    // An own "__proto__" member, as JSON.parse makes it, not the prototype.
    if (key === '__proto__')
      Object.defineProperty(obj, key, { value: v, writable: true, enumerable: true, configurable: true });
    else obj[key] = v;
    top.key = undefined;
    return false;
  }

  /** parse_string, resumable: both quote styles, JSON's escapes plus \', UTF-8 validated. Returns
   *  the string, false on an error, undefined when the budget ran out first. Escapes only ever
   *  produce whole UTF-8 sequences, so validating the unescaped bytes at once is validating each run
   *  between escapes, as QEMU does. */
  private stringStep(budget: number): string | false | undefined {
    const w = this.str!;
    const b = w.b;
    if (!w.decoding) {
      const quote = b[0]!;
      const stop = Math.min(b.length - 1, w.p + budget);
      let p = w.p;
      // Fast path: a string without escapes, read whole in one slice, needs no copy.
      if (w.buf === undefined && b.length - 2 <= budget && b.indexOf(0x5c, 1) < 0) {
        this.spent += b.length;
        try {
          return utf8.decode(b.subarray(1, b.length - 1));
        } catch {
          this.fail('invalid UTF-8 sequence in string');
          return false;
        }
      }
      // Undone in place: an escape's bytes are never fewer than what it stands for.
      const out = (w.buf ??= b);
      while (p < stop && b[p] !== quote) {
        const c = b[p]!;
        if (c !== 0x5c) {
          out[w.len++] = c;
          p++;
          continue;
        }
        const beg = p;
        const e = b[p + 1]!;
        p += 2;
        const simple = SIMPLE[e];
        let err: string | undefined;
        if (simple !== undefined) out[w.len++] = simple.charCodeAt(0);
        else if (e === 0x75) {
          let cp = hex4(b, p);
          p += 4;
          if (cp >= 0xd800 && cp <= 0xdbff && b[p] === 0x5c && b[p + 1] === 0x75) {
            const trail = hex4(b, p + 2);
            if (trail >= 0xdc00 && trail <= 0xdfff) {
              cp = 0x10000 + ((cp & 0x3ff) << 10) + (trail & 0x3ff);
              p += 6;
            } else cp = -1;
          }
          if (cp < 0 || (cp >= 0xd800 && cp <= 0xdfff))
            err = `${b.subarray(beg, p).toString('latin1')} is not a valid Unicode character`;
          else w.len += out.write(String.fromCodePoint(cp), w.len, 'utf8');
        } else err = 'invalid escape sequence in string';
        if (err !== undefined) {
          // An earlier run's bad UTF-8 is the first error.
          try {
            utf8.decode(out.subarray(0, w.len));
          } catch {
            err = 'invalid UTF-8 sequence in string';
          }
          this.fail(err);
          return false;
        }
      }
      this.spent += p - w.p;
      w.p = p;
      if (p < b.length - 1 && b[p] !== quote) return undefined;
      w.decoding = true;
      w.p = 0;
    }
    const out = w.buf!;
    const end = Math.min(w.len, w.p + Math.max(budget, 1));
    try {
      // A decoder of its own only when the string spans slices (it holds a split sequence).
      if (end < w.len) w.decoder ??= newDecoder();
      w.out += (w.decoder ?? utf8).decode(out.subarray(w.p, end), { stream: end < w.len });
    } catch {
      this.fail('invalid UTF-8 sequence in string');
      return false;
    }
    this.spent += end - w.p;
    w.p = end;
    return end < w.len ? undefined : w.out;
  }
}

const newDecoder = () => new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function hex4(b: Buffer, at: number): number {
  const s = b.subarray(at, at + 4).toString('latin1');
  return /^[0-9a-fA-F]{4}$/.test(s) ? parseInt(s, 16) : -1;
}
