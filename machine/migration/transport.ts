// Where a migration stream goes and comes from, by QEMU's URIs: file:PATH, exec:COMMAND (a shell
// command reading the stream on stdin, or writing it on stdout for an incoming one), unix:PATH,
// tcp:HOST:PORT and fd:NAME (an fd a client passed with getfd). Each end is a Node stream; the
// stream format (stream.ts) sees a ByteSink or a ByteSource only.
import { spawn, type ChildProcess } from 'node:child_process';
import { createReadStream, createWriteStream, fstatSync } from 'node:fs';
import { createConnection, createServer, Socket, type Server } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import { once } from 'node:events';
import { TsvmmError } from '../../core/errors.js';
import { sandboxEntered } from '../../core/sandbox/index.js';
import { iterableSource, type ByteSink, type ByteSource } from './stream.js';

export type MigrationUri =
  | { kind: 'file'; path: string }
  | { kind: 'exec'; command: string }
  | { kind: 'unix'; path: string }
  | { kind: 'tcp'; host: string; port: number }
  | { kind: 'fd'; name: string };

const usage = 'file:PATH, exec:COMMAND, unix:PATH, tcp:HOST:PORT or fd:NAME';

export function parseMigrationUri(uri: string): MigrationUri {
  const bad = (why: string) =>
    new TsvmmError('ERR_MIGRATION', `migration URI '${uri}': ${why}`, { fix: `use ${usage}` });
  const i = uri.indexOf(':');
  const scheme = i < 0 ? uri : uri.slice(0, i),
    rest = i < 0 ? '' : uri.slice(i + 1);
  switch (scheme) {
    case 'file':
    case 'unix':
      if (!rest) throw bad('no path');
      return { kind: scheme, path: rest };
    case 'exec':
      if (!rest.trim()) throw bad('no command');
      return { kind: 'exec', command: rest };
    case 'fd':
      if (!rest) throw bad('no fd name');
      return { kind: 'fd', name: rest };
    case 'tcp': {
      const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(rest);
      const port = m ? Number(m[3]) : NaN;
      if (!m || port > 65535) throw bad('expected tcp:HOST:PORT');
      return { kind: 'tcp', host: m[1] ?? (m[2] || '0.0.0.0'), port };
    }
    default:
      throw bad(`unknown transport '${scheme}'`);
  }
}

/** Bytes a sink takes before a write waits: a few sections in the kernel's and Node's buffers, so the writer rarely waits for a turn of the event loop. */
const SINK_BUFFER = 4 * 2 ** 20;

/**
 * A Writable as a ByteSink with back-pressure: a write returns at once while less than
 * SINK_BUFFER bytes wait in the stream's buffer, else once it drained. (Waiting for each write's
 * own callback would cost a turn of the event loop per write: with vCPU 0 on the same thread,
 * one of its run slices.)
 */
function writableSink(s: Writable): ByteSink & { failed(): Error | undefined } {
  let error: Error | undefined;
  s.on('error', (e) => (error ??= e));
  return {
    failed: () => error,
    fd: () => {
      if (s.destroyed) return undefined;
      // A file stream's fd, or the handle's of a socket or pipe (Node's stream wraps it).
      const w = s as Writable & { fd?: unknown; _handle?: { fd?: unknown } };
      const fd = typeof w.fd === 'number' ? w.fd : w._handle?.fd;
      return typeof fd === 'number' && fd >= 0 ? fd : undefined;
    },
    // An empty write's callback comes after every earlier write's: they are all in the fd then.
    flush: () =>
      new Promise<void>((resolve, reject) => {
        if (error) return reject(error);
        s.write(new Uint8Array(0), (e) => (e ? reject(e) : error ? reject(error) : resolve()));
      }),
    write: (b) => {
      if (error) return Promise.reject(error);
      s.write(b);
      if (s.writableLength < SINK_BUFFER) return;
      return new Promise<void>((resolve, reject) => {
        const off = () => {
          s.off('drain', drained);
          s.off('close', closed);
        };
        const drained = () => {
          off();
          if (error) reject(error);
          else resolve();
        };
        const closed = () => {
          off();
          reject(error ?? new Error('the migration stream was closed'));
        };
        s.on('drain', drained);
        s.on('close', closed);
      });
    },
  };
}

