// tsvmm's migration stream (pure logic: bytes in, bytes out; the machine walks its devices and
// the transport moves the bytes). Everything little-endian:
//
//   header   "TSVMM\0MG"  u32 format version  u32 n + n bytes config description (JSON)
//            32 bytes SHA-256 of the description   u32 CRC32 of the header so far
//   section  'S'  u8 n + n bytes id (ASCII)  u32 version  u32 length  payload  u32 CRC32 (tag..payload)
//   end      'E'  u32 number of sections  u32 CRC32 of the two
//
// One section per object (a vCPU, the irqchip, a device model, a block of RAM), each with its
// own version, so a destination can refuse precisely: the section, and why (unknown, newer than
// this build, corrupt, truncated, a config that differs).
import { createHash } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { StateError } from '../../core/state.js';
import { popcount } from './dirty-bitmap.js';

export const STREAM_MAGIC = Uint8Array.from([0x54, 0x53, 0x56, 0x4d, 0x4d, 0x00, 0x4d, 0x47]); // "TSVMM\0MG"
export const STREAM_VERSION = 1;
const TAG_SECTION = 0x53,
  TAG_END = 0x45;
/** No section of ours comes near this; a larger length is corruption, refused before allocating. */
export const MAX_SECTION_BYTES = 256 * 2 ** 20;
const MAX_DESCRIPTION_BYTES = 64 * 2 ** 10;

/** What the destination must match (memory layout, vCPUs, devices): plain JSON values. */
export type ConfigDescription = Record<string, unknown>;

/** Where stream bytes go (a file, a pipe, a socket): resolves once the bytes are taken. */
export interface ByteSink {
  write(bytes: Uint8Array): Promise<void> | void;
  /** The fd underneath, for a thread that writes sections itself (after flush()), if there is one. */
  fd?(): number | undefined;
  /** Resolves once every byte written so far has reached the fd. */
  flush?(): Promise<void>;
}
/** Where they come from: exactly n bytes, or fewer only at the end of the input. */
export interface ByteSource {
  read(n: number): Promise<Uint8Array>;
  /** The same bytes as read(n), in the pieces they arrived in (no copy into one buffer). */
  readParts?(n: number): Promise<Uint8Array[]>;
}

const u32 = (v: number) => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  return b;
};
const cat = (...parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
};

/** The description in its canonical form (keys sorted), which the hash is taken over. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v && typeof v === 'object')
    return `{${Object.keys(v)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  return JSON.stringify(v);
}
export function configHash(desc: ConfigDescription): Uint8Array {
  return new Uint8Array(createHash('sha256').update(canonicalJson(desc)).digest());
}

/** Writes a stream: header(), any number of section()s, end(). Counts the bytes it sent. */
export class StreamWriter {
  bytes = 0;
  private sections = 0;
  constructor(private readonly sink: ByteSink) {}

  private async put(b: Uint8Array): Promise<void> {
    await this.sink.write(b);
    this.bytes += b.length;
  }

  async header(desc: ConfigDescription): Promise<void> {
    const json = new TextEncoder().encode(canonicalJson(desc));
    const head = cat(STREAM_MAGIC, u32(STREAM_VERSION), u32(json.length), json, configHash(desc));
    await this.put(cat(head, u32(crc32(head))));
  }

  async section(id: string, version: number, payload: Uint8Array): Promise<void> {
    if (!/^[\x21-\x7e]{1,255}$/.test(id))
      throw new Error(`section id '${id}' must be 1-255 printable ASCII characters`);
    if (payload.length > MAX_SECTION_BYTES) throw new Error(`section '${id}' is ${payload.length} bytes (too large)`);
    const idBytes = new TextEncoder().encode(id);
    const head = cat(Uint8Array.of(TAG_SECTION, idBytes.length), idBytes, u32(version), u32(payload.length));
    const crc = crc32(payload, crc32(head));
    await this.put(head);
    await this.put(payload);
    await this.put(u32(crc));
    this.sections++;
  }

  /** A section framed already (encodeRamSection's, built on another thread): its bytes as they are. */
  async framed(section: Uint8Array): Promise<void> {
    await this.put(section);
    this.sections++;
  }

