// What every command module shares: strict option parsing (node:util parseArgs: unknown options
// are refused everywhere), per-command --help, and usage errors that exit 2.
import { TsvmmError } from '../../core/errors.js';
import { parseArgs } from 'node:util';

/** A wrong command line: printed with the command's usage, exit status 2. */
export class UsageError extends TsvmmError {
  constructor(
    message: string,
    readonly usage: string,
  ) {
    super('ERR_USAGE', message);
  }
}

type OptionSpec = { type: 'string' | 'boolean'; multiple?: boolean; short?: string };
export type Values = Record<string, string | boolean | (string | boolean)[] | undefined>;

/**
 * Parses a command's arguments. Returns undefined after printing the usage for --help / -h;
 * throws a UsageError for an unknown option, a missing value or the wrong number of positionals.
 */
export function parseCommand(
  args: string[],
  options: Record<string, OptionSpec>,
  usage: string,
  positionals: { min: number; max: number; what: string },
): { values: Values; positionals: string[] } | undefined {
  let r;
  try {
    r = parseArgs({
      args,
      options: { ...options, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
      strict: true,
    });
  } catch (e) {
    const err = e as Error & { code?: string };
    const unknown = /^Unknown option '([^']+)'/.exec(err.message);
    throw new UsageError(unknown ? `unknown option '${unknown[1]}'` : err.message.replace(/\.$/, ''), usage);
  }
  if (r.values.help) {
    process.stdout.write(usage + '\n');
    return undefined;
  }
  if (r.positionals.length < positionals.min || r.positionals.length > positionals.max)
    throw new UsageError(
      r.positionals.length < positionals.min
        ? `missing ${positionals.what}`
        : `unexpected argument '${r.positionals[positionals.max]}'`,
      usage,
    );
  return { values: r.values as Values, positionals: r.positionals };
}

export const str = (v: Values, k: string): string | undefined => v[k] as string | undefined;

/** A size with an optional K/M/G suffix (bytes when bare), as --memlock takes it. */
export function parseSize(s: string, what: string, usage: string): number {
  const m = /^(\d+)([KMG]?)(i?B)?$/i.exec(s.trim());
  if (!m) throw new UsageError(`${what}: '${s}' is not a size (e.g. 512M, 2G, or bytes)`, usage);
  return Number(m[1]) * ({ '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30 } as Record<string, number>)[m[2]!.toUpperCase()]!;
}
