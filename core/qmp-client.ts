// A minimal QMP client for `tsvmm qmp`: greeting, qmp_capabilities, one command, its reply.
import { createConnection } from 'node:net';

export type QmpReply = { return: unknown } | { error: { class: string; desc: string } };

export function qmpCall(path: string, command: string, args?: Record<string, unknown>, timeoutMs = 10000): Promise<QmpReply> {
  return new Promise((resolve, reject) => {
    const s = createConnection(path);
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`no QMP reply from ${path} within ${timeoutMs} ms`)); }, timeoutMs);
    let buf = '', stage = 0;
    s.setEncoding('utf8');
    s.on('error', (e) => { clearTimeout(timer); reject(new Error(`cannot talk to QMP socket ${path}: ${e.message}`)); });
    s.on('data', (chunk: string) => {
      buf += chunk;
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buf.slice(0, i)) as Record<string, unknown>;
        buf = buf.slice(i + 1);
        if ('event' in msg) continue;
        if (stage === 0 && 'error' in msg) { clearTimeout(timer); s.end(); resolve(msg as QmpReply); return; }
        if (stage === 0) { stage = 1; s.write(JSON.stringify({ execute: 'qmp_capabilities' }) + '\n'); continue; }
        if (stage === 1) { stage = 2; s.write(JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}) }) + '\n'); continue; }
        clearTimeout(timer);
        s.end();
        resolve(msg as QmpReply);
        return;
      }
    });
  });
}
