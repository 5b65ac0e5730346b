// A machine's whole state through the stream (machine/migration/stream.ts): the machine hands
// over its parts (each a Migratable: vCPUs, the in-kernel irqchip and PIT, every device model, the
// KVM clock) and its RAM; this walks them in a fixed order. Save: the irqchip, each vCPU, each
// device, RAM in blocks (zero pages as a flag), the clock last. Load: each section to the part
// with its id; at the end every part must have had its section, or the stream is refused.
import { StateReader, StateWriter, StateError, LIVE_SUFFIX, type Migratable } from '../../core/state.js';
import {
  StreamWriter,
  readStream,
  decodeRamSection,
  viewReader,
  PAGES_PER_BLOCK,
  RAM_BLOCK,
  RAM_SECTION,
  RAM_VERSION,
  PAGE_SIZE,
  type ByteSink,
  type ByteSource,
  type ConfigDescription,
  type RamReader,
} from './stream.js';
import { PageBitmap } from './dirty-bitmap.js';
import {
  encodeBlock,
  inlineRamEncoder,
  nativeClear as clearDirtyLog,
  type ManualClear,
  type RamEncoder,
  type RamSection,
} from './ram-encoder.js';

export interface MachineParts {
  /** What the destination must match (memory, layout, vCPUs, devices). */
  description: ConfigDescription;
  /** In the order they are saved and restored. */
  parts: Migratable[];
  /** Saved after RAM, restored last (the KVM clock). */
  last: Migratable[];
  ram: {
    size: number;
    view(offset: number, length: number): Uint8Array;
    /** Faster reads than the views' (native zero-page scan and copy), where there are. */
    reader?: RamReader;
  };
}

/** How far a save or load is (QMP query-migrate's ram members). */
export interface MigrationProgress {
  /** Bytes of guest RAM. */
  ramTotal: number;
  /** Guest RAM done so far. */
  ramDone: number;
  /** Pages sent as data, and as a zero flag. */
  normalPages: number;
  zeroPages: number;
  /** Bytes of stream so far. */
  bytes: number;
  /** RAM passes so far (1 for a stop-and-copy; QMP's dirty-sync-count), and the bytes the current one has still to send. */
  passes: number;
  remaining: number;
  /** Of the last pass (QMP's mbps, pages-per-second): stream bits per second and pages per second. */
  mbps?: number;
  pagesPerSecond?: number;
  /** Pages the guest wrote per second between the last two syncs of the dirty log. */
  dirtyPagesRate?: number;
  /** What the rest would take at the bandwidth of the last pass (ms). */
  expectedDowntimeMs?: number;
  /** Stream bytes sent while the guest ran, and after it stopped. */
  precopyBytes?: number;
  downtimeBytes?: number;
  /** Bytes of parts' live sections sent while the guest ran (an assigned device's PRE_COPY data). */
  liveBytes: number;
  /** Bytes of assigned devices' state read after the stop (their sections carry it). */
  deviceBytes?: number;
}

function section(m: Migratable): Uint8Array {
  const w = new StateWriter();
  m.saveState(w);
  return w.bytes();
}

/** KVM's dirty log over guest RAM, for live pre-copy. */
export interface DirtyLog {
  /** Starts logging (throws if the host cannot). */
  start(): void;
  /** ORs into `into` (a bit per page of guest RAM) the pages written since start() or since they were last sent. */
  sync(into: PageBitmap): void;
  /** With KVM's manual protection: what the encoder clears before it reads a block (undefined: the sync did). */
  manual(): ManualClear | undefined;
  stop(): void;
}

export interface SaveOptions {
  progress?: (p: MigrationProgress) => void;
  cancelled?: () => boolean;
  /** Stops the vCPUs (and flushes what they printed, and stops assigned devices): after it, nothing changes the machine. */
  stop: () => Promise<void>;
  /** With a dirty log: RAM goes while the guest runs, then again what it rewrote, until the rest is small. */
  live?: DirtyLog;
  /** The pause the guest may see: the last pass's RAM must fit it at the bandwidth measured (QEMU's 300 ms). */
  downtimeLimitMs?: number;
  /** At most this many passes while the guest runs (a guest that writes faster than the link never converges). */
  maxPasses?: number;
  /** Bytes per second the stream may take while the guest runs (0: no limit); the final copy is not held back. */
  maxBandwidth?: number;
  /**
   * Devices that may write guest RAM by DMA with no dirty log of their writes (an assigned device
   * without VFIO DMA logging): KVM's log does not see those writes, so after the stop every page
   * such a device can reach (all of RAM: it maps 1:1) goes again, as QEMU marks them all dirty.
   */
  untrackedDma?: readonly string[];
  /** Each pass as it starts, numbered from 1 (QMP's MIGRATION_PASS). */
  onPass?: (pass: number) => void;
  /** Each pass's figures as it ends (TSVMM_MIGRATION_TRACE=1 prints them): where its time went. */
  trace?: (line: string) => void;
  /** Who encodes RAM (a worker thread off the vCPU's); undefined or failing: the calling thread. */
  encoder?: () => Promise<RamEncoder>;
}