  /** The sink's fd, where another thread may write whole sections between flush() and external(). */
  fd(): number | undefined {
    return this.sink.flush ? this.sink.fd?.() : undefined;
  }

  /** Waits until all written so far is in the fd: another thread's writes come after it. */
  async flush(): Promise<void> {
    await this.sink.flush?.();
  }

  /** Counts a section another thread wrote to fd(). */
  external(bytes: number): void {
    this.bytes += bytes;
    this.sections++;
  }

  async end(): Promise<void> {
    const tail = cat(Uint8Array.of(TAG_END), u32(this.sections));
    await this.put(cat(tail, u32(crc32(tail))));
  }
}

export interface ReadOptions {
  /** This side's config: the stream's must be the same. */
  config: ConfigDescription;
  /** The newest version of a section id this build reads; undefined: no such section here. */
  knows(id: string): number | undefined;
  /** Each section in order, after its checks. */
  onSection(id: string, version: number, payload: Uint8Array): void | Promise<void>;
  /** Sections with these ids go to onParts, their payload in the pieces it arrived in (a source with readParts). */
  inParts?: {
    ids: ReadonlySet<string>;
    onParts(id: string, version: number, parts: Uint8Array[]): void | Promise<void>;
  };
}

/** Reads and checks a whole stream; throws a StateError that says which section and why. */
export async function readStream(src: ByteSource, opts: ReadOptions): Promise<{ sections: number; bytes: number }> {
  let bytes = 0;
  const need = async (n: number, section: string, what: string): Promise<Uint8Array> => {
    const b = await src.read(n);
    bytes += b.length;
    if (b.length < n)
      throw new StateError(
        section,
        `truncated: the stream ends ${b.length ? `${b.length} bytes into` : 'before'} ${what} (${n} bytes)`,
        'the stream was cut short: save it again (a migration that failed leaves an incomplete file)',
      );
    return b;
  };
  const needParts = async (n: number, section: string): Promise<Uint8Array[]> => {
    const parts = await src.readParts!(n);
    const got = parts.reduce((k, p) => k + p.length, 0);
    bytes += got;
    if (got < n)
      throw new StateError(
        section,
        `truncated: the stream ends ${got ? `${got} bytes into` : 'before'} the payload (${n} bytes)`,
        'the stream was cut short: save it again (a migration that failed leaves an incomplete file)',
      );
    return parts;
  };
  const le32 = (b: Uint8Array, o = 0) => new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(o, true);

  // Header.
  const magic = await need(8, 'header', 'the magic');
  if (!magic.every((v, i) => v === STREAM_MAGIC[i]))
    throw new StateError('header', 'not a tsvmm migration stream (bad magic)', 'give it a file tsvmm saved');
  const fixed = await need(8, 'header', 'the format version');
  const version = le32(fixed, 0),
    descLen = le32(fixed, 4);
  if (version > STREAM_VERSION)
    throw new StateError(
      'header',
      `stream format ${version} is newer than this build's (${STREAM_VERSION})`,
      'restore it with the tsvmm that saved it, or a newer one',
    );
  if (version < 1) throw new StateError('header', `stream format ${version} is not one tsvmm wrote`);
  if (descLen > MAX_DESCRIPTION_BYTES)
    throw new StateError('header', `config description of ${descLen} bytes (corrupt)`);
  const descBytes = await need(descLen, 'header', 'the config description');
  const hash = await need(32, 'header', 'the config hash');
  const crc = le32(await need(4, 'header', 'the header checksum'));
  if (crc32(hash, crc32(descBytes, crc32(fixed, crc32(magic)))) !== crc)
    throw new StateError('header', 'checksum mismatch (the stream is corrupt)');
  let theirs: ConfigDescription;
  try {
    theirs = JSON.parse(new TextDecoder().decode(descBytes)) as ConfigDescription;
  } catch {
    throw new StateError('header', 'config description is not JSON (corrupt)');
  }
  if (!configHash(theirs).every((v, i) => v === hash[i]))
    throw new StateError('header', 'config hash does not match its description (corrupt)');
  const mine = configHash(opts.config);
  if (!mine.every((v, i) => v === hash[i]))
    throw new StateError(
      'header',
      `config mismatch: ${configDifference(theirs, opts.config)}`,
      'start the destination with the config the source had (memory, vCPUs, devices)',
    );

  // Sections, then the end marker.
  let n = 0;
  for (;;) {
    const where = `after section ${n}`;
    const tag = (await need(1, where, 'a section tag'))[0]!;
    if (tag === TAG_END) {
      const count = await need(4, 'end', 'the section count');
      const c = le32(await need(4, 'end', 'the end checksum'));
      if (crc32(count, crc32(Uint8Array.of(TAG_END))) !== c) throw new StateError('end', 'checksum mismatch (corrupt)');
      if (le32(count) !== n) throw new StateError('end', `says ${le32(count)} sections; the stream had ${n}`);
      return { sections: n, bytes };
    }
    if (tag !== TAG_SECTION) throw new StateError(where, `bad section tag 0x${tag.toString(16)} (corrupt)`);
    const idLen = (await need(1, where, "a section id's length"))[0]!;
    const idBytes = await need(idLen, where, 'a section id');
    const id = new TextDecoder().decode(idBytes);
    const vl = await need(8, id, 'the version and length');
    const ver = le32(vl, 0),
      len = le32(vl, 4);
    if (len > MAX_SECTION_BYTES) throw new StateError(id, `length ${len} is beyond any section's (corrupt)`);
    const inParts = opts.inParts?.ids.has(id) && src.readParts ? opts.inParts : undefined;
    const parts = inParts ? await needParts(len, id) : [await need(len, id, 'the payload')];
    const sum = le32(await need(4, id, 'the checksum'));
    let crc = crc32(cat(Uint8Array.of(TAG_SECTION, idLen), idBytes, vl));
    for (const part of parts) crc = crc32(part, crc);
    if (crc !== sum) throw new StateError(id, 'checksum mismatch (the stream is corrupt)');
    const max = opts.knows(id);
    if (max === undefined)
      throw new StateError(
        id,
        'unknown section: this machine has no such device or state',
        'the destination must have the devices the source had',
      );
    if (ver > max)
      throw new StateError(
        id,
        `version ${ver} is newer than this build's (${max})`,
        'restore with the tsvmm that saved it, or a newer one',
      );
    if (inParts) await inParts.onParts(id, ver, parts);
    else await opts.onSection(id, ver, parts[0]!);
    n++;
  }
}

