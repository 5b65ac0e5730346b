// A minimal QMP client for `tsvmm qmp`: greeting, qmp_capabilities, one command, its reply.
// Replies are read as a JSON stream (frontend/qmp/json.ts), so it speaks to QEMU as well as to tsvmm.
import { createConnection } from 'node:net';
import { JsonStreamParser } from './json.js';

export type QmpReply = { return: unknown } | { error: { class: string; desc: string } };

export function qmpCall(
  path: string,
  command: string,
  args?: Record<string, unknown>,
  timeoutMs = 10000,
): Promise<QmpReply> {
  return new Promise((resolve, reject) => {
    const s = createConnection(path);
    const timer = setTimeout(() => {
      s.destroy();
      // A QMP socket serves one client at a time: the others wait for it to leave.
      reject(
        new Error(
          `no QMP reply from ${path} within ${timeoutMs} ms (a socket serves one client at a time: is another attached?)`,
        ),
      );
    }, timeoutMs);
    let stage = 0,
      done = false;
    const finish = (f: () => void) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.end();
      f();
    };
    const parser = new JsonStreamParser((r) => {
      if (done) return;
      if ('error' in r) {
        finish(() => reject(new Error(`QMP socket ${path} sent bad JSON: ${r.error}`)));
        return;
      }
      const msg = r.value as Record<string, unknown>;
      if ('event' in msg) return;
      if (stage === 0 && 'error' in msg) {
        finish(() => resolve(msg as QmpReply));
        return;
      }
      if (stage === 0) {
        stage = 1;
        s.write(JSON.stringify({ execute: 'qmp_capabilities' }) + '\n');
        return;
      }
      if (stage === 1) {
        stage = 2;
        s.write(JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}) }) + '\n');
        return;
      }
      finish(() => resolve(msg as QmpReply));
    });
    s.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot talk to QMP socket ${path}: ${e.message}`));
    });
    s.on('data', (chunk: Buffer) => parser.feed(chunk));
  });
}
