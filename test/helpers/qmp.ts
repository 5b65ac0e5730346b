// A QMP client for tests that reads as qemu.qmp does (one JSON document per line) and can send
// either way: lines (send) or compact JSON with no newline, as qemu.qmp sends it (write, call).
import assert from 'node:assert/strict';
import { createConnection, type Socket } from 'node:net';

export class QmpTestClient {
  private buf = '';
  readonly lines: string[] = [];
  /** Events met while waiting for a reply (reply/call keep them here). */
  readonly events: Record<string, unknown>[] = [];
  private wake: (() => void) | undefined;
  constructor(readonly s: Socket) {
    s.setEncoding('utf8');
    s.on('data', (c: string) => {
      this.buf += c;
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        this.lines.push(this.buf.slice(0, i));
        this.buf = this.buf.slice(i + 1);
      }
      this.wake?.();
    });
  }
  /**
   * Connects, retrying for up to 10 s while the socket is not listening yet: its file appears at bind(), a moment
   * before listen(), and a loaded machine can stretch that moment (ECONNREFUSED; ENOENT before bind()).
   */
  static async connect(path: string): Promise<QmpTestClient> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await new Promise<QmpTestClient>((res, rej) => {
          const s = createConnection(path, () => res(new QmpTestClient(s)));
          s.on('error', rej);
        });
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if ((code !== 'ECONNREFUSED' && code !== 'ENOENT') || attempt >= 200) throw e;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }
  /** The next message, reply or event (waiting up to timeoutMs). */
  async next(timeoutMs = 10_000): Promise<Record<string, unknown>> {
    for (let i = 0; i < timeoutMs / 50 && !this.lines.length; i++)
      await new Promise<void>((r) => {
        this.wake = r;
        setTimeout(r, 50);
      });
    const l = this.lines.shift();
    assert.ok(l !== undefined, 'no QMP message arrived');
    return JSON.parse(l) as Record<string, unknown>;
  }
  /** The next reply (not an event); events met on the way are kept in `events`. */
  async reply(timeoutMs?: number): Promise<Record<string, unknown>> {
    for (;;) {
      const m = await this.next(timeoutMs);
      if ('event' in m) this.events.push(m);
      else return m;
    }
  }
  /** A line of raw text (newline-terminated). */
  send(raw: string): void {
    this.s.write(raw + '\n');
  }
  /** qemu.qmp's send: compact JSON, no newline. */
  write(obj: unknown): void {
    this.s.write(JSON.stringify(obj));
  }
  /** A command and its reply, with the events that came before it (QEMU may emit them first). */
  async cmdEvents(execute: string): Promise<{ reply: Record<string, unknown>; events: string[] }> {
    this.send(JSON.stringify({ execute }));
    const events: string[] = [];
    for (;;) {
      const m = await this.next();
      if ('event' in m) events.push(m.event as string);
      else return { reply: m, events };
    }
  }
  /** A command sent as a line; its reply (the next message). */
  async cmd(execute: string, extra: object = {}): Promise<Record<string, unknown>> {
    this.send(JSON.stringify({ execute, ...extra }));
    return this.next();
  }
  /** A command sent as qemu.qmp sends it; its reply. */
  async call(execute: string, args?: unknown, extra: object = {}): Promise<Record<string, unknown>> {
    this.write({ execute, ...(args !== undefined ? { arguments: args } : {}), ...extra });
    return this.reply();
  }
}