/** Which members of two descriptions differ, in words. */
export function configDifference(theirs: ConfigDescription, mine: ConfigDescription): string {
  const out: string[] = [];
  for (const k of [...new Set([...Object.keys(theirs), ...Object.keys(mine)])].sort()) {
    const a = canonicalJson(theirs[k]),
      b = canonicalJson(mine[k]);
    if (a !== b) out.push(`${k} is ${a ?? 'absent'} in the stream, ${b ?? 'absent'} here`);
  }
  return out.join('; ') || 'descriptions differ';
}

/** A ByteSource over chunks arriving from an async iterable (a file or socket read stream). */
export function iterableSource(it: AsyncIterable<Uint8Array>): ByteSource {
  const iter = it[Symbol.asyncIterator]();
  let pending: Uint8Array = new Uint8Array(0);
  let done = false;
  const readParts = async (n: number): Promise<Uint8Array[]> => {
    const parts: Uint8Array[] = [];
    let have = 0;
    while (have < n) {
      if (!pending.length) {
        if (done) break;
        const r = await iter.next();
        if (r.done) {
          done = true;
          break;
        }
        pending = r.value;
        continue;
      }
      const take = Math.min(n - have, pending.length);
      parts.push(pending.subarray(0, take));
      pending = pending.subarray(take);
      have += take;
    }
    return parts;
  };
  return {
    readParts,
    async read(n: number): Promise<Uint8Array> {
      const parts = await readParts(n);
      return parts.length === 1 ? parts[0]! : cat(...parts);
    },
  };
}

