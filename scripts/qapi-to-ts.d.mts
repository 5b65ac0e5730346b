// Types of scripts/qapi-to-ts.mjs (the unit tests import it).
export function tsRef(ref: unknown, types: Record<string, unknown>, prefix?: string): string;
export function tsMembers(
  data: Record<string, unknown>,
  types: Record<string, unknown>,
  prefix?: string,
  additional?: Record<string, unknown>,
): string;
export function tsType(name: string, t: unknown, types: Record<string, unknown>, prefix?: string): string;
export function qapiToTs(schema: object, prefix?: string): string;
