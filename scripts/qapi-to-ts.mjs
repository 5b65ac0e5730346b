// QEMU's QAPI schema language (frontend/qmp/schema.json) as TypeScript: each type under a Qmp prefix, and
// two maps the library types its API with — QmpCommands (name → {args, returns}) and QmpEvents (name → data).
// Used by gen-validators.mjs at build time and by test/unit/lib-types.test.ts.

const BUILTIN = { str: 'string', int: 'number', number: 'number', bool: 'boolean', any: 'unknown', null: 'null' };

const key = (k) => (/^[A-Za-z_$][\w$]*$/.test(k) ? k : JSON.stringify(k));

/** A QAPI type reference ('str', a type name, or [T]) as a TypeScript type. */
export function tsRef(ref, types, prefix = 'Qmp') {
  if (Array.isArray(ref)) {
    const el = tsRef(ref[0], types, prefix);
    return /^[\w$]+$/.test(el) ? `${el}[]` : `Array<${el}>`;
  }
  if (BUILTIN[ref]) return BUILTIN[ref];
  if (!types[ref]) throw new Error(`frontend/qmp/schema.json: unknown type '${ref}'`);
  return prefix + ref;
}

/** A QAPI member list ({'*opt': T, req: T}, plus `additional`, all optional) as an object type. */
export function tsMembers(data, types, prefix = 'Qmp', additional = {}) {
  const lines = [];
  for (const [k, ref] of Object.entries(data)) {
    const opt = k.startsWith('*');
    lines.push(`${key(k.replace(/^\*/, ''))}${opt ? '?' : ''}: ${tsRef(ref, types, prefix)};`);
  }
  for (const [k, ref] of Object.entries(additional)) lines.push(`${key(k)}?: ${tsRef(ref, types, prefix)};`);
  return lines.length ? `{ ${lines.join(' ')} }` : 'Record<string, never>';
}

/** One named type's declaration. */
export function tsType(name, t, types, prefix = 'Qmp') {
  const id = prefix + name;
  if (t.enum) return `export type ${id} = ${t.enum.map((v) => JSON.stringify(v)).join(' | ')};`;
  if (t.branches) {
    // The base's members, its discriminator narrowed to each branch's value, and that branch's members.
    const base = `Omit<${tsMembers(t.base, types, prefix)}, ${JSON.stringify(t.discriminator)}>`;
    const branches = Object.entries(t.branches).map(
      ([c, b]) => `({ ${key(t.discriminator)}: ${JSON.stringify(c)} } & ${tsRef(b, types, prefix)})`,
    );
    return `export type ${id} = ${base} & (${branches.join(' | ')});`;
  }
  if (t.data) return `export type ${id} = ${tsMembers(t.data, types, prefix)};`;
  throw new Error(`frontend/qmp/schema.json: type '${name}' is neither an enum, a struct nor a union`);
}

/** The whole schema: its types, QmpCommands and QmpEvents. */
export function qapiToTs(schema, prefix = 'Qmp') {
  const { types, commands, events } = schema;
  const out = Object.entries(types).map(([n, t]) => tsType(n, t, types, prefix));
  out.push('/** Each QMP command tsvmm implements: its arguments and what it returns. */');
  out.push(`export interface ${prefix}Commands {`);
  for (const [n, c] of Object.entries(commands)) {
    const args = tsMembers(c.data ?? {}, types, prefix, c.additional ?? {});
    const returns = c.returns ? tsRef(c.returns, types, prefix) : 'Record<string, never>';
    out.push(`  ${key(n)}: { args: ${args}; returns: ${returns} };`);
  }
  out.push('}');
  out.push('/** Each QMP event tsvmm emits: its data (undefined for an event without data). */');
  out.push(`export interface ${prefix}Events {`);
  for (const [n, e] of Object.entries(events))
    out.push(`  ${key(n)}: ${e.data ? tsMembers(e.data, types, prefix) : 'undefined'};`);
  out.push('}');
  out.push("/** The events' names, for checks at run time. */");
  out.push(
    `export const ${prefix.toLowerCase()}EventNames: ReadonlyArray<keyof ${prefix}Events> = ${JSON.stringify(Object.keys(events))};`,
  );
  return out.join('\n') + '\n';
}
