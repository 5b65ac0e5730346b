// A QMP-compatible control socket (QEMU Machine Protocol, docs/interop/qmp-spec): one JSON
// object per line; a greeting, capabilities negotiation, then commands answered with
// {"return": ...} or {"error": {"class", "desc"}} (echoing "id"), and asynchronous events.
// One client at a time, as QEMU's default; a second one is told so and disconnected.
import { createServer, type Server, type Socket } from 'node:net';
import { chmodSync, existsSync, unlinkSync } from 'node:fs';

export class QmpError extends Error {
  constructor(readonly errorClass: 'GenericError' | 'CommandNotFound' | 'DeviceNotFound', desc: string) { super(desc); }
}

export type QmpHandler = (args: Record<string, unknown>) => unknown;

export class QmpServer {
  private server: Server | undefined;
  private client: Socket | undefined;
  private negotiated = false;

  constructor(readonly path: string, private readonly commands: Record<string, QmpHandler>, private readonly version: { major: number; minor: number; micro: number }) {}

  listen(): Promise<void> {
    if (existsSync(this.path)) unlinkSync(this.path); // a stale socket from a previous run
    const server = createServer((s) => this.accept(s));
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
    s.setEncoding('utf8');
    let buf = '';
    s.on('data', (chunk: string) => {
      buf += chunk;
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (line) this.handle(s, line);
      }
    });
    const gone = () => { if (this.client === s) this.client = undefined; };
    s.on('close', gone);
    s.on('error', gone);
    this.send(s, { QMP: { version: { qemu: this.version, package: 'tsvmm' }, capabilities: [] } });
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
    try {
      reply({ return: handler(args as Record<string, unknown>) ?? {} });
    } catch (e) {
      reply({ error: { class: e instanceof QmpError ? e.errorClass : 'GenericError', desc: (e as Error).message } });
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
    this.client = undefined;
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    this.server = undefined;
    if (existsSync(this.path)) unlinkSync(this.path);
  }
}
