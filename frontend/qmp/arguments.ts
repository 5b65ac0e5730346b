// A QMP command's arguments against its schema (frontend/qmp/schema.json, compiled into standalone validators at
// build time), with QEMU's error texts and in the order QEMU's input visitor meets the members: used by the QMP
// server and by the library, which takes the same arguments.
import { validators, commandArgs } from '../../generated/qmp-validators.js';
import type { ErrorObject } from 'ajv';
import { CommandError as QmpError } from '../commands.js';

type ArgValidator = ((data: unknown) => boolean) & { errors?: ErrorObject[] | null };

const argValidators = validators as unknown as Record<string, ArgValidator>;

/** QEMU's qobject-input-visitor names a member by its path: "a.b", "list[0]". */
function memberName(path: string[]): string {
  let s = '';
  for (const p of path) s += /^\d+$/.test(p) && s ? `[${p}]` : s ? `.${p}` : p;
  return s;
}

const splitPointer = (ptr: string) =>
  ptr
    .split('/')
    .filter(Boolean)
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));

/**
 * Checks a command's arguments against its schema; throws QEMU's error for the first problem in
 * the order QEMU's visitor meets them: declared members in order, unexpected members last.
 */
export function checkArguments(command: string, args: Record<string, unknown>): void {
  const v = argValidators[command];
  if (!v) return;
  const order = (commandArgs[command as keyof typeof commandArgs] as readonly string[] | undefined) ?? [];
  // A client's object may have a hundred thousand members: the validator (all errors) would make an
  // error for each undeclared one, in one turn of vCPU 0's thread. The answer is the declared
  // members' first error, else the first undeclared member's: check those alone first.
  if (Object.keys(args).length > 2 * order.length + 16) {
    const few: Record<string, unknown> = {};
    for (const k of order) if (Object.prototype.hasOwnProperty.call(args, k)) few[k] = args[k];
    for (const k in args)
      if (!order.includes(k)) {
        Object.defineProperty(few, k, { value: args[k], enumerable: true, writable: true, configurable: true });
        break;
      }
    if (!v(few)) return argumentError(v, order, few);
  }
  if (!v(args)) argumentError(v, order, args);
}

/** Throws QEMU's error for the first of the validator's errors in QEMU's order. */
function argumentError(v: ArgValidator, order: readonly string[], args: Record<string, unknown>): never {
  const rank = (e: ErrorObject) => {
    const first = splitPointer(e.instancePath)[0] ?? (e.params as { missingProperty?: string }).missingProperty ?? '';
    const i = order.indexOf(first);
    return (e.keyword === 'additionalProperties' && !e.instancePath ? 1e6 : 0) + (i < 0 ? order.length : i);
  };
  // The first by rank (a scan, not a sort: a client's object may have a hundred thousand members).
  let e = v.errors![0]!,
    best = rank(e);
  for (const x of v.errors!) {
    const r = rank(x);
    if (r < best) [e, best] = [x, r];
  }
  const at = splitPointer(e.instancePath);
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'required':
      throw new QmpError('GenericError', `Parameter '${memberName([...at, String(p.missingProperty)])}' is missing`);
    case 'additionalProperties':
      throw new QmpError(
        'GenericError',
        `Parameter '${memberName([...at, String(p.additionalProperty)])}' is unexpected`,
      );
    case 'type':
      throw new QmpError('GenericError', `Invalid parameter type for '${memberName(at)}', expected: ${String(p.type)}`);
    case 'enum':
      throw new QmpError(
        'GenericError',
        `Parameter '${memberName(at)}' does not accept value '${String(e.data ?? getAt(args, at))}'`,
      );
    default:
      throw new QmpError('GenericError', `Parameter '${memberName(at)}': ${e.message ?? e.keyword}`);
  }
}

function getAt(v: unknown, path: string[]): unknown {
  for (const p of path) v = (v as Record<string, unknown>)?.[p];
  return v;
}
