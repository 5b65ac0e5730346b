// A QMP control socket (QEMU Machine Protocol, docs/interop/qmp-spec): a greeting, capabilities
// negotiation, then commands answered with {"return": ...} or {"error": {"class", "desc"}}
// (echoing "id"), and asynchronous events. Input is a JSON stream, read as QEMU reads it
// (frontend/qmp/json.ts): no newline needed, several commands per read or one over many. Commands
// run one at a time, in order. Arguments are checked against each command's schema
// (frontend/qmp/schema.json, compiled at build time) with QEMU's error texts.
// One client at a time, as QEMU's default; a second one is told so and disconnected.
// The client socket is read with recvmsg (native), not by Node: a command may carry fds in
// SCM_RIGHTS (getfd, add-fd), which Node's own reads would silently drop.
import { createServer, type Server, type Socket } from 'node:net';
import { closeSync, existsSync, unlinkSync } from 'node:fs';
import { native, isSyscallError } from '../../core/native.js';
import { JsonStreamParser, type JsonResult } from './json.js';
import { validators, commandArgs } from '../../generated/qmp-validators.js';
import type { ErrorObject } from 'ajv';

// The command layer's errors and handlers are QMP's (frontend/commands.ts).
export {
  CommandError as QmpError,
  type CommandErrorClass as QmpErrorClass,
  type CommandContext as QmpContext,
  type CommandHandler as QmpHandler,
} from '../commands.js';
import {
  CommandError as QmpError,
  type CommandErrorClass as QmpErrorClass,
  type CommandHandler as QmpHandler,
} from '../commands.js';

type ArgValidator = ((data: unknown) => boolean) & { errors?: ErrorObject[] | null };
/** How long close() lets a client that stopped reading hold its pending output (QEMU closes at once). */
export const CLOSE_DRAIN_MS = 1000;

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
  if (!v || v(args)) return;
  const order = (commandArgs[command as keyof typeof commandArgs] as readonly string[] | undefined) ?? [];
  const rank = (e: ErrorObject) => {
    const first = splitPointer(e.instancePath)[0] ?? (e.params as { missingProperty?: string }).missingProperty ?? '';
    const i = order.indexOf(first);
    return (e.keyword === 'additionalProperties' && !e.instancePath ? 1e6 : 0) + (i < 0 ? order.length : i);
  };
  const e = [...(v.errors ?? [])].sort((a, b) => rank(a) - rank(b))[0]!;
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

/** The wall clock with microseconds, as QEMU's event timestamps (g_get_real_time). */
export function qmpTimestamp(): { seconds: number; microseconds: number } {
  const us = BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000));
  return { seconds: Number(us / 1_000_000n), microseconds: Number(us % 1_000_000n) };
}

interface Request {
  msg: JsonResult;
  fds: number[];
}

export class QmpServer {
  private server: Server | undefined;
  private client: Socket | undefined;
  private negotiated = false;
  /** Called once the server is closed (releases what commands kept, e.g. named fds). */
  onClose: (() => void) | undefined;
  /** Fds received since the last complete request: they belong to the next one (SCM_RIGHTS). */
  private unclaimedFds: number[] = [];
  /** Requests parsed but not yet answered (commands run one at a time, in order). */
  private queue: Request[] = [];
  private running = false;
  /** Per-command refinements of argument errors (device_add: unknown device properties). */
  argumentError: Partial<Record<string, (args: Record<string, unknown>, e: QmpError) => QmpError>> = {};

  constructor(
    readonly path: string,
    private readonly commands: Record<string, QmpHandler>,
    private readonly version: { major: number; minor: number; micro: number },
  ) {}

