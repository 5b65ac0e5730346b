// The byte and token arenas of QMP's JSON reader (json.ts): small Buffers for the common case, WebAssembly memory
// for a big message, so that its memory goes back to the system when the message is done.

const EMPTY = Buffer.alloc(0);

/** The part of WebAssembly's API used here (the TypeScript libs this project builds with lack it). */
interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}
declare const WebAssembly: { Memory: new (d: { initial: number; maximum: number }) => WasmMemory };

/** WebAssembly pages (64 KiB). */
export const PAGE = 64 * 1024;

/**
 * Growable memory that goes back to the system when dropped. A big message's bytes are kept in
 * WebAssembly memory (mapped and unmapped whole by V8), not in Buffers: malloc keeps what such
 * Buffers freed (glibc raises its mmap threshold after a big free), and the process stayed
 * megabytes bigger after each client that sent a big message.
 */
export class Grow {
  private mem: WasmMemory | undefined;
  u8: Buffer = EMPTY;
  u32: Uint32Array = new Uint32Array(0);
  constructor(
    private readonly small: number,
    private readonly max: number,
  ) {}
  /** Room for `n` bytes, keeping the first `used`. The small buffer is made on first use (most
   *  sessions send little, many send nothing). */
  reserve(n: number, used: number): void {
    if (n <= this.u8.length) return;
    if (n <= this.small) {
      this.u8 = Buffer.alloc(this.small);
      this.u32 = new Uint32Array(this.u8.buffer, this.u8.byteOffset, this.small >> 2);
      return;
    }
    const pages = Math.min(Math.ceil(this.max / PAGE), Math.ceil((n + (n >> 1)) / PAGE));
    if (!this.mem) {
      const mem = new WebAssembly.Memory({ initial: pages, maximum: Math.ceil(this.max / PAGE) });
      Buffer.from(mem.buffer).set(this.u8.subarray(0, used));
      this.mem = mem;
    } else this.mem.grow(pages - this.mem.buffer.byteLength / PAGE);
    this.u8 = Buffer.from(this.mem.buffer);
    this.u32 = new Uint32Array(this.mem.buffer);
  }
  /** Drops the big memory (the garbage collector's now); the next message starts small. */
  release(): void {
    if (!this.mem) return;
    this.mem = undefined;
    this.u8 = EMPTY;
    this.u32 = new Uint32Array(0);
  }
}
