// json-parser.c's half of QMP's JSON reader: one message's tokens (json-tokens.ts, lexed by json.ts) into a
// value, or QEMU's error text for the first thing wrong, in slices of work.
import { START_MASK, T, TOKEN_COST, TYPE_SHIFT } from './json-tokens.js';

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
export class TokenParser {
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