/** A ByteSource over bytes in memory (tests, small streams). */
export function bytesSource(b: Uint8Array): ByteSource {
  let pos = 0;
  return {
    read(n: number) {
      const out = b.subarray(pos, Math.min(b.length, pos + n));
      pos += out.length;
      return Promise.resolve(out);
    },
  };
}

// --- RAM -------------------------------------------------------------------------------------
export const PAGE_SIZE = 4096;
/** RAM goes in sections of at most this much guest memory each (its own checksum, a bounded buffer). */
export const RAM_BLOCK = 2 ** 20;
export const PAGES_PER_BLOCK = RAM_BLOCK / PAGE_SIZE;
/**
 * Version 1: u64 offset in guest RAM, u32 pages, a bitmap of the zero pages (a zero page is sent
 * as its flag only), then each non-zero page's bytes. Version 2 sends only some pages of the
 * block (those the guest wrote since the last pass): u64 offset, u32 pages, a bitmap of the
 * pages sent, a bitmap of those that are zero, then the bytes of each page sent and not zero.
 * Bitmaps: bit p in byte p / 8, ceil(pages / 8) bytes each.
 */
export const RAM_SECTION = 'ram',
  RAM_VERSION = 2;

/** Sets the bit of each all-zero page of `bytes` in `zero`; returns how many (JS; a native scan may stand in). */
export function zeroPagesJs(bytes: Uint8Array, zero: Uint32Array): number {
  const words =
    bytes.byteOffset % 4 === 0
      ? new Int32Array(bytes.buffer, bytes.byteOffset, bytes.length >> 2)
      : new Int32Array(bytes.slice().buffer);
  const per = PAGE_SIZE / 4;
  let n = 0;
  for (let p = 0, pages = bytes.length / PAGE_SIZE; p < pages; p++) {
    let acc = 0;
    for (let i = p * per, end = i + per; i < end && acc === 0; i += 8)
      acc =
        words[i]! |
        words[i + 1]! |
        words[i + 2]! |
        words[i + 3]! |
        words[i + 4]! |
        words[i + 5]! |
        words[i + 6]! |
        words[i + 7]!;
    if (acc === 0) {
      zero[p >> 5]! |= 1 << (p & 31);
      n++;
    }
  }
  return n;
}

/** How the encoder reads guest RAM: by offset, so it can run where there is no view of it (a worker). */
export interface RamReader {
  /** Sets the bit of each all-zero page of [offset, offset+length) in `zero`; returns how many. */
  zeroPages(offset: number, length: number, zero: Uint32Array): number;
  /** Copies [offset, offset+length) into `into` at `at`. */
  copy(offset: number, length: number, into: Uint8Array, at: number): void;
}

/** A RamReader over views of RAM (`ram(offset, length)`), in JS. */
export function viewReader(ram: (offset: number, length: number) => Uint8Array): RamReader {
  return {
    zeroPages: (offset, length, zero) => zeroPagesJs(ram(offset, length), zero),
    copy: (offset, length, into, at) => into.set(ram(offset, length), at),
  };
}

const putBits = (out: Uint8Array, at: number, bits: Uint32Array, pages: number) => {
  for (let i = 0, n = Math.ceil(pages / 8); i < n; i++) out[at + i] = bits[i >> 2]! >>> ((i & 3) * 8);
};

export interface EncodedRam {
  /** The whole section as it goes into the stream (tag, id, version, length, payload, checksum). */
  section: Uint8Array;
  /** Its payload (a view into `section`). */
  payload: Uint8Array;
  /** Pages sent, and how many of them as a zero flag. */
  pages: number;
  zeroPages: number;
}

/**
 * The pages of the block of guest RAM at `offset` (`pages` of them) whose bit is set in `send` (a
 * bit per page; undefined: every page) as one framed RAM section, built in one buffer (so it can
 * be handed from another thread and written to the stream as it is). Undefined when no page is
 * to be sent.
 */
