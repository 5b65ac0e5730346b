// A QMP control socket (QEMU Machine Protocol, docs/interop/qmp-spec): a greeting, capabilities
// negotiation, then commands answered with {"return": ...} or {"error": {"class", "desc"}}
// (echoing "id"), and asynchronous events. Input is a JSON stream, read as QEMU reads it
// (frontend/qmp/json.ts): no newline needed, several commands per read or one over many. Commands
// run one at a time, in order. Arguments are checked against each command's schema
// (frontend/qmp/schema.json, compiled at build time) with QEMU's error texts (arguments.ts).
// One client at a time per socket, as QEMU serves a monitor; others wait their turn.
// The client socket is read with recvmsg (native), not by Node: a command may carry fds in
// SCM_RIGHTS (getfd, add-fd), which Node's own reads would silently drop.
import { createServer, type Server, type Socket } from 'node:net';
import { closeSync, existsSync, unlinkSync } from 'node:fs';
import { native, isSyscallError } from '../../core/native.js';
import { describeError } from '../../core/errors.js';
import { JsonStreamParser, type JsonResult } from './json.js';

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
import { checkArguments } from './arguments.js';
export { checkArguments } from './arguments.js';

/** How long close() lets a client that stopped reading hold its pending output (QEMU closes at once). */
export const CLOSE_DRAIN_MS = 1000;

/** The wall clock with microseconds, as QEMU's event timestamps (g_get_real_time). */
export function qmpTimestamp(): { seconds: number; microseconds: number } {
  const us = BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000));
  return { seconds: Number(us / 1_000_000n), microseconds: Number(us % 1_000_000n) };
}

interface Request {
  msg: JsonResult;
  fds: number[];
}

/** QMP's VersionInfo: the greeting's "version" and query-version's return. */
export interface QmpVersion {
  qemu: { major: number; minor: number; micro: number };
  package: string;
}

/** How many clients may wait for the active one to leave (as QEMU's listen backlog holds them). */
export const MAX_WAITING = 32;
/** How often waiting clients are checked for having hung up (their fds released). */
const PRUNE_MS = 1000;
/** Bytes read from a client per recvmsg. */
const READ_BYTES = 64 * 1024;

/** One client's session: its parser, its queue of requests, its fds. */
class Session {
  negotiated = false;
  /** Requests parsed but not yet answered (commands run one at a time, in order). */
  readonly queue: Request[] = [];
  running = false;
  /** Fds received since the last complete request: they belong to the next one (SCM_RIGHTS). */
  unclaimedFds: number[] = [];
  /** Set once the session is over: nothing more is read, run or written. */
  over = false;
  /** A limit was exceeded: the session ends once its replies are out. */
  closing = false;
  constructor(
    readonly s: Socket,
    readonly fd: number,
    readonly parser: JsonStreamParser,
  ) {}
}

/**
 * A QMP monitor on one socket. One client is served at a time, as QEMU does; others wait (QEMU
 * leaves them in the listen backlog) and are greeted, in turn, when the active one leaves. Every
 * socket has its error handling from the moment it is accepted: a client that goes at any point
 * ends its own session and nothing else.
 */
export class QmpServer {
  private server: Server | undefined;
  private session: Session | undefined;
  private readonly waiting: Socket[] = [];
  private pruner: NodeJS.Timeout | undefined;
  private pruning = false;
  private shutting = false;
  /** Called once the server is closed (releases what commands kept, e.g. named fds). */
  onClose: (() => void) | undefined;
  /** Per-command refinements of argument errors (device_add: unknown device properties). */
  argumentError: Partial<Record<string, (args: Record<string, unknown>, e: QmpError) => QmpError>> = {};