/** Progress of a save or a load of `ramSize` bytes of RAM, before the first section. */
function startProgress(ramSize: number): MigrationProgress {
  return {
    ramTotal: ramSize,
    ramDone: 0,
    normalPages: 0,
    zeroPages: 0,
    bytes: 0,
    passes: 0,
    remaining: ramSize,
    liveBytes: 0,
  };
}

/**
 * Writes the machine to `sink`: RAM (with a dirty log, while the guest runs, pass after pass),
 * then stop(), then what the guest wrote since, every part's state, and the KVM clock last. The
 * cancel check runs between sections: a cancelled save stops there.
 */
export async function saveMachine(m: MachineParts, sink: ByteSink, opts: SaveOptions): Promise<MigrationProgress> {
  const w = new StreamWriter(sink);
  const p = startProgress(m.ram.size);
  const report = () => {
    p.bytes = w.bytes;
    opts.progress?.(p);
  };
  const check = () => {
    if (opts.cancelled?.()) throw new StateError('stream', 'cancelled');
  };
  const pages = Math.ceil(m.ram.size / PAGE_SIZE);
  const all = () => new PageBitmap(pages).setAll();
  let stopped = false;
  const started = Date.now();
  /** The RAM thread (or the fallback encoder) once it is up. */
  let ramThread: RamEncoder | undefined;
  const throttle = async () => {
    const max = opts.maxBandwidth ?? 0;
    if (!max || stopped) return;
    const ahead = (w.bytes / max) * 1000 - (Date.now() - started);
    if (ahead > 1) await new Promise((r) => setTimeout(r, ahead));
  };
  // The encoder (a worker thread) starts while the header goes out.
  const inline = () => inlineRamEncoder(m.ram.reader ?? viewReader((o, l) => m.ram.view(o, l)));
  const startEncoder = (): Promise<RamEncoder> =>
    opts.encoder
      ? opts.encoder().catch((e: Error) => {
          console.error(`tsvmm: RAM encoder thread: ${e.message}: encoding on the main thread`);
          return inline();
        })
      : Promise.resolve(inline());
  /** Bytes per ms of the last pass: what the convergence test and the expected downtime use. */
  let bandwidth = 0;
  const account = (s: RamSection) => {
    p.zeroPages += s.zeroPages;
    p.normalPages += s.pages - s.zeroPages;
    p.ramDone = Math.min(p.ramTotal, p.ramDone + s.pages * PAGE_SIZE);
    p.remaining = Math.max(0, p.remaining - s.pages * PAGE_SIZE);
    report();
  };
  /**
   * The first blocks of `bits`, encoded on this thread until `ready()` (the RAM thread is still
   * starting: its start is not lost), a turn of the event loop (vCPU 0's) after each; their pages
   * are taken out of `bits`. Returns the pages sent.
   */
  const headStart = async (bits: PageBitmap, clear: ManualClear | undefined, ready: () => boolean) => {
    const reader = m.ram.reader ?? viewReader((o, l) => m.ram.view(o, l));
    let sent = 0;
    for (const b of bits.blocks(PAGES_PER_BLOCK)) {
      if (ready()) break;
      check();
      const s = encodeBlock(reader, bits, b, clear, clearDirtyLog);
      bits.words.fill(0, (b * PAGES_PER_BLOCK) / 32, ((b + 1) * PAGES_PER_BLOCK) / 32);
      if (s) {
        await w.framed(s.section!);
        sent += s.pages;
        account(s);
      }
      await throttle();
      await new Promise((r) => setImmediate(r));
    }
    return sent;
  };
  const sendPass = async (
    encoder: RamEncoder | Promise<RamEncoder>,
    bits: PageBitmap,
    clear: ManualClear | undefined,
  ) => {
    p.passes++;
    opts.onPass?.(p.passes);
    p.remaining = bits.count() * PAGE_SIZE;
    const t0 = Date.now(),
      b0 = w.bytes;
    let sent = 0,
      waitEnc = 0,
      waitSink = 0;
    let enc: RamEncoder | undefined,
      head = 0;
    if (encoder instanceof Promise) {
      // The RAM thread, once it is up; this thread encodes meanwhile (all of a small pass, maybe).
      if (!ramThread) head = await headStart(bits, clear, () => ramThread !== undefined);
      sent += head;
      if (ramThread || bits.count()) enc = await encoder;
    } else enc = encoder;
    let t = Date.now();
    // An encoder on its own thread writes to the stream's fd itself (after what this thread wrote):
    // the RAM never passes through this thread, which runs vCPU 0.
    const fd = enc?.direct ? w.fd() : undefined;
    if (fd !== undefined) await w.flush();
    const out =
      fd !== undefined
        ? { fd, maxBandwidth: stopped ? 0 : (opts.maxBandwidth ?? 0), started, sentBefore: w.bytes }
        : undefined;
    try {
      for await (const s of enc?.pass(bits, {
        ...(clear ? { clear } : {}),
        ...(out ? { out } : {}),
        stopIf: () => opts.cancelled?.() ?? false,
      }) ?? []) {
        waitEnc += Date.now() - t;
        check();
        t = Date.now();
        if (s.section) await w.framed(s.section);
        else w.external(s.bytes);
        waitSink += Date.now() - t;
        sent += s.pages;
        account(s);
        if (!out) await throttle();
        t = Date.now();
      }
    } catch (e) {
      check(); // a pass stopped by a cancel says so
      throw e;
    }
    const ms = Math.max(1, Date.now() - t0);
    opts.trace?.(
      `pass ${p.passes}${stopped ? ' (stopped)' : ''}: ${sent} pages${head ? ` (${head} here while the RAM thread started)` : ''}, ${w.bytes - b0} bytes in ${ms} ms ` +
        `(waiting: ${waitEnc} ms for the encoder${out ? ', which writes them' : `, ${waitSink} ms for the sink`})`,
    );
    bandwidth = (w.bytes - b0) / ms;
    p.mbps = (bandwidth * 8) / 1000;
    p.pagesPerSecond = Math.round((sent * 1000) / ms);
  };
  // Parts with state of their own that goes while the guest runs: once per pass, after its RAM.
  const sendLive = async () => {
    for (const part of m.parts) {
      if (!part.saveLive) continue;
      check();
      const payload = await part.saveLive();
      if (!payload?.length) continue;
      await w.section(part.stateId + LIVE_SUFFIX, part.stateVersion, payload);
      p.liveBytes += payload.length;
      report();
    }
  };
  let lastSync = Date.now();
  const sync = (log: DirtyLog, into = new PageBitmap(pages)) => {
    const before = into.count();
    log.sync(into);
    const now = Date.now();
    p.dirtyPagesRate = Math.round(((into.count() - before) * 1000) / Math.max(1, now - lastSync));
    lastSync = now;
    return into;
  };
  const stopNow = async () => {
    await opts.stop();
    stopped = true;
    p.precopyBytes = w.bytes;
  };

  const untracked = (opts.untrackedDma?.length ?? 0) > 0;
  let log = opts.live;
  try {
    log?.start();
  } catch (e) {
    // A KVM that keeps no dirty log (or refuses it for a slot): stop and copy instead.
    console.error(`tsvmm: no dirty log for live migration (${(e as Error).message}): the VM stops for the whole copy`);
    log = undefined;
  }
  // The RAM thread is for a copy while the guest runs (it starts while the header goes out); a
  // stopped VM's copy has this thread to itself.
  const encoding = log ? startEncoder() : Promise.resolve(inline());
  void encoding.then((e) => (ramThread = e));
  try {
    await w.header(m.description);
    if (log) {
      const limit = opts.downtimeLimitMs ?? 300,
        maxPasses = opts.maxPasses ?? 30;
      let next = all();
      lastSync = Date.now();
      // The first pass starts here while the RAM thread starts, which then takes the rest.
      for (;;) {
        await sendPass(encoding, next, log.manual());
        await sendLive();
        next = sync(log);
        // QEMU's test: the rest fits the pause at the bandwidth of the last pass (or it will not
        // get smaller: untracked DMA counts every page dirty; a guest that writes faster than
        // the link never converges and is stopped after maxPasses).
        const rest = next.count() * PAGE_SIZE;
        p.remaining = rest;
        p.expectedDowntimeMs = bandwidth > 0 ? Math.round(rest / bandwidth) : undefined;
        report();
        if (untracked || rest <= bandwidth * limit || p.passes >= maxPasses) break;
      }
      // The RAM thread's work is done: it goes now, not in the pause (a thread's end is not free).
      await ramThread?.close();
      await stopNow();
      // The vCPUs are stopped: this thread is free, and the last pass (small, if it converged)
      // goes quicker without the round trips to the RAM thread.
      await sendPass(inline(), untracked ? all() : sync(log, next), log.manual());
    } else {
      await stopNow();
      await sendPass(await encoding, all(), undefined);
    }
  } finally {
    log?.stop();
    // A RAM thread still starting is closed once it is up (not waited for: the save is done).
    if (ramThread) await ramThread.close();
    else void encoding.then((e) => e.close());
  }
  const tParts = Date.now();
  for (const part of m.parts) {
    check();
    await w.section(part.stateId, part.stateVersion, section(part));
  }
  for (const part of m.last) await w.section(part.stateId, part.stateVersion, section(part));
  await w.end();
  opts.trace?.(`state of ${m.parts.length + m.last.length} parts: ${Date.now() - tParts} ms`);
  p.remaining = 0;
  p.downtimeBytes = w.bytes - (p.precopyBytes ?? 0);
  report();
  return p;
}

