// Who turns a pass's dirty pages into RAM sections. On a running VM the main thread is vCPU 0's
// run loop, so a save hands the work (KVM_CLEAR_DIRTY_LOG of a block, its zero-page scan, the
// copy of its data pages, the checksum) to a worker thread, as QEMU has a migration thread: the
// main thread only writes the finished sections to the stream. The worker reads guest RAM by
// address (native memZeroPages/memCopy, which an unmap waits for) and hands each section's
// buffer over without a copy; at most `inFlight` of them are not yet written (back-pressure).
// The inline encoder does the same on the calling thread (a stopped VM, tests, a worker that
// would not start).
import { closeSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import { projectRoot } from '../../core/paths.js';
import { native } from '../../core/native.js';
import { PageBitmap, clearDirtyRange, type DirtySlot } from './dirty-bitmap.js';
import { encodeRamSection, PAGE_SIZE, PAGES_PER_BLOCK, type RamReader } from './stream.js';

export interface RamSection {
  /** The framed section (StreamWriter.framed); absent when the encoder wrote it to the stream's fd itself. */
  section?: Uint8Array;
  /** Its bytes in the stream. */
  bytes: number;
  pages: number;
  zeroPages: number;
}

/** Where an encoder that writes sections itself puts them: the stream's fd, flushed of what came before. */
export interface DirectOut {
  fd: number;
  /** Bytes per second the stream may take (0: no limit), counted from `started` (ms, Date.now()) over `sentBefore` + what this pass sends. */
  maxBandwidth: number;
  started: number;
  sentBefore: number;
}

export interface PassOptions {
  clear?: ManualClear;
  /** Write to this fd (an encoder that can: `direct`); else the sections come back to be written. */
  out?: DirectOut;
  /** Looked at while waiting: true ends the pass (a cancel while the peer reads nothing). */
  stopIf?: () => boolean;
}

/** With KVM's manual dirty-log protection: the VM fd and slots whose pages are cleared just before they are read. */
export interface ManualClear {
  vmFd: number;
  slots: DirtySlot[];
}

export interface RamEncoder {
  /** Whether it can write sections to the stream's fd itself (PassOptions.out). */
  readonly direct: boolean;
  /** The sections for the pages set in `pages`, block by block in order; the next is asked for once the last is written. */
  pass(pages: PageBitmap, opts?: PassOptions): AsyncIterable<RamSection>;
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
  return e && { section: e.section, bytes: e.section.length, pages: e.pages, zeroPages: e.zeroPages };
}

export const nativeClear = (vmFd: number, slot: number, first: number, n: number, bits: Uint32Array) =>
  native().kvmClearDirtyLog(vmFd, slot, first, n, bits);

/** Encodes on the calling thread. */
export function inlineRamEncoder(ram: RamReader): RamEncoder {
  return {
    direct: false,
    async *pass(pages, opts = {}) {
      for (const b of pages.blocks(PAGES_PER_BLOCK)) {
        const s = encodeBlock(ram, pages, b, opts.clear, nativeClear);
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
  /** Write each section here (a dup of the stream's fd, the main thread's to close) instead of posting it. */
  out?: DirectOut;
}
/** Worker → main: a section (posted, or written to `out` when it has no bytes here), the pass's end, a failure. */
export type WorkerReply =
  | { k: 'section'; section?: Uint8Array; bytes: number; pages: number; zeroPages: number }
  | { k: 'done' }
  | { k: 'error'; message: string; code?: string }
  /** Once, first: the worker's module ran. */
  | { k: 'ready' };

/** Encodes in a worker thread; `start` rejects if the worker cannot start. */
export class WorkerRamEncoder implements RamEncoder {
  readonly direct = true;
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
    // Ready once its module ran (it says so): until then a caller may encode on its own thread.
    await new Promise<void>((resolve, reject) => {
      w.once('message', () => resolve());
      w.once('error', reject);
      w.once('exit', (code) => reject(new Error(`the RAM encoder thread exited (${code}) as it started`)));
    });
    return new WorkerRamEncoder(w, control, inFlight);
  }

  /** Sections the worker posted that the writer has not asked for yet (at most `inFlight`). */
  get unwritten(): number {
    return this.queue.filter((m) => m.k === 'section').length;
  }

  private next(stopIf?: () => boolean): Promise<WorkerReply> {
    return new Promise((resolve, reject) => {
      const done = () => {
        this.wake = undefined;
        if (timer) clearInterval(timer);
      };
      const take = () => {
        const m = this.queue.shift();
        if (m) {
          done();
          resolve(m);
        } else if (this.failure) {
          done();
          reject(this.failure);
        } else if (stopIf?.()) {
          done();
          reject(new Error('the RAM pass was stopped'));
        } else this.wake = take;
      };
      // A worker blocked on a peer that reads nothing posts nothing: look at stopIf meanwhile.
      const timer = stopIf ? setInterval(take, 100) : undefined;
      take();
    });
  }

  async *pass(pages: PageBitmap, opts: PassOptions = {}): AsyncIterable<RamSection> {
    // The worker writes to its own dup of the fd, closed here once it is done with it.
    const out = opts.out && { ...opts.out, fd: native().dupFd(opts.out.fd) };
    const req: PassRequest = {
      words: pages.words.slice(),
      pages: pages.pages,
      ...(opts.clear ? { clear: opts.clear } : {}),
      ...(out ? { out } : {}),
    };
    let handed = false,
      complete = false;
    try {
      this.worker.postMessage(req, [req.words.buffer as ArrayBuffer]);
      for (;;) {
        if (handed) {
          // The section handed out last is written: room for one more (a posted one took a credit).
          Atomics.add(this.control, CTL_CREDITS, 1);
          Atomics.notify(this.control, CTL_CREDITS);
        }
        const m = await this.next(opts.stopIf);
        if (m.k === 'done') {
          complete = true;
          return;
        }
        if (m.k === 'error') throw new Error(m.message);
        if (m.k === 'ready') continue; // taken by start(); never here
        handed = m.section !== undefined;
        yield m;
      }
    } finally {
      // A pass cut short (a cancel, a failed write) leaves the worker mid-pass: this encoder is
      // done, and the worker must have stopped before its fd is closed (the number could be reused).
      if (!complete) {
        this.failure ??= new Error('the RAM encoder stopped mid-pass');
        await this.close();
      }
      if (out) closeSync(out.fd);
    }
  }

  private closed: Promise<number> | undefined;
  async close(): Promise<void> {
    Atomics.store(this.control, CTL_STOP, 1);
    Atomics.notify(this.control, CTL_CREDITS);
    Atomics.notify(this.control, CTL_STOP);
    await (this.closed ??= this.worker.terminate());
  }
}
