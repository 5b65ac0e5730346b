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
// (feedAsync works for TURN_MS at a time, in steps of SLICE units, then lets the event loop and
// vCPU 0 run twice as long) because the parser runs on the thread that also runs vCPU 0: a 2 MiB message
// must not stall the guest.
//
// Here: the lexer and streamer (json-lexer.c, json-streamer.c); json-parser.ts the parser, json-tokens.ts the
// token format and limits they share, json-arena.ts the memory the tokens live in.
import { Grow, PAGE } from './json-arena.js';
import { TokenParser } from './json-parser.js';
import { MAX_TOKEN_COUNT, MAX_TOKEN_SIZE, MAX_NESTING, SLICE, T, TYPE_SHIFT } from './json-tokens.js';

/** How long feedAsync parses before it lets vCPU 0 (on the same thread) run twice as long. */
export const TURN_MS = 4;

export { MAX_TOKEN_SIZE, MAX_TOKEN_COUNT, MAX_NESTING, SLICE } from './json-tokens.js';

/** A complete top-level value, or what went wrong (QEMU's Error text). `limit`: one of QEMU's
 *  limits was exceeded (token size, token count, nesting). */
export type JsonResult = { value: unknown } | { error: string; limit?: true };

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
    let t0 = Date.now();
    while (!g.next().done) {
      const spent = Date.now() - t0;
      if (spent < TURN_MS) continue;
      // vCPU 0 gets twice as long as the parse just had. A timer, not an immediate: the run
      // loop's watcher sees timers and ends vCPU 0's slice when one is due, while an immediate
      // would wait for the slice's own limit (tens of ms) and make a big message take seconds.
      await new Promise<void>((r) => setTimeout(r, 2 * spent));
      if (this.closed) return;
      t0 = Date.now();
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
