// A small JSON Schema (2020-12, the subset configs/vm.schema.json uses) → TypeScript type
// converter, so the config's TypeScript type and its validator come from one schema
// (scripts/gen-validators.mjs writes generated/config-types.ts with it). What TypeScript cannot
// say (patterns, ranges, if/then, oneOf branches that only require keys) stays the validator's:
// the type is the schema's shape, never narrower than what the schema accepts.

const IDENT = /^[A-Za-z_$][A-Za-z0-9_$]*$/;

/** "vfio-pci" → "VfioPci" (a $defs name as a type name). */
export function typeName(prefix, def) {
  return (
    prefix +
    def
      .split(/[^A-Za-z0-9]+/)
      .filter(Boolean)
      .map((w) => w[0].toUpperCase() + w.slice(1))
      .join('')
  );
}

const doc = (s, indent) =>
  s.description ? `${indent}/** ${String(s.description).replace(/\*\//g, '*\\/').replace(/\n/g, ' ')} */\n` : '';

/** Whether a schema says anything about a value's shape (vs. only constrains it: required, not). */
function shapes(s) {
  return (
    typeof s === 'object' &&
    s !== null &&
    ['type', 'enum', 'const', '$ref', 'properties', 'items', 'oneOf', 'anyOf'].some((k) => k in s) &&
    !(
      ('oneOf' in s || 'anyOf' in s) &&
      !['type', 'enum', 'const', '$ref', 'properties', 'items'].some((k) => k in s) &&
      (s.oneOf ?? s.anyOf).every((b) => !shapes(b))
    )
  );
}

/**
 * TypeScript for one schema. `refName` maps a "#/$defs/x" reference to a type name.
 * `indent` is the current indentation (for object members).
 */
export function tsType(s, refName, indent = '') {
  if (s === true || s === undefined || (typeof s === 'object' && Object.keys(s).length === 0)) return 'unknown';
  if (s === false) return 'never';
  if (s.$ref) return refName(s.$ref);
  if ('const' in s) return JSON.stringify(s.const);
  if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join(' | ');
  const branches = (s.oneOf ?? s.anyOf ?? []).filter(shapes);
  if (branches.length && !s.properties && s.required?.length) {
    // Keys required here and described in the branches (a discriminated device's "type").
    const keys = s.required.map((k) => JSON.stringify(k)).join(' | ');
    return branches
      .map((b) => paren(tsType(b, refName, indent)))
      .map((t) => `Required<Pick<${t}, ${keys}>> & ${t}`)
      .join(' | ');
  }
  const own = ownType(s, refName, indent);
  if (branches.length) {
    const union = branches.map((b) => tsType(b, refName, indent));
    const u = union.length > 1 ? union.map(paren).join(' | ') : union[0];
    return own === undefined || own === 'Record<string, unknown>' ? u : `${own} & ${paren(u)}`;
  }
  return own ?? 'unknown';
}

const paren = (t) => (/[|&]/.test(t) && !t.startsWith('{') ? `(${t})` : t);

function ownType(s, refName, indent) {
  const types = Array.isArray(s.type) ? s.type : s.type ? [s.type] : s.properties ? ['object'] : [];
  if (!types.length) return undefined;
  return types
    .map((t) => {
      switch (t) {
        case 'string':
          return 'string';
        case 'integer':
        case 'number':
          return 'number';
        case 'boolean':
          return 'boolean';
        case 'null':
          return 'null';
        case 'array': {
          const item = tsType(s.items, refName, indent);
          return /^[A-Za-z0-9_.]+$/.test(item) ? `${item}[]` : `Array<${item}>`;
        }
        case 'object':
          return objectType(s, refName, indent);
        default:
          throw new Error(`schema-to-ts: unknown type ${JSON.stringify(t)}`);
      }
    })
    .join(' | ');
}

function objectType(s, refName, indent) {
  const required = new Set(s.required ?? []);
  const props = Object.entries(s.properties ?? {});
  if (!props.length) return s.additionalProperties === false ? 'Record<string, never>' : 'Record<string, unknown>';
  const inner = indent + '  ';
  const lines = props.map(
    ([k, p]) =>
      `${doc(p, inner)}${inner}${IDENT.test(k) ? k : JSON.stringify(k)}${required.has(k) ? '' : '?'}: ${tsType(p, refName, inner)};`,
  );
  if (s.additionalProperties !== false && s.additionalProperties !== undefined)
    lines.push(`${inner}[key: string]: unknown;`);
  return `{\n${lines.join('\n')}\n${indent}}`;
}

/**
 * A module declaring `rootName` for the schema and one exported type per $defs entry
 * (`prefix` + its name in PascalCase).
 */
export function schemaToTs(schema, { rootName, prefix }) {
  const defs = schema.$defs ?? {};
  const refName = (ref) => {
    const m = /^#\/\$defs\/(.+)$/.exec(ref);
    if (!m || !(m[1] in defs)) throw new Error(`schema-to-ts: unsupported $ref ${ref}`);
    return typeName(prefix, m[1]);
  };
  const out = [];
  out.push(`${doc(schema, '')}export type ${rootName} = ${tsType(schema, refName)};`);
  for (const [name, d] of Object.entries(defs))
    out.push(`${doc(d, '')}export type ${typeName(prefix, name)} = ${tsType(d, refName)};`);
  return out.join('\n\n') + '\n';
}