export function encodeRamSection(
  offset: number,
  pages: number,
  ram: RamReader,
  send?: Uint32Array,
): EncodedRam | undefined {
  if (offset % PAGE_SIZE || !Number.isInteger(pages) || pages <= 0) throw new Error('RAM blocks are whole pages');
  const words = Math.ceil(pages / 32);
  const tailMask = (i: number) => (i === words - 1 && pages % 32 ? (1 << pages % 32) - 1 : -1);
  const want = new Uint32Array(words);
  let sent = 0;
  for (let i = 0; i < words; i++) {
    want[i] = (send ? send[i]! : -1) & tailMask(i);
    sent += popcount(want[i]!);
  }
  if (!sent) return undefined;
  const zero = new Uint32Array(words);
  if (sent === pages) ram.zeroPages(offset, pages * PAGE_SIZE, zero);
  else {
    // Only the runs of pages sent are scanned (a pass after the first sends a few pages of a block).
    const run = new Uint32Array(words);
    for (let p = 0; p < pages; ) {
      if (!(want[p >>> 5]! & (1 << (p & 31)))) {
        p++;
        continue;
      }
      let e = p + 1;
      while (e < pages && want[e >>> 5]! & (1 << (e & 31))) e++;
      run.fill(0);
      ram.zeroPages(offset + p * PAGE_SIZE, (e - p) * PAGE_SIZE, run);
      for (let i = 0; i < e - p; i++) if (run[i >>> 5]! & (1 << (i & 31))) zero[(p + i) >>> 5]! |= 1 << ((p + i) & 31);
      p = e;
    }
  }
  let zeroSent = 0;
  for (let i = 0; i < words; i++) {
    zero[i]! &= want[i]!; // a zero page that is not sent is not flagged
    zeroSent += popcount(zero[i]!);
  }
  const bitmapLen = Math.ceil(pages / 8);
  const payloadLen = 12 + 2 * bitmapLen + (sent - zeroSent) * PAGE_SIZE;
  const id = RAM_SECTION.length;
  const headLen = 2 + id + 8;
  const buf = new Uint8Array(headLen + payloadLen + 4);
  const v = new DataView(buf.buffer);
  buf[0] = TAG_SECTION;
  buf[1] = id;
  for (let i = 0; i < id; i++) buf[2 + i] = RAM_SECTION.charCodeAt(i);
  v.setUint32(2 + id, RAM_VERSION, true);
  v.setUint32(6 + id, payloadLen, true);
  v.setBigUint64(headLen, BigInt(offset), true);
  v.setUint32(headLen + 8, pages, true);
  putBits(buf, headLen + 12, want, pages);
  putBits(buf, headLen + 12 + bitmapLen, zero, pages);
  let o = headLen + 12 + 2 * bitmapLen;
  // The runs of pages that are sent and not zero, a run per copy.
  for (let p = 0; p < pages; ) {
    const data = (q: number) => (want[q >>> 5]! & ~zero[q >>> 5]! & (1 << (q & 31))) !== 0;
    if (!data(p)) {
      p++;
      continue;
    }
    let e = p + 1;
    while (e < pages && data(e)) e++;
    ram.copy(offset + p * PAGE_SIZE, (e - p) * PAGE_SIZE, buf, o);
    o += (e - p) * PAGE_SIZE;
    p = e;
  }
  v.setUint32(o, crc32(buf.subarray(0, o)), true);
  return { section: buf, payload: buf.subarray(headLen, o), pages: sent, zeroPages: zeroSent };
}

/** A block of RAM as a section payload (every page; see encodeRamSection). */
export function encodeRamBlock(offset: number, bytes: Uint8Array): { payload: Uint8Array; zeroPages: number } {
  const e = encodeRamSection(
    offset,
    bytes.length / PAGE_SIZE,
    viewReader((o, l) => bytes.subarray(o - offset, o - offset + l)),
  )!;
  return { payload: e.payload, zeroPages: e.zeroPages };
}

/**
 * Writes a RAM section's pages into guest RAM (`ram(offset, length)` gives the bytes there); returns
 * its offset, the pages it held and the pages its block spans. A zero page is only written where the page is not zero already
 * (`zeroScan` says): a destination's untouched RAM then stays unallocated, as QEMU's does.
 */
