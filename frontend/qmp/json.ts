// QMP's JSON stream reader, as QEMU's (qobject/json-lexer.c, json-streamer.c, json-parser.c):
// bytes in, one callback per complete top-level value or error. Values need no newline between
// them (qemu.qmp sends compact JSON without one), several may come in one read and one may be
// spread over many. The lexer is QEMU's state table (its string extensions included: single-quoted
// strings and the \' escape); the limits and error texts are QEMU's, so a client sees the same
// "JSON parse error, ..." answers and the same recovery after bad input.

export const MAX_TOKEN_SIZE = 64 * 2 ** 20;
export const MAX_TOKEN_COUNT = 2 * 2 ** 20;
export const MAX_NESTING = 1024;

type TokType = '{' | '}' | '[' | ']' | ':' | ',' | 'string' | 'integer' | 'float' | 'keyword';
interface Token {
  type: TokType;
  bytes: Buffer;
}

/** A complete top-level value, or what went wrong (QEMU's Error text). */
export type JsonResult = { value: unknown } | { error: string };

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

export class JsonStreamParser {
  private state = S.Start;
  /** Bytes of the token being lexed (parts, as chunks end mid-token). */
  private parts: Buffer[] = [];
  private partLen = 0;
  private tokens: Token[] = [];
  private tokenSize = 0;
  private braces = 0;
  private brackets = 0;

  constructor(private readonly emit: (r: JsonResult) => void) {}