  constructor(
    readonly path: string,
    private readonly commands: Record<string, QmpHandler>,
    private readonly version: QmpVersion,
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
          server.removeListener('error', reject);
          // After listen, an error of the listening socket (EMFILE on accept) is logged by
          // libuv's retry, never thrown: it must not end the VM.
          server.on('error', () => {});
          resolve();
        });
      } finally {
        process.umask(umask);
      }
    });
  }

  /** Clients connected, waiting for the active one to leave (for tests and the fuzzer). */
  get waitingCount(): number {
    return this.waiting.length;
  }

  private accept(s: Socket): void {
    // Its errors (EPIPE, ECONNRESET: the client went) end its session, or its wait, only.
    s.on('error', () => s.destroy());
    if (this.shutting) {
      s.destroy();
      return;
    }
    if (this.session) {
      this.waiting.push(s);
      s.once('close', () => {
        const i = this.waiting.indexOf(s);
        if (i >= 0) this.waiting.splice(i, 1);
      });
      this.pruner ??= setInterval(() => void this.prune(), PRUNE_MS).unref();
      if (this.waiting.length > MAX_WAITING) void this.prune();
      return;
    }
    this.start(s);
  }

  /**
   * A waiting client that hung up is only noticed by looking (its socket is not read while it
   * waits): poll each for POLLHUP and release those. Beyond MAX_WAITING the newest are refused,
   * as a full backlog refuses them.
   */
  private async prune(): Promise<void> {
    if (this.pruning) return;
    this.pruning = true;
    try {
      const n = native();
      const gone = n.constants.POLLHUP | n.constants.POLLERR;
      await Promise.all(
        this.waiting.map(async (s) => {
          const fd = socketFd(s);
          if (fd === undefined) return;
          const rev = await n.pollFd(fd, 0, 0).catch(() => 0);
          // Destroyed meanwhile: the fd may be another's by now; not destroyed: it is still s's.
          if (!s.destroyed && rev & gone) s.destroy();
        }),
      );
      while (this.waiting.length > MAX_WAITING) this.waiting.pop()!.destroy();
    } finally {
      this.pruning = false;
      if (!this.waiting.length && this.pruner) {
        clearInterval(this.pruner);
        this.pruner = undefined;
      }
    }
  }

  /** Greets a client and serves it until it goes. */
  private start(s: Socket): void {
    const fd = socketFd(s);
    if (fd === undefined || s.destroyed) {
      s.destroy();
      this.next();
      return;
    }
    let session: Session | undefined = undefined;
    const parser = new JsonStreamParser((msg) => session && this.received(session, msg));
    session = new Session(s, fd, parser);
    this.session = session;
    const ses = session;
    s.once('close', () => this.end(ses));
    this.send(ses, { QMP: { version: this.version, capabilities: [] } });
    void this.readLoop(ses);
  }

  /** The next waiting client, if any, becomes the active one. */
  private next(): void {
    while (!this.session && !this.shutting) {
      const s = this.waiting.shift();
      if (!s) return;
      if (!s.destroyed) this.start(s);
    }
  }

  /** Ends a session: what it held is released, the socket closed, the next client served. */
  private end(ses: Session): void {
    if (ses.over) return;
    ses.over = true;
    ses.parser.close();
    closeFds(ses.unclaimedFds);
    for (const r of ses.queue.splice(0)) closeFds(r.fds);
    ses.s.destroy();
    if (this.session === ses) {
      this.session = undefined;
      this.next();
    }
  }

  private received(ses: Session, msg: JsonResult): void {
    if (ses.over || ses.closing) return;
    ses.queue.push({ msg, fds: ses.unclaimedFds.splice(0) });
    // Over one of QEMU's limits: the error is answered, then the session ends (read no further).
    if ('limit' in msg && msg.limit) {
      ses.closing = true;
      ses.parser.close();
    }
    void this.drain(ses);
  }

  /** Reads the client with poll + recvmsg until it goes: a JSON stream, with its fds. */
  private async readLoop(ses: Session): Promise<void> {
    const n = native(),
      POLLIN = n.constants.POLLIN;
    // The socket may be destroyed at any await (its fd closed, the number reused): check first.
    const alive = () => !ses.over && !ses.closing && !ses.s.destroyed;
    // One receive buffer for the session: the parser copies what it keeps, so a 10 MB line costs
    // no 160 fresh 64 KiB buffers (malloc keeps such a heap after the garbage collector frees them).
    const buf = new Uint8Array(READ_BYTES);
    try {
      while (alive()) {
        const rev = await n.pollFd(ses.fd, POLLIN, 250);
        if (!alive()) return;
        if (!rev) continue;
        let msg;
        try {
          msg = n.recvFds(ses.fd, READ_BYTES, 16, buf);
        } catch (e) {
          if (isSyscallError(e, 'EAGAIN')) continue;
          break;
        }
        if (msg.data.length === 0) break; // EOF
        ses.unclaimedFds.push(...msg.fds);
        await ses.parser.feedAsync(msg.data);
      }
    } catch {
      /* poll failed: the session ends */
    }
    if (!ses.closing) this.end(ses);
  }

  private async drain(ses: Session): Promise<void> {
    if (ses.running) return;
    ses.running = true;
    try {
      for (let r; !ses.over && (r = ses.queue.shift()); ) {
        let reply: object;
        try {
          reply = await this.dispatch(ses, r);
        } finally {
          // What the command did not take (QEMU drops them too), before the reply: a client that
          // has its answer sees them gone.
          closeFds(r.fds);
        }
        this.send(ses, reply);
      }
    } finally {
      ses.running = false;
    }
    if (ses.closing && !ses.over && !ses.queue.length) this.finish(ses);
  }

  /** Ends a session once its output is out, or after CLOSE_DRAIN_MS if the client does not read it. */
  private finish(ses: Session): void {
    const t = setTimeout(() => this.end(ses), CLOSE_DRAIN_MS).unref();
    ses.s.end(() => {
      clearTimeout(t);
      this.end(ses);
    });
  }

  private send(ses: Session, obj: unknown): void {
    if (!ses.over && !ses.s.destroyed && ses.s.writable) ses.s.write(JSON.stringify(obj) + '\n');
  }

  /** monitor/qmp.c + qapi/qmp-dispatch.c: from one parsed value to its reply. */
  private async dispatch(ses: Session, r: Request): Promise<object> {
    const err = (cls: QmpErrorClass, desc: string) => ({ error: { class: cls, desc } });
    if ('error' in r.msg) return err('GenericError', r.msg.error);
    const msg = r.msg.value;
    if (!msg || typeof msg !== 'object' || Array.isArray(msg))
      return err('GenericError', 'QMP input must be a JSON object');
    const req = msg as Record<string, unknown>;
    const id = 'id' in req ? { id: req.id } : {};
    const fail = (e: unknown) => ({
      ...err(e instanceof QmpError ? e.errorClass : 'GenericError', describeError(e)),
      ...id,
    });
    for (const k in req) {
      const v = req[k];
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
    if (!ses.negotiated && command !== 'qmp_capabilities')
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
      if (!handler) return { return: this.capabilities(ses, args), ...id };
      const fds = r.fds;
      const ret = await handler(args, { takeFd: () => fds.shift() });
      return { return: ret ?? {}, ...id };
    } catch (e) {
      return fail(e);
    }
  }

  /** qmp_capabilities: only what the greeting offered (nothing: tsvmm has no out-of-band). */
  private capabilities(ses: Session, args: Record<string, unknown>): object {
    if (ses.negotiated)
      throw new QmpError('CommandNotFound', 'Capabilities negotiation is already complete, command ignored');
    for (const cap of (args.enable as string[] | undefined) ?? [])
      throw new QmpError('GenericError', `Capability '${cap}' not available`);
    ses.negotiated = true;
    return {};
  }

  /** Sends an event to the active client (if it has negotiated). */
  emit(event: string, data?: object): void {
    const ses = this.session;
    if (!ses || !ses.negotiated) return;
    this.send(ses, { event, ...(data ? { data } : {}), timestamp: qmpTimestamp() });
  }

  /**
   * Lets pending replies and events drain, then closes the socket and removes its path. A client that
   * stopped reading gets CLOSE_DRAIN_MS for that, not forever: it must not keep `tsvmm run` from exiting.
   * Waiting clients are let go.
   */
  async close(): Promise<void> {
    this.shutting = true;
    if (this.pruner) clearInterval(this.pruner);
    this.pruner = undefined;
    for (const s of this.waiting.splice(0)) s.destroy();
    const ses = this.session;
    if (ses && !ses.over && !ses.s.destroyed)
      await new Promise<void>((r) => {
        const t = setTimeout(r, CLOSE_DRAIN_MS);
        ses.s.end(() => {
          clearTimeout(t);
          r();
        });
      });
    if (ses) this.end(ses);
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    this.server = undefined;
    if (existsSync(this.path)) unlinkSync(this.path);
    this.onClose?.();
  }
}

/** The fd of a socket Node accepted (undefined once it is closed). */
function socketFd(s: Socket): number | undefined {
  const fd = (s as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
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