export interface Outgoing {
  sink: ByteSink;
  /** Flushes and closes; resolves once the other end has it all (exec: the command exited 0). */
  finish(): Promise<void>;
  /** Drops the connection (a failed or cancelled migration). */
  abort(): void;
}

export interface Incoming {
  source: ByteSource;
  /** Closes the source; for exec:, once the command has exited (reaped before a sandbox is entered). */
  close(): Promise<void>;
}

/** The fd a client passed under `name` (QMP getfd), taken by the migration. */
export type TakeFd = (name: string) => number;

/**
 * Ends the stream; rejects if any of it could not be written (writes do not wait for their own
 * outcome), or if the other end closed before the end (an exec: command that exited early: Node
 * closes its stdin then, and an end() after that never finishes).
 */
function endWritable(s: Writable): Promise<void> {
  return new Promise((resolve, reject) => {
    const cut = () => reject(s.errored ?? new Error('the destination closed the stream before its end'));
    if (s.destroyed) return s.writableFinished ? resolve() : cut();
    s.once('error', reject);
    s.once('close', () => (s.writableFinished ? resolve() : cut()));
    s.end((e?: Error | null) => {
      const err = e ?? s.errored;
      if (err) reject(err);
      else resolve();
    });
  });
}

function childDone(child: ChildProcess, command: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const fail = (why: string) => reject(new TsvmmError('ERR_MIGRATION', `exec:${command}: ${why}`));
    if (child.exitCode !== null) return child.exitCode === 0 ? resolve() : fail(`exited with status ${child.exitCode}`);
    child.once('error', (e) => fail(e.message));
    child.once('exit', (code, sig) =>
      code === 0 ? resolve() : fail(sig ? `killed by ${sig}` : `exited with status ${String(code)}`),
    );
  });
}

function spawnShell(command: string, stdio: ['pipe' | 'ignore', 'pipe' | 'inherit', 'inherit']): ChildProcess {
  try {
    // Its own process group: ending it ends what the shell started too (sh -c may fork).
    return spawn('/bin/sh', ['-c', command], { stdio, detached: true });
  } catch (e) {
    throw new TsvmmError('ERR_MIGRATION', `exec:${command}: cannot start it: ${(e as Error).message}`, {
      fix: 'under the sandbox (--sandbox on) tsvmm starts no processes: use file:, unix:, tcp: or fd:',
      cause: e,
    });
  }
}

/** Ends an exec: command and whatever it started. */
function killGroup(child: ChildProcess): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, 'SIGTERM');
  } catch {
    /* gone already */
  }
}

function connect(u: Extract<MigrationUri, { kind: 'unix' | 'tcp' }>): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = u.kind === 'unix' ? createConnection(u.path) : createConnection(u.port, u.host);
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', (e) =>
      reject(new TsvmmError('ERR_MIGRATION', `connecting to ${describe(u)}: ${e.message}`, { cause: e })),
    );
  });
}

const describe = (u: MigrationUri): string =>
  u.kind === 'tcp'
    ? `tcp:${u.host}:${u.port}`
    : u.kind === 'exec'
      ? `exec:${u.command}`
      : `${u.kind}:${'path' in u ? u.path : u.name}`;

function fdStream(fd: number, mode: 'r' | 'w'): Readable | Writable {
  if (fstatSync(fd).isSocket()) return new Socket({ fd, readable: mode === 'r', writable: mode === 'w' });
  return mode === 'r' ? createReadStream('', { fd }) : createWriteStream('', { fd });
}

/** Under the sandbox there are no new processes or sockets: a file or a passed fd only. */
function checkSandbox(u: MigrationUri): void {
  if (sandboxEntered() && (u.kind === 'exec' || u.kind === 'unix' || u.kind === 'tcp'))
    throw new TsvmmError('ERR_MIGRATION', `${describe(u)}: the sandbox allows no new processes or sockets`, {
      fix: 'migrate to file:PATH or to an fd passed with getfd (fd:NAME), or run the VM with --sandbox off',
    });
}

