// Types of scripts/schema-to-ts.mjs (the unit tests import it).
export function typeName(prefix: string, def: string): string;
export function tsType(schema: unknown, refName: (ref: string) => string, indent?: string): string;
export function schemaToTs(schema: object, opts: { rootName: string; prefix: string }): string;
