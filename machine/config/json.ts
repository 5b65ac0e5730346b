// A config file's JSON, read strictly: a syntax error says where (line:column, as an editor counts
// them), and a key given twice in one object is refused, as QMP's parser refuses it (JSON.parse
// would keep the last one silently, so one of the two settings would be ignored).

export class JsonSyntaxError extends Error {
  constructor(
    message: string,
    readonly line: number,
    readonly column: number,
    /** The JSON pointer of the object a duplicate key is in (duplicates only). */
    readonly pointer?: string,
  ) {
    super(message);
  }
}

/** Parses `text` as JSON; throws a JsonSyntaxError with line and column for bad syntax and duplicate keys. */
export function parseJsonStrict(text: string): unknown {
  let i = 0;
  const at = (pos: number) => {
    const before = text.slice(0, pos);
    const line = before.split('\n').length;
    return { line, column: pos - before.lastIndexOf('\n') };
  };
  const fail = (what: string, pos = i, pointer?: string): never => {
    const { line, column } = at(pos);
    throw new JsonSyntaxError(what, line, column, pointer);
  };
  const shown = (pos: number) =>
    pos >= text.length ? 'the end of the file' : `${JSON.stringify(text.slice(pos, pos + 1))}`;
  const ws = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i]!)) i++;
  };
  const str = (): string => {
    const start = i;
    i++;
    while (i < text.length && text[i] !== '"') {
      const c = text.charCodeAt(i);
      if (c < 0x20) fail('a control character (a raw newline or tab?) inside a string: write it as \\n or \\t');
      if (text[i] === '\\') {
        if (text[i + 1] === 'u') {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) fail('a \\u escape needs 4 hex digits', i);
          i += 6;
          continue;
        }
        if (!'"\\/bfnrt'.includes(text[i + 1] ?? '')) fail(`unknown escape \\${text[i + 1] ?? ''} in a string`, i);
        i += 2;
        continue;
      }
      i++;
    }
    if (i >= text.length) fail('a string is not closed (a missing ")', start);
    i++;
    return JSON.parse(text.slice(start, i)) as string;
  };
  const value = (ptr: string): void => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const keys = new Set<string>();
      ws();
      if (text[i] === '}') {
        i++;
        return;
      }
      for (;;) {
        ws();
        if (text[i] !== '"')
          fail(
            text[i] === '}'
              ? 'a comma before "}" (JSON allows no trailing comma)'
              : `expected a key in double quotes, found ${shown(i)}`,
          );
        const keyAt = i;
        const key = str();
        if (keys.has(key)) fail(`duplicate key ${JSON.stringify(key)}`, keyAt, ptr);
        keys.add(key);
        ws();
        if (text[i] !== ':') fail(`expected ":" after the key ${JSON.stringify(key)}, found ${shown(i)}`);
        i++;
        value(`${ptr}/${key.replace(/~/g, '~0').replace(/\//g, '~1')}`);
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === '}') {
          i++;
          return;
        }
        fail(`expected "," or "}" after a value, found ${shown(i)}`);
      }
    }
    if (c === '[') {
      i++;
      ws();
      if (text[i] === ']') {
        i++;
        return;
      }
      for (let n = 0; ; n++) {
        ws();
        if (text[i] === ']') fail('a comma before "]" (JSON allows no trailing comma)');
        value(`${ptr}/${n}`);
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === ']') {
          i++;
          return;
        }
        fail(`expected "," or "]" after a value, found ${shown(i)}`);
      }
    }
    if (c === '"') {
      str();
      return;
    }
    const m = /^(?:-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null)/.exec(text.slice(i, i + 400));
    if (!m) fail(`expected a value, found ${shown(i)}${c === "'" ? ' (JSON strings take double quotes)' : ''}`);
    i += m![0].length;
  };
  value('');
  ws();
  if (i < text.length) fail(`unexpected ${shown(i)} after the end of the JSON value`);
  return JSON.parse(text);
}
