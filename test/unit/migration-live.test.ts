// A part with state that goes while the guest runs (an assigned device's PRE_COPY data): its live
// sections go once per RAM pass, before the stop, and reach the destination's part in order
// before its own section; a live section for a part that takes none, or after its own, is refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { saveMachine, loadMachine, type MachineParts } from '../../machine/migration/machine-state.js';
import { StreamWriter, bytesSource, RAM_BLOCK } from '../../machine/migration/stream.js';
import { LIVE_SUFFIX, StateError, type Migratable, type StateReader, type StateWriter } from '../../core/state.js';

const SIZE = 2 * RAM_BLOCK;

function machine(part: Migratable, ram = new Uint8Array(SIZE)): MachineParts {
  return {
    description: { memory: SIZE, sections: [part.stateId] },
    parts: [part],
    last: [],
    ram: { size: SIZE, view: (o, l) => ram.subarray(o, o + l) },
  };
}

/** A device whose state goes in pieces while the guest runs, and a final value after the stop. */
class LiveDevice implements Migratable {
  readonly stateId = 'pci/00:04.0';
  readonly stateVersion = 1;
  stopped = false;
  pass = 0;
  final = 0;
  live: number[][] = [];
  constructor(offersLive = true) {
    if (!offersLive) this.loadLive = undefined;
  }
  async saveLive(): Promise<Uint8Array | undefined> {
    assert.equal(this.stopped, false, 'live data goes while the guest runs');
    this.pass++;
    return this.pass === 2 ? undefined : Uint8Array.of(this.pass, this.pass * 2);
  }
  loadLive?: (p: Uint8Array) => void = (p) => void this.live.push([...p]);
  saveState(w: StateWriter): void {
    w.u32(0xabcd);
  }
  loadState(r: StateReader): void {
    this.final = r.u32();
  }
}

async function save(dev: LiveDevice, dirtyPasses: number): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let n = 0;
  const p = await saveMachine(
    machine(dev),
    { write: (b) => void chunks.push(b.slice()) },
    {
      stop: async () => void (dev.stopped = true),
      // Dirty for a few passes (more than the pause allows), then nothing.
      live: {
        start: () => {},
        stop: () => {},
        manual: () => undefined,
        sync: (into) => {
          if (n++ >= dirtyPasses) return;
          into.set(0);
          into.set(RAM_BLOCK / 4096);
        },
      },
      downtimeLimitMs: 0,
    },
  );
  assert.equal(p.liveBytes, 2 * (dev.pass - 1), 'every non-empty live section is counted');
  return Buffer.concat(chunks);
}

test('live sections: one per pass while the guest runs (none when a pass has nothing), loaded in order before the part', async () => {
  const src = new LiveDevice();
  const bytes = await save(src, 2);
  assert.equal(src.pass, 3, 'asked once per RAM pass while running');
  const dst = new LiveDevice();
  const p = await loadMachine(machine(dst), bytesSource(bytes));
  assert.deepEqual(dst.live, [
    [1, 2],
    [3, 6],
  ]);
  assert.equal(dst.final, 0xabcd);
  assert.equal(p.liveBytes, 4);
});

test('a live section for a part that takes none, or after its own section, is refused by name', async () => {
  const bytes = await save(new LiveDevice(), 1);
  await assert.rejects(loadMachine(machine(new LiveDevice(false)), bytesSource(bytes)), (e: unknown) => {
    assert.ok(e instanceof StateError);
    assert.match(e.message, /section 'pci\/00:04\.0\+live': unknown section/);
    return true;
  });
  // Hand-made: the part's own section, then a live one.
  const chunks: Uint8Array[] = [];
  const w = new StreamWriter({ write: (b) => void chunks.push(b.slice()) });
  const dev = new LiveDevice();
  await w.header(machine(dev).description);
  await w.section(dev.stateId, 1, Uint8Array.of(1, 0, 0, 0));
  await w.section(dev.stateId + LIVE_SUFFIX, 1, Uint8Array.of(9));
  await w.end();
  await assert.rejects(
    loadMachine(machine(dev), bytesSource(Buffer.concat(chunks))),
    /comes after its part was loaded/,
  );
});

test('a device that writes RAM by DMA with no dirty log: after the stop every block goes again, whatever KVM logged', async () => {
  const pagesSent = async (untrackedDma: string[]) => {
    const dev = new LiveDevice();
    let passesBeforeStop = -1;
    const p = await saveMachine(
      machine(dev, new Uint8Array(SIZE).fill(1)),
      { write: () => {} },
      {
        stop: async () => void (passesBeforeStop = dev.pass),
        // KVM logs nothing written: only the untracked DMA can have changed RAM since the first pass.
        live: { start: () => {}, stop: () => {}, manual: () => undefined, sync: () => {} },
        untrackedDma,
      },
    );
    return { pages: p.normalPages, passesBeforeStop };
  };
  const tracked = await pagesSent([]);
  const untracked = await pagesSent(['edu0']);
  assert.equal(tracked.pages, SIZE / 4096, 'nothing logged dirty: each page once');
  assert.equal(untracked.pages, (2 * SIZE) / 4096, 'untracked DMA: every page again after the stop');
  assert.equal(untracked.passesBeforeStop, 1, 'one pass while the guest runs: more cannot converge');
});
