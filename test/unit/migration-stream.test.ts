// The migration stream (machine/migration/stream.ts): a round trip, and every way a destination
// refuses a stream it does not understand, each naming the section and the reason.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StateError } from '../../core/state.js';
import {
  StreamWriter,
  readStream,
  bytesSource,
  iterableSource,
  encodeRamBlock,
  decodeRamBlock,
  PAGE_SIZE,
  type ConfigDescription,
} from '../../machine/migration/stream.js';
import { parseMigrationUri } from '../../machine/migration/transport.js';

const CONFIG: ConfigDescription = { memory: 64 * 2 ** 20, vcpus: 1, sections: ['cpu/0', 'serial'] };

async function makeStream(
  sections: [string, number, Uint8Array][],
  config: ConfigDescription = CONFIG,
): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const w = new StreamWriter({ write: (b) => void chunks.push(b.slice()) });
  await w.header(config);
  for (const [id, v, p] of sections) await w.section(id, v, p);
  await w.end();
  assert.equal(
    w.bytes,
    chunks.reduce((n, c) => n + c.length, 0),
  );
  return Buffer.concat(chunks);
}

const SMALL: [string, number, Uint8Array][] = [
  ['cpu/0', 1, Uint8Array.from([1, 2, 3, 4, 5])],
  ['serial', 2, new Uint8Array(0)],
];
const KNOWN: Record<string, number> = { 'cpu/0': 1, serial: 3 };

async function read(bytes: Uint8Array, opts: { config?: ConfigDescription; known?: Record<string, number> } = {}) {
  const got: [string, number, number[]][] = [];
  const r = await readStream(bytesSource(bytes), {
    config: opts.config ?? CONFIG,
    knows: (id) => (opts.known ?? KNOWN)[id],
    onSection: (id, v, p) => void got.push([id, v, [...p]]),
  });
  return { got, ...r };
}

async function refusal(bytes: Uint8Array, opts: Parameters<typeof read>[1] = {}): Promise<StateError> {
  try {
    await read(bytes, opts);
  } catch (e) {
    assert.ok(e instanceof StateError, `not a StateError: ${String(e)}`);
    assert.equal(e.code, 'ERR_MIGRATION');
    return e;
  }
  assert.fail('the stream was accepted');
}

test('a stream reads back section by section: ids, versions, payloads, the byte count', async () => {
  const s = await makeStream(SMALL);
  const r = await read(s);
  assert.deepEqual(r.got, [
    ['cpu/0', 1, [1, 2, 3, 4, 5]],
    ['serial', 2, []],
  ]);
  assert.equal(r.sections, 2);
  assert.equal(r.bytes, s.length);
  // The same through a chunked async source (a file or socket read stream), cut at odd places.
  async function* chunks() {
    for (let i = 0; i < s.length; i += 7) yield s.subarray(i, i + 7);
  }
  const got: string[] = [];
  await readStream(iterableSource(chunks()), {
    config: CONFIG,
    knows: (id) => KNOWN[id],
    onSection: (id) => void got.push(id),
  });
  assert.deepEqual(got, ['cpu/0', 'serial']);
});

test('a stream cut at any offset is refused as truncated, naming where', async () => {
  const s = await makeStream(SMALL);
  for (let n = 0; n < s.length; n++) {
    const e = await refusal(s.subarray(0, n));
    assert.match(e.message, /truncated/, `cut at ${n}: ${e.message}`);
    assert.match(e.message, /section '[^']+'/);
  }
});

