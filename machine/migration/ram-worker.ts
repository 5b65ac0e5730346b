// The RAM encoder's thread (ram-encoder.ts has the protocol): for each pass the main thread
// posts, encodes block after block (manual dirty-log clear, zero-page scan, copy, checksum) and
// posts each section's buffer back (transferred, not copied), waiting for a credit before each
// one so no more than a few are ever unwritten.
import { parentPort, workerData } from 'node:worker_threads';
import { native } from '../../core/native.js';
import { PageBitmap } from './dirty-bitmap.js';
import {
  addressReader,
  encodeBlock,
  CTL_CREDITS,
  CTL_STOP,
  type PassRequest,
  type RamWorkerData,
  type WorkerReply,
} from './ram-encoder.js';
import { PAGES_PER_BLOCK, viewReader } from './stream.js';

const data = workerData as RamWorkerData;
const control = new Int32Array(data.control);
const ram = data.hostAddr !== undefined ? addressReader(data.hostAddr) : viewReader(sharedView(data.shared!));

function sharedView(sab: SharedArrayBuffer): (offset: number, length: number) => Uint8Array {
  const all = new Uint8Array(sab);
  return (o, l) => all.subarray(o, o + l);
}

const post = (m: WorkerReply, transfer: ArrayBuffer[] = []) => parentPort!.postMessage(m, transfer);

/** Takes a credit; false when told to stop. */
function credit(): boolean {
  for (;;) {
    if (Atomics.load(control, CTL_STOP)) return false;
    const c = Atomics.load(control, CTL_CREDITS);
    if (c > 0) {
      if (Atomics.compareExchange(control, CTL_CREDITS, c, c - 1) === c) return true;
      continue;
    }
    Atomics.wait(control, CTL_CREDITS, c, 1000);
  }
}

/** Holds back while the stream is ahead of max-bandwidth (wakes early for a stop). */
function throttle(out: NonNullable<PassRequest['out']>, sent: number): void {
  if (!out.maxBandwidth) return;
  const ahead = ((out.sentBefore + sent) / out.maxBandwidth) * 1000 - (Date.now() - out.started);
  if (ahead > 1) Atomics.wait(control, CTL_STOP, 0, ahead);
}

parentPort!.on('message', (req: PassRequest) => {
  try {
    const n = native();
    const pages = new PageBitmap(req.pages, req.words);
    const clear = (vmFd: number, slot: number, first: number, k: number, bits: Uint32Array) =>
      n.kvmClearDirtyLog(vmFd, slot, first, k, bits);
    let sent = 0;
    for (const b of pages.blocks(PAGES_PER_BLOCK)) {
      if (Atomics.load(control, CTL_STOP)) return;
      if (req.out) {
        // Written here, as QEMU's migration thread writes: the main thread (vCPU 0's) only counts it.
        const s = encodeBlock(ram, pages, b, req.clear, clear);
        if (!s) continue;
        n.writeFully(req.out.fd, s.section!, control, CTL_STOP);
        sent += s.bytes;
        post({ k: 'section', bytes: s.bytes, pages: s.pages, zeroPages: s.zeroPages });
        throttle(req.out, sent);
        continue;
      }
      if (!credit()) return;
      const s = encodeBlock(ram, pages, b, req.clear, clear);
      if (!s) {
        Atomics.add(control, CTL_CREDITS, 1); // nothing posted: the credit goes back
        continue;
      }
      post({ k: 'section', section: s.section!, bytes: s.bytes, pages: s.pages, zeroPages: s.zeroPages }, [
        s.section!.buffer as ArrayBuffer,
      ]);
    }
    post({ k: 'done' });
  } catch (e) {
    const err = e as Error & { code?: string };
    post({ k: 'error', message: err.message, ...(err.code ? { code: err.code } : {}) });
  }
});

post({ k: 'ready' });
