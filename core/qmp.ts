// A QMP-compatible control socket (QEMU Machine Protocol, docs/interop/qmp-spec): one JSON
// object per line; a greeting, capabilities negotiation, then commands answered with
// {"return": ...} or {"error": {"class", "desc"}} (echoing "id"), and asynchronous events.
// One client at a time, as QEMU's default; a second one is told so and disconnected.
// The client socket is read with recvmsg (native), not by Node: a command may carry fds in
// SCM_RIGHTS (getfd, add-fd), which Node's own reads would silently drop.
import { createServer, type Server, type Socket } from 'node:net';
import { chmodSync, closeSync, existsSync, unlinkSync } from 'node:fs';
import { native, isSyscallError } from './native.js';

export class QmpError extends Error {
  constructor(readonly errorClass: 'GenericError' | 'CommandNotFound' | 'DeviceNotFound', desc: string) { super(desc); }
}

/** What a command may use besides its arguments: the fds that came with it. */
export interface QmpContext { takeFd(): number | undefined }
/** A command: its result (or a promise of it) becomes the reply's "return". */
export type QmpHandler = (args: Record<string, unknown>, ctx: QmpContext) => unknown;

export class QmpServer {
  private server: Server | undefined;
  private client: Socket | undefined;
  private negotiated = false;
  /** Called once the server is closed (releases what commands kept, e.g. named fds). */
  onClose: (() => void) | undefined;
  /** Fds received with the command being read (SCM_RIGHTS); closed if no command takes them. */
  private pendingFds: number[] = [];

  constructor(readonly path: string, private readonly commands: Record<string, QmpHandler>, private readonly version: { major: number; minor: number; micro: number }) {}

  listen(): Promise<void> {
    if (existsSync(this.path)) unlinkSync(this.path); // a stale socket from a previous run
    const server = createServer({ pauseOnConnect: true }, (s) => this.accept(s));
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.path, () => {
        chmodSync(this.path, 0o600); // the control socket is the VM: owner only
        server.unref();
        resolve();
      });
    });
  }

  private accept(s: Socket): void {
    if (this.client) {
      s.end(JSON.stringify({ error: { class: 'GenericError', desc: 'another QMP client is connected' } }) + '\n');
      return;
    }
    this.client = s;
    this.negotiated = false;
    const gone = () => { if (this.client === s) this.client = undefined; };
    s.on('close', gone);
    s.on('error', gone);
    this.send(s, { QMP: { version: { qemu: this.version, package: 'tsvmm' }, capabilities: [] } });
    const fd = (s as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (typeof fd !== 'number' || fd < 0) { s.destroy(new Error('QMP: no fd for the client socket')); return; }
    void this.readLoop(s, fd);
  }

  /** Reads the client with poll + recvmsg until it goes: lines of JSON, with their fds. */
  private async readLoop(s: Socket, fd: number): Promise<void> {
    const n = native(), POLLIN = n.constants.POLLIN!;
    let buf = '';
    const alive = () => this.client === s && !s.destroyed;
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
        this.pendingFds.push(...msg.fds);
        buf += Buffer.from(msg.data).toString('utf8');
        let i: number;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i).trim();
          buf = buf.slice(i + 1);
          if (line) this.handle(s, line);
        }
        // Fds belong to the command they came with; a complete command that did not take
        // them had no use for them (QEMU drops them too).
        if (!buf.trim()) this.dropPendingFds();
      }
    } finally {
      this.dropPendingFds();
      if (!s.destroyed) s.destroy();
      if (this.client === s) this.client = undefined;
    }
  }

  private dropPendingFds(): void {
    for (const f of this.pendingFds.splice(0)) { try { closeSync(f); } catch { /* already gone */ } }
  }

  private send(s: Socket, obj: unknown): void {
    if (!s.destroyed) s.write(JSON.stringify(obj) + '\n');
  }

  private handle(s: Socket, line: string): void {
    let msg: { execute?: unknown; arguments?: unknown; id?: unknown };
    try {
      msg = JSON.parse(line);
    } catch (e) {
      this.send(s, { error: { class: 'GenericError', desc: `JSON parse error, ${(e as Error).message}` } });
      return;
    }
    const id = msg && typeof msg === 'object' && 'id' in msg ? { id: msg.id } : {};
    const reply = (body: object) => this.send(s, { ...body, ...id });
    if (!msg || typeof msg !== 'object' || Array.isArray(msg) || typeof msg.execute !== 'string') {
      reply({ error: { class: 'GenericError', desc: "QMP input must be a JSON object with an 'execute' member" } });
      return;
    }
    const args = msg.arguments ?? {};
    if (typeof args !== 'object' || Array.isArray(args) || args === null) {
      reply({ error: { class: 'GenericError', desc: "QMP input member 'arguments' must be an object" } });
      return;
    }
    if (msg.execute === 'qmp_capabilities') {
      if (this.negotiated) reply({ error: { class: 'CommandNotFound', desc: "Capabilities negotiation is already complete, command ignored" } });
      else { this.negotiated = true; reply({ return: {} }); }
      return;
    }
    if (!this.negotiated) {
      reply({ error: { class: 'CommandNotFound', desc: "Expecting capabilities negotiation with 'qmp_capabilities'" } });
      return;
    }
    const handler = this.commands[msg.execute];
    if (!handler) {
      reply({ error: { class: 'CommandNotFound', desc: `The command ${msg.execute} has not been found` } });
      return;
    }
    const fail = (e: unknown) => reply({ error: { class: e instanceof QmpError ? e.errorClass : 'GenericError', desc: (e as Error).message } });
    try {
      const r = handler(args as Record<string, unknown>, { takeFd: () => this.pendingFds.shift() });
      if (r instanceof Promise) r.then((v: unknown) => reply({ return: v ?? {} }), fail); // e.g. system_reset waits for the vCPUs
      else reply({ return: r ?? {} });
    } catch (e) {
      fail(e);
    }
  }

  /** Sends an event to the client (if one has negotiated). */
  emit(event: string, data?: object): void {
    if (!this.client || !this.negotiated) return;
    const now = Date.now();
    this.send(this.client, { event, ...(data ? { data } : {}), timestamp: { seconds: Math.floor(now / 1000), microseconds: (now % 1000) * 1000 } });
  }

  /** Lets pending replies and events drain, then closes the socket and removes its path. */
  async close(): Promise<void> {
    const c = this.client;
    if (c && !c.destroyed) await new Promise<void>((r) => c.end(r));
    c?.destroy();
    this.client = undefined;
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    this.server = undefined;
    if (existsSync(this.path)) unlinkSync(this.path);
    this.onClose?.();
  }
}