test('any one byte changed is refused (magic, checksum, corrupt tag or length), never loaded', async () => {
  const s = await makeStream(SMALL);
  for (let i = 0; i < s.length; i++) {
    for (const x of [0x01, 0x80]) {
      const bad = s.slice();
      bad[i]! ^= x;
      let e: StateError;
      let loaded: string[] = [];
      try {
        await readStream(bytesSource(bad), {
          config: CONFIG,
          knows: (id) => KNOWN[id],
          onSection: (id, _v, p) => {
            // A section may only be handed over intact (its checksum checked first).
            const want = SMALL.find(([sid]) => sid === id);
            assert.ok(want, `byte ${i}: unknown section '${id}' handed over`);
            assert.deepEqual([...p], [...want[2]], `byte ${i}: a changed payload was handed over`);
            loaded.push(id);
          },
        });
        assert.fail(`byte ${i} ^ 0x${x.toString(16)}: accepted (loaded ${loaded.join(', ')})`);
      } catch (err) {
        if (!(err instanceof StateError)) throw err;
        e = err;
      }
      assert.match(e.message, /corrupt|checksum|magic|truncated|newer|mismatch|unknown|says \d+ sections/, e.message);
      loaded = [];
    }
  }
});

test('an unknown section, a newer section version and a newer format are refused by name', async () => {
  const unknown = await refusal(await makeStream([['vfio/00:05.0', 1, new Uint8Array(4)]]));
  assert.match(unknown.message, /section 'vfio\/00:05\.0': unknown section/);
  assert.ok(unknown.fix);
  const newer = await refusal(await makeStream([['serial', 4, new Uint8Array(0)]]));
  assert.match(newer.message, /section 'serial': version 4 is newer than this build's \(3\)/);
  // The format version is the four bytes after the magic, covered by the header checksum: rewrite both.
  const s = await makeStream(SMALL);
  const { crc32 } = await import('node:zlib');
  const v = new DataView(s.buffer, s.byteOffset);
  v.setUint32(8, 2, true);
  const descLen = v.getUint32(12, true);
  const headEnd = 16 + descLen + 32;
  v.setUint32(headEnd, crc32(s.subarray(0, headEnd)), true);
  const fmt = await refusal(s);
  assert.match(fmt.message, /section 'header': stream format 2 is newer than this build's \(1\)/);
});

test('a destination with another config refuses the stream, saying what differs', async () => {
  const s = await makeStream(SMALL);
  const e = await refusal(s, { config: { ...CONFIG, memory: 128 * 2 ** 20 } });
  assert.match(e.message, /section 'header': config mismatch: memory is 67108864 in the stream, 134217728 here/);
  assert.match(e.fix ?? '', /config the source had/);
  // Key order does not matter: the description is hashed in a canonical form.
  const reordered: ConfigDescription = { sections: CONFIG.sections, vcpus: 1, memory: CONFIG.memory };
  assert.equal((await read(s, { config: reordered })).sections, 2);
});

test('not a stream at all: bad magic', async () => {
  const e = await refusal(new TextEncoder().encode('#!/bin/sh\necho not a snapshot\n'));
  assert.match(e.message, /not a tsvmm migration stream/);
});

test('RAM blocks: zero pages travel as a flag, data pages as bytes, and land where they were', () => {
  const pages = 40;
  const ram = new Uint8Array(pages * PAGE_SIZE);
  for (const p of [1, 7, 39]) ram.fill(p, p * PAGE_SIZE, p * PAGE_SIZE + 100);
  ram[20 * PAGE_SIZE + PAGE_SIZE - 1] = 0xaa; // the last byte of a page counts too
  const { payload, zeroPages } = encodeRamBlock(8 * PAGE_SIZE, ram);
  assert.equal(zeroPages, pages - 4);
  assert.ok(payload.length < 5 * PAGE_SIZE, `${payload.length} bytes for 4 data pages`);
  // The destination's RAM is not zero (its own boot image): zero pages are cleared there.
  const dest = new Uint8Array(48 * PAGE_SIZE).fill(0x5a);
  decodeRamBlock(payload, dest.length, (off, len) => dest.subarray(off, off + len));
  assert.deepEqual(dest.subarray(8 * PAGE_SIZE), ram);
  assert.ok(dest.subarray(0, 8 * PAGE_SIZE).every((b) => b === 0x5a));
  // A block beyond this RAM, or a payload that does not add up, is refused.
  assert.throws(
    () => decodeRamBlock(payload, 40 * PAGE_SIZE, (o, l) => dest.subarray(o, o + l)),
    /section 'ram': block at 0x8000 of 40 pages lies outside guest RAM/,
  );
  assert.throws(
    () => decodeRamBlock(payload.subarray(0, payload.length - 1), dest.length, (o, l) => dest.subarray(o, o + l)),
    /section 'ram': block at 0x8000: \d+ bytes for 4 data pages/,
  );
});

test('migration URIs: QEMU forms parsed, others refused with the forms', () => {
  assert.deepEqual(parseMigrationUri('file:/tmp/x'), { kind: 'file', path: '/tmp/x' });
  assert.deepEqual(parseMigrationUri('exec:cat > /tmp/x'), { kind: 'exec', command: 'cat > /tmp/x' });
  assert.deepEqual(parseMigrationUri('unix:/run/m.sock'), { kind: 'unix', path: '/run/m.sock' });
  assert.deepEqual(parseMigrationUri('tcp:127.0.0.1:4444'), { kind: 'tcp', host: '127.0.0.1', port: 4444 });
  assert.deepEqual(parseMigrationUri('tcp:[::1]:4444'), { kind: 'tcp', host: '::1', port: 4444 });
  assert.deepEqual(parseMigrationUri('tcp::4444'), { kind: 'tcp', host: '0.0.0.0', port: 4444 });
  assert.deepEqual(parseMigrationUri('fd:mig'), { kind: 'fd', name: 'mig' });
  for (const bad of ['rdma:1.2.3.4:5', 'file:', 'tcp:host', 'tcp:h:99999', '/tmp/x', 'exec: '])
    assert.throws(() => parseMigrationUri(bad), /migration URI '.*': .*/);
});

test('dirty logging: guest-RAM slots only (not a BAR mmap, not ROM) get KVM_MEM_LOG_DIRTY_PAGES, also slots added meanwhile', async () => {
  const { KvmMemslots } = await import('../../core/kvm/memslots.js');
  const { MemoryRegion } = await import('../../core/memory/index.js');
  const { native } = await import('../../core/native.js');
  const c = native().constants;
  const calls: Parameters<ReturnType<typeof native>['kvmSetUserMemoryRegion']>[1][] = [];
  const slots = new KvmMemslots(-1, 32, true, (_fd, r) => void calls.push(r));
  const sec = (region: ReturnType<typeof MemoryRegion.ram>, addr: number, readonly = false) => ({
    addr,
    size: region.size,
    region,
    offsetInRegion: 0,
    readonly,
  });
  const ram = MemoryRegion.ram('ram', 0x200000, { hostAddr: 0x7f0000000000n });
  const bar = MemoryRegion.ramDevice('bar', 0x1000, { hostAddr: 0x7f1000000000n });
  const rom = MemoryRegion.ram('rom', 0x1000, { hostAddr: 0x7f2000000000n }, { readonly: true });
  slots.regionAdd(sec(ram, 0));
  slots.regionAdd(sec(bar, 0xc0000000));
  slots.regionAdd(sec(rom, 0xc1000000, true));
  assert.ok(calls.every((r) => !(r.flags & c.KVM_MEM_LOG_DIRTY_PAGES)));
  calls.length = 0;
  slots.setDirtyLogging(true);
  assert.deepEqual(calls, [
    {
      slot: 0,
      flags: c.KVM_MEM_LOG_DIRTY_PAGES,
      guestPhysAddr: 0,
      memorySize: 0x200000,
      userspaceAddr: 0x7f0000000000n,
    },
  ]);
  const high = MemoryRegion.ram('ram-high', 0x100000, { hostAddr: 0x7f3000000000n });
  slots.regionAdd(sec(high, 2 ** 32));
  assert.equal(calls.at(-1)!.flags, c.KVM_MEM_LOG_DIRTY_PAGES, 'a RAM slot added while logging logs too');
  calls.length = 0;
  slots.setDirtyLogging(false);
  assert.deepEqual(
    calls.map((r) => [r.slot, r.flags]),
    [
      [0, 0],
      [3, 0],
    ],
  );
});