  feed(chunk: Uint8Array): void {
    const buf = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    let start = -1; // where the current token's bytes in this chunk begin
    const flushPart = (end: number) => {
      if (start >= 0 && end > start) {
        this.parts.push(buf.subarray(start, end));
        this.partLen += end - start;
      }
      start = -1;
    };
    for (let i = 0; i < buf.length; ) {
      const c = buf[i]!;
      const s = this.state;
      // Each case either consumes c (i++) or leaves it to be read again from Start (lookahead).
      switch (s) {
        case S.Start:
          if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) {
            i++;
            break;
          }
          start = i;
          i++;
          switch (c) {
            case 0x22:
              this.state = S.DqString;
              break;
            case 0x27:
              this.state = S.SqString;
              break;
            case 0x30:
              this.state = S.Zero;
              break;
            case 0x2d:
              this.state = S.Sign;
              break;
            case 0x7b:
            case 0x7d:
            case 0x5b:
            case 0x5d:
            case 0x3a:
            case 0x2c:
              flushPart(i);
              this.token(String.fromCharCode(c) as TokType);
              break;
            default:
              if (c >= 0x31 && c <= 0x39) this.state = S.Digits;
              else if (c >= 0x61 && c <= 0x7a) this.state = S.Keyword;
              else {
                flushPart(i);
                this.lexError();
              }
          }
          break;
        case S.Recovery:
          // Skip to a structural character, a control character other than tab, or 0xFE/0xFF:
          // the points where QEMU's lexer resynchronises (docs/interop/qmp-spec).
          if (
            (c < 0x20 && c !== 0x09) ||
            c >= 0xfe ||
            c === 0x5b ||
            c === 0x5d ||
            c === 0x7b ||
            c === 0x7d ||
            c === 0x3a ||
            c === 0x2c
          )
            this.state = S.Start;
          else i++;
          break;
        case S.DqString:
        case S.SqString: {
          if (start < 0) start = i;
          i++;
          const quote = s === S.DqString ? 0x22 : 0x27;
          if (c === quote) {
            flushPart(i);
            this.token('string');
          } else if (c === 0x5c) this.state = s === S.DqString ? S.DqEscape : S.SqEscape;
          else if (!inString(c)) {
            flushPart(i);
            this.lexError();
          }
          break;
        }
        case S.DqEscape:
        case S.SqEscape:
          if (start < 0) start = i;
          i++;
          if (inString(c)) this.state = s === S.DqEscape ? S.DqString : S.SqString;
          else {
            flushPart(i);
            this.lexError();
          }
          break;
        default: {
          // Numbers and keywords: a character that cannot continue the token ends it (terminal
          // states) or is an error (states that need more).
          const next = numberStep(s, c);
          if (next !== undefined) {
            if (start < 0) start = i;
            i++;
            if (next === 'error') {
              flushPart(i);
              this.lexError();
            } else this.state = next;
          } else if (s === S.Zero || s === S.Digits) {
            flushPart(i);
            this.token('integer');
          } else if (s === S.MantissaDigits || s === S.ExpDigits) {
            flushPart(i);
            this.token('float');
          } else if (s === S.Keyword) {
            flushPart(i);
            this.token('keyword');
          } else {
            if (start < 0) start = i;
            i++;
            flushPart(i);
            this.lexError();
          }
        }
      }
      if (this.partLen + (start >= 0 ? i - start : 0) > MAX_TOKEN_SIZE) {
        // One token may not grow without bound either (json_lexer_feed_char).
        start = -1;
        this.parts = [];
        this.partLen = 0;
        this.state = S.Start;
        this.fail('JSON token size limit exceeded');
      }
    }
    flushPart(buf.length);
  }

  private takeBytes(): Buffer {
    const b = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, this.partLen);
    this.parts = [];
    this.partLen = 0;
    return b;
  }

  private lexError(): void {
    const bytes = this.takeBytes();
    this.state = S.Recovery;
    this.fail(`JSON parse error, stray '${bytes.toString('latin1')}'`);
  }

  /** json_message_process_token: count nesting, enforce the limits, parse when balanced. */
  private token(type: TokType): void {
    const bytes = this.takeBytes();
    this.state = S.Start;
    if (type === '{') this.braces++;
    else if (type === '}') this.braces--;
    else if (type === '[') this.brackets++;
    else if (type === ']') this.brackets--;
    if (this.tokenSize + bytes.length + 1 > MAX_TOKEN_SIZE) return this.fail('JSON token size limit exceeded');
    if (this.tokens.length + 1 > MAX_TOKEN_COUNT) return this.fail('JSON token count limit exceeded');
    if (this.braces + this.brackets > MAX_NESTING) return this.fail('JSON nesting depth limit exceeded');
    this.tokens.push({ type, bytes });
    this.tokenSize += bytes.length;
    if ((this.braces > 0 || this.brackets > 0) && this.braces >= 0 && this.brackets >= 0) return;
    const tokens = this.tokens;
    this.reset();
    const p = new TokenParser(tokens);
    const value = p.parseValue();
    this.emit(p.error !== undefined ? { error: p.error } : { value });
  }

  private fail(error: string): void {
    this.reset();
    this.emit({ error });
  }

  private reset(): void {
    this.tokens = [];
    this.tokenSize = 0;
    this.braces = 0;
    this.brackets = 0;
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

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** json-parser.c: a recursive descent over one message's tokens, with its error texts. */
class TokenParser {
  error: string | undefined;
  private i = 0;
  constructor(private readonly tokens: Token[]) {}

  private fail(msg: string): undefined {
    this.error ??= `JSON parse error, ${msg}`;
    return undefined;
  }
  private peek(): Token | undefined {
    return this.tokens[this.i];
  }
  private pop(): Token | undefined {
    return this.tokens[this.i++];
  }

  parseValue(): unknown {
    const t = this.peek();
    if (!t) return this.fail('premature EOI');
    switch (t.type) {
      case '{':
        return this.parseObject();
      case '[':
        return this.parseArray();
      case 'string':
        this.i++;
        return this.parseString(t.bytes);
      case 'integer':
      case 'float':
        this.i++;
        return Number(t.bytes.toString('latin1'));
      case 'keyword': {
        this.i++;
        const k = t.bytes.toString('latin1');
        if (k === 'true') return true;
        if (k === 'false') return false;
        if (k === 'null') return null;
        return this.fail(`invalid keyword '${k}'`);
      }
      default:
        return this.fail('expecting value');
    }
  }

  private parseObject(): unknown {
    this.pop();
    const obj: Record<string, unknown> = Object.create(null);
    if (!this.peek()) return this.fail('premature EOI');
    if (this.peek()!.type === '}') {
      this.pop();
      return { ...obj };
    }
    for (;;) {
      if (!this.parsePair(obj)) return undefined;
      const t = this.pop();
      if (!t) return this.fail('premature EOI');
      if (t.type === '}') return { ...obj };
      if (t.type !== ',') return this.fail('expected separator in dict');
    }
  }

  private parsePair(obj: Record<string, unknown>): boolean {
    if (!this.peek()) {
      this.fail('premature EOI');
      return false;
    }
    const key = this.parseValue();
    if (typeof key !== 'string') {
      this.fail('key is not a string in object');
      return false;
    }
    const colon = this.pop();
    if (!colon) {
      this.fail('premature EOI');
      return false;
    }
    if (colon.type !== ':') {
      this.fail('missing : in object pair');
      return false;
    }
    const value = this.parseValue();
    if (value === undefined) {
      this.fail('Missing value in dict');
      return false;
    }
    if (Object.prototype.hasOwnProperty.call(obj, key)) {
      this.fail('duplicate key');
      return false;
    }
    obj[key] = value;
    return true;
  }

  private parseArray(): unknown {
    this.pop();
    const list: unknown[] = [];
    if (!this.peek()) return this.fail('premature EOI');
    if (this.peek()!.type === ']') {
      this.pop();
      return list;
    }
    for (;;) {
      const v = this.parseValue();
      if (v === undefined) return this.fail('expecting value');
      list.push(v);
      const t = this.pop();
      if (!t) return this.fail('premature EOI');
      if (t.type === ']') return list;
      if (t.type !== ',') return this.fail('expected separator in list');
    }
  }

  /** parse_string: both quote styles, JSON's escapes plus \', UTF-8 validated. */
  private parseString(b: Buffer): string | undefined {
    const quote = b[0]!;
    let out = '';
    let run = 1; // start of the current run of unescaped bytes
    const flush = (end: number): boolean => {
      if (end > run) {
        try {
          out += utf8.decode(b.subarray(run, end));
        } catch {
          this.fail('invalid UTF-8 sequence in string');
          return false;
        }
      }
      return true;
    };
    let p = 1;
    while (b[p] !== quote) {
      if (b[p] !== 0x5c) {
        p++;
        continue;
      }
      if (!flush(p)) return undefined;
      const beg = p;
      const c = String.fromCharCode(b[p + 1]!);
      p += 2;
      const simple: Record<string, string> = {
        '"': '"',
        "'": "'",
        '\\': '\\',
        '/': '/',
        b: '\b',
        f: '\f',
        n: '\n',
        r: '\r',
        t: '\t',
      };
      if (c in simple) out += simple[c];
      else if (c === 'u') {
        let cp = hex4(b, p);
        p += 4;
        if (cp >= 0xd800 && cp <= 0xdbff && b[p] === 0x5c && b[p + 1] === 0x75) {
          const trail = hex4(b, p + 2);
          if (trail >= 0xdc00 && trail <= 0xdfff) {
            cp = 0x10000 + ((cp & 0x3ff) << 10) + (trail & 0x3ff);
            p += 6;
          } else cp = -1;
        }
        if (cp < 0 || (cp >= 0xd800 && cp <= 0xdfff)) {
          this.fail(`${b.subarray(beg, p).toString('latin1')} is not a valid Unicode character`);
          return undefined;
        }
        out += String.fromCodePoint(cp);
      } else {
        this.fail('invalid escape sequence in string');
        return undefined;
      }
      run = p;
    }
    return flush(p) ? out : undefined;
  }
}

function hex4(b: Buffer, at: number): number {
  const s = b.subarray(at, at + 4).toString('latin1');
  return /^[0-9a-fA-F]{4}$/.test(s) ? parseInt(s, 16) : -1;
}