/** Reads a stream into the machine (before its vCPUs first run); refuses one it does not understand. */
export async function loadMachine(
  m: MachineParts,
  src: ByteSource,
  opts: { progress?: (p: MigrationProgress) => void } = {},
): Promise<MigrationProgress> {
  const byId = new Map<string, Migratable>();
  for (const part of [...m.parts, ...m.last]) byId.set(part.stateId, part);
  const loaded = new Set<string>();
  const liveOf = (id: string) => {
    if (!id.endsWith(LIVE_SUFFIX)) return undefined;
    const part = byId.get(id.slice(0, -LIVE_SUFFIX.length));
    return part?.loadLive ? part : undefined;
  };
  const p = startProgress(m.ram.size);
  // A block may come more than once (a live migration sends again what the guest rewrote): every one at least once.
  const seen = new Uint8Array(Math.ceil(m.ram.size / RAM_BLOCK));
  let seenCount = 0;
  const ram = (payload: Uint8Array | Uint8Array[], version: number) => {
    const r = decodeRamSection(payload, m.ram.size, (o, len) => m.ram.view(o, len), version, m.ram.reader?.zeroPages);
    // A block counts once a section held every page of it (a later pass's sends a few).
    const b = Math.floor(r.offset / RAM_BLOCK);
    if (!seen[b] && r.pages === r.span) {
      seen[b] = 1;
      seenCount++;
    }
    p.ramDone = Math.min(m.ram.size, seenCount * RAM_BLOCK);
    p.remaining = m.ram.size - p.ramDone;
    opts.progress?.(p);
  };
  const r = await readStream(src, {
    config: m.description,
    knows: (id) => {
      if (id === RAM_SECTION) return RAM_VERSION;
      const part = liveOf(id);
      return part ? part.stateVersion : byId.get(id)?.stateVersion;
    },
    // RAM goes from the pieces the stream arrived in straight into guest RAM (no copy into one buffer).
    inParts: { ids: new Set([RAM_SECTION]), onParts: (_id, version, parts) => ram(parts, version) },
    onSection: async (id, version, payload) => {
      if (id === RAM_SECTION) return ram(payload, version);
      const live = liveOf(id);
      if (live) {
        if (loaded.has(live.stateId)) throw new StateError(id, 'comes after its part was loaded');
        p.liveBytes += payload.length;
        await live.loadLive!(payload, version);
        return;
      }
      if (loaded.has(id)) throw new StateError(id, 'appears twice in the stream');
      const part = byId.get(id)!;
      const reader = new StateReader(payload, id);
      part.loadState(reader, version);
      reader.end();
      loaded.add(id);
    },
  });
  const missing = [...byId.keys()].filter((id) => !loaded.has(id));
  if (missing.length)
    throw new StateError(missing[0]!, `missing from the stream (${missing.length} part(s) had no section)`);
  if (seenCount !== seen.length) {
    const first = seen.indexOf(0) * RAM_BLOCK;
    throw new StateError(
      RAM_SECTION,
      `guest RAM from 0x${first.toString(16)} is missing (${seen.length - seenCount} of ${seen.length} blocks)`,
    );
  }
  p.bytes = r.bytes;
  p.ramDone = m.ram.size;
  p.remaining = 0;
  return p;
}
