// A machine's whole state through the stream (machine/migration/stream.ts): the machine hands
// over its parts (each a Migratable: vCPUs, the in-kernel irqchip and PIT, every device model, the
// KVM clock) and its RAM; this walks them in a fixed order. Save: the irqchip, each vCPU, each
// device, RAM in blocks (zero pages as a flag), the clock last. Load: each section to the part
// with its id; at the end every part must have had its section, or the stream is refused.
import { StateReader, StateWriter, StateError, type Migratable } from '../../core/state.js';
import {
  StreamWriter,
  readStream,
  encodeRamBlock,
  decodeRamBlock,
  RAM_BLOCK,
  RAM_SECTION,
  RAM_VERSION,
  PAGE_SIZE,
  type ByteSink,
  type ByteSource,
  type ConfigDescription,
} from './stream.js';

export interface MachineParts {
  /** What the destination must match (memory, layout, vCPUs, devices). */
  description: ConfigDescription;
  /** In the order they are saved and restored. */
  parts: Migratable[];
  /** Saved after RAM, restored last (the KVM clock). */
  last: Migratable[];
  ram: { size: number; view(offset: number, length: number): Uint8Array };
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
}

function section(m: Migratable): Uint8Array {
  const w = new StateWriter();
  m.saveState(w);
  return w.bytes();
}

/**
 * Writes the machine to `sink` (every part must be quiet: vCPUs parked, I/O completed). The
 * cancel check runs between sections: a cancelled save stops there.
 */
export async function saveMachine(
  m: MachineParts,
  sink: ByteSink,
  opts: { progress?: (p: MigrationProgress) => void; cancelled?: () => boolean } = {},
): Promise<MigrationProgress> {
  const w = new StreamWriter(sink);
  const p: MigrationProgress = { ramTotal: m.ram.size, ramDone: 0, normalPages: 0, zeroPages: 0, bytes: 0 };
  const report = () => {
    p.bytes = w.bytes;
    opts.progress?.(p);
  };
  const check = () => {
    if (opts.cancelled?.()) throw new StateError('stream', 'cancelled');
  };
  await w.header(m.description);
  for (const part of m.parts) {
    check();
    await w.section(part.stateId, part.stateVersion, section(part));
  }
  report();
  for (let off = 0; off < m.ram.size; off += RAM_BLOCK) {
    check();
    const len = Math.min(RAM_BLOCK, m.ram.size - off);
    const { payload, zeroPages } = encodeRamBlock(off, m.ram.view(off, len));
    await w.section(RAM_SECTION, RAM_VERSION, payload);
    p.zeroPages += zeroPages;
    p.normalPages += len / PAGE_SIZE - zeroPages;
    p.ramDone = off + len;
    report();
  }
  for (const part of m.last) await w.section(part.stateId, part.stateVersion, section(part));
  await w.end();
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
  const p: MigrationProgress = { ramTotal: m.ram.size, ramDone: 0, normalPages: 0, zeroPages: 0, bytes: 0 };
  let ramBlocks = 0;
  const r = await readStream(src, {
    config: m.description,
    knows: (id) => (id === RAM_SECTION ? RAM_VERSION : byId.get(id)?.stateVersion),
    onSection: (id, version, payload) => {
      if (id === RAM_SECTION) {
        decodeRamBlock(payload, m.ram.size, (off, len) => m.ram.view(off, len));
        ramBlocks++;
        p.ramDone = Math.min(m.ram.size, ramBlocks * RAM_BLOCK);
        opts.progress?.(p);
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
  if (ramBlocks !== Math.ceil(m.ram.size / RAM_BLOCK))
    throw new StateError(
      RAM_SECTION,
      `${ramBlocks} blocks of RAM in the stream; ${Math.ceil(m.ram.size / RAM_BLOCK)} expected`,
    );
  p.bytes = r.bytes;
  p.ramDone = m.ram.size;
  return p;
}
