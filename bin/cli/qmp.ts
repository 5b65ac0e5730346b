// tsvmm qmp: one QMP command to a running VM.
import { parseCommand, UsageError } from './common.js';

export const USAGE = `Usage: tsvmm qmp <socket> <command> [json-arguments]

Sends one QMP command to a VM started with 'tsvmm run --qmp <socket>' (or to QEMU's QMP socket)
and prints its "return" as JSON. Exit status 1 with the error's class and text on stderr.
Example: tsvmm qmp /run/vm.sock device_del '{"id": "edu"}'`;

export async function main(args: string[]): Promise<number> {
  const p = parseCommand(args, {}, USAGE, { min: 2, max: 3, what: 'socket and command' });
  if (!p) return 0;
  const [sock, command, json] = p.positionals as [string, string, string?];
  let qargs: Record<string, unknown> | undefined;
  if (json !== undefined) {
    try {
      qargs = JSON.parse(json) as Record<string, unknown>;
    } catch (e) {
      throw new UsageError(`json-arguments: ${(e as Error).message}`, USAGE);
    }
    if (!qargs || typeof qargs !== 'object' || Array.isArray(qargs))
      throw new UsageError('json-arguments must be a JSON object', USAGE);
  }
  const { qmpCall } = await import('../../frontend/qmp/client.js');
  const r = await qmpCall(sock, command, qargs);
  if ('error' in r) {
    process.stderr.write(`tsvmm qmp: ${r.error.class}: ${r.error.desc}\n`);
    return 1;
  }
  process.stdout.write(JSON.stringify(r.return, null, 2) + '\n');
  return 0;
}