/** Opens the destination of an outgoing migration. */
export async function openOutgoing(uri: string, takeFd?: TakeFd): Promise<Outgoing> {
  const u = parseMigrationUri(uri);
  checkSandbox(u);
  let w: Writable;
  let child: ChildProcess | undefined;
  switch (u.kind) {
    case 'file':
      w = createWriteStream(u.path, { mode: 0o600 });
      await new Promise<void>((resolve, reject) => {
        w.once('open', () => resolve());
        w.once('error', (e) =>
          reject(new TsvmmError('ERR_MIGRATION', `cannot write ${u.path}: ${e.message}`, { cause: e })),
        );
      });
      break;
    case 'exec':
      child = spawnShell(u.command, ['pipe', 'inherit', 'inherit']);
      child.on('error', () => {}); // childDone reports it
      w = child.stdin!;
      break;
    case 'unix':
    case 'tcp':
      w = await connect(u);
      break;
    case 'fd': {
      if (!takeFd) throw new TsvmmError('ERR_MIGRATION', `fd:${u.name}: no fds were passed here (QMP getfd)`);
      w = fdStream(takeFd(u.name), 'w') as Writable;
      break;
    }
  }
  const sink = writableSink(w);
  return {
    sink,
    finish: async () => {
      try {
        await endWritable(w);
      } catch (e) {
        if (!child) throw e;
        // The command went before it took the whole stream: its exit says why, else say it did.
        await childDone(child, (u as { command: string }).command);
        throw new TsvmmError('ERR_MIGRATION', `${describe(u)}: exited (status 0) before it read the whole stream`, {
          cause: e,
        });
      }
      if (child) await childDone(child, (u as { command: string }).command);
      const e = sink.failed();
      if (e) throw new TsvmmError('ERR_MIGRATION', `${describe(u)}: ${e.message}`, { cause: e });
    },
    abort: () => {
      w.destroy();
      if (child) killGroup(child);
    },
  };
}

/**
 * Opens the source of an incoming migration. For unix: and tcp: it listens and resolves
 * `ready` at once; the source's reads wait for the one connection it accepts.
 */
export async function openIncoming(uri: string, takeFd?: TakeFd): Promise<Incoming> {
  const u = parseMigrationUri(uri);
  checkSandbox(u);
  switch (u.kind) {
    case 'file': {
      // Reads of a few MiB: a section is up to 1 MiB, and each read is a trip through the thread pool.
      const r = createReadStream(u.path, { highWaterMark: 4 * 2 ** 20 });
      await new Promise<void>((resolve, reject) => {
        r.once('open', () => resolve());
        r.once('error', (e) =>
          reject(new TsvmmError('ERR_MIGRATION', `cannot read ${u.path}: ${e.message}`, { cause: e })),
        );
      });
      return { source: iterableSource(r), close: async () => void r.destroy() };
    }
    case 'exec': {
      const child = spawnShell(u.command, ['ignore', 'pipe', 'inherit']);
      child.on('error', () => {});
      return {
        source: iterableSource(child.stdout!),
        close: async () => {
          child.stdout!.destroy();
          if (child.exitCode !== null || child.signalCode !== null) return;
          const exited = once(child, 'exit');
          killGroup(child);
          await exited;
        },
      };
    }
    case 'fd': {
      if (!takeFd) throw new TsvmmError('ERR_MIGRATION', `fd:${u.name}: no fds were passed here (QMP getfd)`);
      const r = fdStream(takeFd(u.name), 'r') as Readable;
      return { source: iterableSource(r), close: async () => void r.destroy() };
    }
    case 'unix':
    case 'tcp': {
      const server: Server = createServer();
      await new Promise<void>((resolve, reject) => {
        server.once('error', (e) =>
          reject(new TsvmmError('ERR_MIGRATION', `cannot listen on ${describe(u)}: ${e.message}`, { cause: e })),
        );
        if (u.kind === 'unix') server.listen(u.path, resolve);
        else server.listen(u.port, u.host, resolve);
      });
      const conn = new Promise<Socket>((resolve) => server.once('connection', resolve));
      let sock: Socket | undefined;
      let source: ByteSource | undefined;
      const open = async (): Promise<ByteSource> => {
        if (!source) {
          sock = await conn;
          server.close(); // one source only
          source = iterableSource(sock);
        }
        return source;
      };
      return {
        source: {
          read: async (n) => (await open()).read(n),
          readParts: async (n) => (await open()).readParts!(n),
        },
        close: async () => {
          sock?.destroy();
          server.close();
        },
      };
    }
  }
}