export function decodeRamBlock(
  payload: Uint8Array,
  ramSize: number,
  ram: (offset: number, length: number) => Uint8Array,
  version: number = RAM_VERSION,
): number {
  return decodeRamSection(payload, ramSize, ram, version).offset;
}

export function decodeRamSection(
  payload: Uint8Array | readonly Uint8Array[],
  ramSize: number,
  ram: (offset: number, length: number) => Uint8Array,
  version: number = RAM_VERSION,
  zeroPages: RamReader['zeroPages'] = (o, l, z) => zeroPagesJs(ram(o, l), z),
): { offset: number; pages: number; span: number } {
  const fail = (why: string) => new StateError(RAM_SECTION, why);
  // The payload as it arrived (one buffer, or the pieces a socket read it in: no copy into one).
  const parts = payload instanceof Uint8Array ? [payload] : payload;
  const length = parts.reduce((n, x) => n + x.length, 0);
  const cur = new PartCursor(parts);
  if (length < 12) throw fail('truncated block header');
  const head = new Uint8Array(12);
  cur.read(head, 0, 12);
  const v = new DataView(head.buffer);
  const offset = Number(v.getBigUint64(0, true)),
    pages = v.getUint32(8, true);
  if (offset % PAGE_SIZE || !Number.isSafeInteger(offset) || offset + pages * PAGE_SIZE > ramSize)
    throw fail(`block at 0x${offset.toString(16)} of ${pages} pages lies outside guest RAM (${ramSize} bytes)`);
  const bitmapLen = Math.ceil(pages / 8);
  const maps = version >= 2 ? 2 : 1;
  if (length < 12 + maps * bitmapLen) throw fail('truncated page bitmaps');
  const bitmaps = new Uint8Array(maps * bitmapLen);
  cur.read(bitmaps, 0, bitmaps.length);
  const sent = version >= 2 ? bitmaps.subarray(0, bitmapLen) : undefined;
  const zero = bitmaps.subarray((maps - 1) * bitmapLen);
  const isSent = (p: number) => !sent || (sent[p >> 3]! & (1 << (p & 7))) !== 0;
  const isZero = (p: number) => (zero[p >> 3]! & (1 << (p & 7))) !== 0;
  let data = 0,
    count = 0;
  for (let p = 0; p < pages; p++) {
    if (!isSent(p)) {
      if (isZero(p)) throw fail(`block at 0x${offset.toString(16)}: page ${p} is flagged zero but not sent`);
      continue;
    }
    count++;
    if (!isZero(p)) data++;
  }
  if (length !== 12 + maps * bitmapLen + data * PAGE_SIZE)
    throw fail(`block at 0x${offset.toString(16)}: ${length} bytes for ${data} data pages`);
  const dest = ram(offset, pages * PAGE_SIZE);
  const here = new Uint32Array(Math.ceil(pages / 32));
  if (count > data) zeroPages(offset, pages * PAGE_SIZE, here);
  for (let p = 0; p < pages; ) {
    if (!isSent(p)) {
      p++;
      continue;
    }
    if (isZero(p)) {
      if (!(here[p >> 5]! & (1 << (p & 31)))) dest.fill(0, p * PAGE_SIZE, (p + 1) * PAGE_SIZE);
      p++;
      continue;
    }
    // A run of data pages: one copy (one per piece it spans).
    let e = p + 1;
    while (e < pages && isSent(e) && !isZero(e)) e++;
    cur.read(dest, p * PAGE_SIZE, (e - p) * PAGE_SIZE);
    p = e;
  }
  return { offset, pages: count, span: pages };
}

/** Reads on through a list of buffers as if they were one. */
class PartCursor {
  private i = 0;
  private o = 0;
  constructor(private readonly parts: readonly Uint8Array[]) {}
  read(into: Uint8Array, at: number, n: number): void {
    while (n > 0) {
      const p = this.parts[this.i]!;
      const k = Math.min(n, p.length - this.o);
      into.set(k === p.length ? p : p.subarray(this.o, this.o + k), at);
      at += k;
      n -= k;
      this.o += k;
      if (this.o === p.length) {
        this.i++;
        this.o = 0;
      }
    }
  }
}