  listen(): Promise<void> {
    if (existsSync(this.path)) unlinkSync(this.path); // a stale socket from a previous run
    const server = createServer({ pauseOnConnect: true }, (s) => this.accept(s));
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      // The control socket is the VM: owner only from the moment it exists. bind(2), which
      // listen() calls before it returns, gives the file the umask's mode; a chmod afterwards
      // would leave a window in which anyone could connect.
      const umask = process.umask(0o177);
      try {
        server.listen(this.path, () => {
          server.unref();
          resolve();
        });
      } finally {
        process.umask(umask);
      }
    });
  }

  private accept(s: Socket): void {
    if (this.client) {
      // The client may be gone before this write lands (EPIPE): its error is its own.
      s.on('error', () => s.destroy());
      s.end(JSON.stringify({ error: { class: 'GenericError', desc: 'another QMP client is connected' } }) + '\n');
      return;
    }
    this.client = s;
    this.negotiated = false;
    const gone = () => {
      if (this.client === s) this.client = undefined;
    };
    s.on('close', gone);
    s.on('error', gone);
    this.send(s, { QMP: { version: { qemu: this.version, package: 'tsvmm' }, capabilities: [] } });
    const fd = (s as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (typeof fd !== 'number' || fd < 0) {
      s.destroy(new Error('QMP: no fd for the client socket'));
      return;
    }
    void this.readLoop(s, fd);
  }

  /** Reads the client with poll + recvmsg until it goes: a JSON stream, with its fds. */
  private async readLoop(s: Socket, fd: number): Promise<void> {
    const n = native(),
      POLLIN = n.constants.POLLIN;
    const alive = () => this.client === s && !s.destroyed;
    const parser = new JsonStreamParser((msg) => {
      this.queue.push({ msg, fds: this.unclaimedFds.splice(0) });
      void this.drain(s);
    });
    try {
      while (alive()) {
        const rev = await n.pollFd(fd, POLLIN, 250);
        // The socket may have been destroyed meanwhile (its fd number reused): check first.
        if (!alive()) break;
        if (!rev) continue;
        let msg;
        try {
          msg = n.recvFds(fd, 64 * 1024, 16);
        } catch (e) {
          if (isSyscallError(e, 'EAGAIN')) continue;
          break;
        }
        if (msg.data.length === 0) break; // EOF
        this.unclaimedFds.push(...msg.fds);
        parser.feed(msg.data);
      }
    } finally {
      closeFds(this.unclaimedFds.splice(0));
      for (const r of this.queue.splice(0)) closeFds(r.fds);
      if (!s.destroyed) s.destroy();
      if (this.client === s) this.client = undefined;
    }
  }

  private async drain(s: Socket): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      for (let r; (r = this.queue.shift()); ) {
        let reply: object;
        try {
          reply = await this.dispatch(r);
        } finally {
          // What the command did not take (QEMU drops them too), before the reply: a client that
          // has its answer sees them gone.
          closeFds(r.fds);
        }
        if (this.client === s) this.send(s, reply);
      }
    } finally {
      this.running = false;
    }
  }

  private send(s: Socket, obj: unknown): void {
    if (!s.destroyed) s.write(JSON.stringify(obj) + '\n');
  }

  /** monitor/qmp.c + qapi/qmp-dispatch.c: from one parsed value to its reply. */
  private async dispatch(r: Request): Promise<object> {
    const err = (cls: QmpErrorClass, desc: string) => ({ error: { class: cls, desc } });
    if ('error' in r.msg) return err('GenericError', r.msg.error);
    const msg = r.msg.value;
    if (!msg || typeof msg !== 'object' || Array.isArray(msg))
      return err('GenericError', 'QMP input must be a JSON object');
    const req = msg as Record<string, unknown>;
    const id = 'id' in req ? { id: req.id } : {};
    const fail = (e: unknown) => ({
      ...err(e instanceof QmpError ? e.errorClass : 'GenericError', (e as Error).message),
      ...id,
    });
    for (const [k, v] of Object.entries(req)) {
      if (k === 'execute') {
        if (typeof v !== 'string')
          return fail(new QmpError('GenericError', "QMP input member 'execute' must be a string"));
      } else if (k === 'arguments') {
        if (!v || typeof v !== 'object' || Array.isArray(v))
          return fail(new QmpError('GenericError', "QMP input member 'arguments' must be an object"));
      } else if (k !== 'id') return fail(new QmpError('GenericError', `QMP input member '${k}' is unexpected`));
    }
    if (!('execute' in req)) return fail(new QmpError('GenericError', "QMP input lacks member 'execute'"));
    const command = req.execute as string;
    const args = (req.arguments ?? {}) as Record<string, unknown>;
    if (!this.negotiated && command !== 'qmp_capabilities')
      return fail(new QmpError('CommandNotFound', "Expecting capabilities negotiation with 'qmp_capabilities'"));
    const handler = command === 'qmp_capabilities' ? undefined : this.commands[command];
    if (command !== 'qmp_capabilities' && !handler)
      return fail(new QmpError('CommandNotFound', `The command ${command} has not been found`));
    try {
      try {
        checkArguments(command, args);
      } catch (e) {
        const refine = this.argumentError[command];
        throw refine && e instanceof QmpError ? refine(args, e) : e;
      }
      if (!handler) return { return: this.capabilities(args), ...id };
      const fds = r.fds;
      const ret = await handler(args, { takeFd: () => fds.shift() });
      return { return: ret ?? {}, ...id };
    } catch (e) {
      return fail(e);
    }
  }

  /** qmp_capabilities: only what the greeting offered (nothing: tsvmm has no out-of-band). */
  private capabilities(args: Record<string, unknown>): object {
    if (this.negotiated)
      throw new QmpError('CommandNotFound', 'Capabilities negotiation is already complete, command ignored');
    for (const cap of (args.enable as string[] | undefined) ?? [])
      throw new QmpError('GenericError', `Capability '${cap}' not available`);
    this.negotiated = true;
    return {};
  }

  /** Sends an event to the client (if one has negotiated). */
  emit(event: string, data?: object): void {
    if (!this.client || !this.negotiated) return;
    this.send(this.client, { event, ...(data ? { data } : {}), timestamp: qmpTimestamp() });
  }

  /**
   * Lets pending replies and events drain, then closes the socket and removes its path. A client that
   * stopped reading gets CLOSE_DRAIN_MS for that, not forever: it must not keep `tsvmm run` from exiting.
   */
  async close(): Promise<void> {
    const c = this.client;
    if (c && !c.destroyed)
      await new Promise<void>((r) => {
        const t = setTimeout(r, CLOSE_DRAIN_MS);
        c.end(() => {
          clearTimeout(t);
          r();
        });
      });
    c?.destroy();
    this.client = undefined;
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    this.server = undefined;
    if (existsSync(this.path)) unlinkSync(this.path);
    this.onClose?.();
  }
}

function closeFds(fds: number[]): void {
  for (const f of fds.splice(0)) {
    try {
      closeSync(f);
    } catch {
      /* already gone */
    }
  }
}
