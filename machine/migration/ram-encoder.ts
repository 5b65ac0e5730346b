// Who turns a pass's dirty pages into RAM sections. On a running VM the main thread is vCPU 0's
// run loop, so a save hands the work (KVM_CLEAR_DIRTY_LOG of a block, its zero-page scan, the
// copy of its data pages, the checksum) to a worker thread, as QEMU has a migration thread: the
// main thread only writes the finished sections to the stream. The worker reads guest RAM by
// address (native memZeroPages/memCopy, which an unmap waits for) and hands each section's
// buffer over without a copy; at most `inFlight` of them are not yet written (back-pressure).
// The inline encoder does the same on the calling thread (a stopped VM, tests, a worker that
// would not start).
import { Worker } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import { projectRoot } from '../../core/paths.js';
import { native } from '../../core/native.js';
import { PageBitmap, clearDirtyRange, type DirtySlot } from './dirty-bitmap.js';
import { encodeRamSection, PAGE_SIZE, PAGES_PER_BLOCK, type RamReader } from './stream.js';

export interface RamSection {
  /** The framed section (StreamWriter.framed). */
  section: Uint8Array;
  pages: number;
  zeroPages: number;
}

/** With KVM's manual dirty-log protection: the VM fd and slots whose pages are cleared just before they are read. */
export interface ManualClear {
  vmFd: number;
  slots: DirtySlot[];
}

export interface RamEncoder {
  /** The sections for the pages set in `pages`, block by block in order; the next is asked for once the last is written. */
  pass(pages: PageBitmap, clear?: ManualClear): AsyncIterable<RamSection>;
  close(): Promise<void>;
}

/** Guest RAM at a host address (an mmapAddr() mapping), read through the addon: any thread. */
export function addressReader(hostAddr: bigint): RamReader {
  const n = native();
  return {
    zeroPages: (offset, length, zero) => n.memZeroPages(hostAddr + BigInt(offset), length, zero),
    copy: (offset, length, into, at) => n.memCopy(hostAddr + BigInt(offset), length, into, at),
  };
}

/** One block's sections: clears its dirty bits first where KVM wants that (manual protection), then reads it. */
export function encodeBlock(
  ram: RamReader,
  pages: PageBitmap,
  block: number,
  clear: ManualClear | undefined,
  clearLog: (vmFd: number, slot: number, first: number, n: number, bits: Uint32Array) => void,
): RamSection | undefined {
  const first = block * PAGES_PER_BLOCK,
    n = Math.min(PAGES_PER_BLOCK, pages.pages - first);
  const bits = pages.slice(first, n);
  if (!bits) return undefined;
  if (clear) clearDirtyRange(clear.slots, first, bits, n, (s, f, k, b) => clearLog(clear.vmFd, s, f, k, b));
  const e = encodeRamSection(first * PAGE_SIZE, n, ram, bits);
  return e && { section: e.section, pages: e.pages, zeroPages: e.zeroPages };
}

const nativeClear = (vmFd: number, slot: number, first: number, n: number, bits: Uint32Array) =>
  native().kvmClearDirtyLog(vmFd, slot, first, n, bits);

/** Encodes on the calling thread. */
export function inlineRamEncoder(ram: RamReader): RamEncoder {
  return {
    async *pass(pages, clear) {
      for (const b of pages.blocks(PAGES_PER_BLOCK)) {
        const s = encodeBlock(ram, pages, b, clear, nativeClear);
        if (s) yield s;
      }
    },
    close: () => Promise.resolve(),
  };
}

// --- the worker's protocol (ram-worker.ts is the other side) -----------------------------------
/** workerData: where RAM is (a host address, or a SharedArrayBuffer in tests), and the shared control words. */
export interface RamWorkerData {
  hostAddr?: bigint;
  shared?: SharedArrayBuffer;
  /** Int32 [0] credits: sections the worker may still post before one is written; [1] 1: stop. */
  control: SharedArrayBuffer;
}
export const CTL_CREDITS = 0,
  CTL_STOP = 1;
/** Main → worker: one pass. */
export interface PassRequest {
  words: Uint32Array;
  pages: number;
  clear?: ManualClear;
}
/** Worker → main. */
export type WorkerReply =
  | { k: 'section'; section: Uint8Array; pages: number; zeroPages: number }
  | { k: 'done' }
  | { k: 'error'; message: string };

/** Encodes in a worker thread; `start` rejects if the worker cannot start. */
export class WorkerRamEncoder implements RamEncoder {
  private readonly control: Int32Array;
  private queue: WorkerReply[] = [];
  private wake: (() => void) | undefined;
  private failure: Error | undefined;

  private constructor(
    private readonly worker: Worker,
    control: SharedArrayBuffer,
    readonly inFlight: number,
  ) {
    this.control = new Int32Array(control);
    worker.on('message', (m: WorkerReply) => {
      this.queue.push(m);
      this.wake?.();
    });
    worker.on('error', (e) => {
      this.failure ??= e;
      this.wake?.();
    });
    worker.on('exit', (code) => {
      this.failure ??= new Error(`the RAM encoder thread exited (${code})`);
      this.wake?.();
    });
  }

  static async start(
    ram: { hostAddr: bigint } | { shared: SharedArrayBuffer },
    inFlight = 8,
  ): Promise<WorkerRamEncoder> {
    const control = new SharedArrayBuffer(8);
    new Int32Array(control)[CTL_CREDITS] = inFlight;
    const data: RamWorkerData = { control, ...ram };
    // From the project root, not this file: the CLI runs this code from one bundled file.
    const w = new Worker(pathToFileURL(`${projectRoot}/dist/machine/migration/ram-worker.js`), {
      workerData: data,
    });
    await new Promise<void>((resolve, reject) => {
      w.once('online', resolve);
      w.once('error', reject);
    });
    return new WorkerRamEncoder(w, control, inFlight);
  }

  /** Sections the worker posted that the writer has not asked for yet (at most `inFlight`). */
  get unwritten(): number {
    return this.queue.filter((m) => m.k === 'section').length;
  }

  private next(): Promise<WorkerReply> {
    return new Promise((resolve, reject) => {
      const take = () => {
        const m = this.queue.shift();
        if (m) {
          this.wake = undefined;
          resolve(m);
        } else if (this.failure) {
          this.wake = undefined;
          reject(this.failure);
        } else this.wake = take;
      };
      take();
    });
  }

  async *pass(pages: PageBitmap, clear?: ManualClear): AsyncIterable<RamSection> {
    const req: PassRequest = { words: pages.words.slice(), pages: pages.pages, ...(clear ? { clear } : {}) };
    this.worker.postMessage(req, [req.words.buffer as ArrayBuffer]);
    let handed = false,
      complete = false;
    try {
      for (;;) {
        if (handed) {
          // The section handed out last is written: room for one more.
          Atomics.add(this.control, CTL_CREDITS, 1);
          Atomics.notify(this.control, CTL_CREDITS);
        }
        const m = await this.next();
        if (m.k === 'done') {
          complete = true;
          return;
        }
        if (m.k === 'error') throw new Error(`RAM encoder: ${m.message}`);
        handed = true;
        yield m;
      }
    } finally {
      // A pass cut short (a cancel, a failed write) leaves the worker mid-pass: this encoder is done.
      if (!complete) this.failure ??= new Error('the RAM encoder stopped mid-pass');
    }
  }

  async close(): Promise<void> {
    Atomics.store(this.control, CTL_STOP, 1);
    Atomics.notify(this.control, CTL_CREDITS);
    await this.worker.terminate();
  }
}
