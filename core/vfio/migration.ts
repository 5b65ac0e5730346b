// VFIO migration uAPI v2 (Linux 5.18+, include/uapi/linux/vfio.h): a device's migration
// capability, its state machine, and its state as an opaque byte stream. The same ioctls on the
// device fd, whichever way it was opened (legacy group, iommufd cdev, mdev).
//
// For the machine's migration stream (one VfioMigration per assigned device):
//
//   const probe = VfioMigration.probe(a.device, a.host, id);
//   if (!probe.supported) → refuse `migrate` with probe.blocker (names the device and the reason)
//   const mig = new VfioMigration(a.device, probe.caps, probe.label);
//
//   Source, phase by phase (several devices: every quiesce() before any stopCopy(), as the
//   uAPI asks for P2P):
//     mig.startSave()                       RUNNING → PRE_COPY (when the device offers it)
//     for await (c of mig.readPrecopy())    while the guest runs, as often as wanted; pending()
//                                           says what the device still has (initial + dirty)
//     mig.quiesce()                         → PRE_COPY_P2P / RUNNING_P2P (vCPUs stopped)
//     mig.stopCopy()                        → STOP_COPY (several devices: VfioMigration.stopCopyAll)
//     for await (c of mig.readStopCopy())   to the end of the device's data
//     mig.finishSave()                      → STOP, data fd closed (migrated: the source stays stopped)
//     mig.resume()                          → RUNNING (a snapshot, or the source goes on)
//   or all of it: `for await (c of mig.saveDeviceState({ stop }))`, stop() being where the
//   machine stops its vCPUs.
//
//   Destination: mig.startLoad() (→ RESUMING), `await mig.write(c)` for every chunk in the order
//   the source read them (precopy then stop-copy: one stream, chunk boundaries do not matter),
//   mig.finishLoad() (→ STOP, where the driver checks the data, → RUNNING); or all of it:
//   `await mig.loadDeviceState(chunks)`.
//
// Any failure (or abort()) puts the device back in RUNNING — a RESUMING device by VFIO_DEVICE_RESET,
// as the uAPI says — and closes the data fd; the error says what happened to the device.
import { closeSync, existsSync, read, readlinkSync, write } from 'node:fs';
import { basename } from 'node:path';
import { TsvmmError, type TsvmmErrorOptions } from '../errors.js';
import { native, isSyscallError } from '../native.js';
import { readTrim } from './sysfs.js';

/** Migration states; the index is the uAPI's value (enum vfio_device_mig_state). */
export const MIG_STATES = [
  'ERROR',
  'STOP',
  'RUNNING',
  'STOP_COPY',
  'RESUMING',
  'RUNNING_P2P',
  'PRE_COPY',
  'PRE_COPY_P2P',
] as const;
export type MigState = (typeof MIG_STATES)[number];

export interface MigrationCaps {
  /** VFIO_MIGRATION_* as the kernel reports them (STOP_COPY always set here). */
  flags: number;
  p2p: boolean;
  preCopy: boolean;
  /** VFIO_DEVICE_FEATURE_DMA_LOGGING_START is offered (the device tracks the pages it writes). */
  dmaLogging: boolean;
}

export type MigrationProbe =
  | { supported: true; caps: MigrationCaps; label: string }
  | { supported: false; reason: string; blocker: string; label: string };

/** The device side this module needs: its fd and the name VFIO knows it by. */
export interface MigratableDevice {
  readonly fd: number;
  readonly name: string;
}
/** What sysfs says about it (core/vfio/sysfs.ts HostDevice), for messages. */
export interface MigratableHost {
  sysfs: string;
  driver: string | undefined;
  vendor?: number;
  device?: number;
}

export class MigrationError extends TsvmmError {
  constructor(message: string, opts?: TsvmmErrorOptions) {
    super('ERR_MIGRATION', message, opts);
  }
}

const SAVING: ReadonlySet<MigState> = new Set(['PRE_COPY', 'PRE_COPY_P2P', 'STOP_COPY']);

/** The FSM arcs a driver implements for its features (the list in vfio.h and vfio_main.c). */
export function migrationArcs(caps: { p2p: boolean; preCopy: boolean }): [MigState, MigState][] {
  const arcs: [MigState, MigState][] = [
    ['RESUMING', 'STOP'],
    ['STOP', 'RESUMING'],
    ['STOP', 'STOP_COPY'],
    ['STOP_COPY', 'STOP'],
  ];
  if (caps.p2p)
    arcs.push(['RUNNING', 'RUNNING_P2P'], ['RUNNING_P2P', 'RUNNING'], ['RUNNING_P2P', 'STOP'], ['STOP', 'RUNNING_P2P']);
  else arcs.push(['RUNNING', 'STOP'], ['STOP', 'RUNNING']);
  if (caps.preCopy) {
    arcs.push(['RUNNING', 'PRE_COPY'], ['PRE_COPY', 'RUNNING']);
    if (caps.p2p)
      arcs.push(
        ['PRE_COPY', 'PRE_COPY_P2P'],
        ['PRE_COPY_P2P', 'PRE_COPY'],
        ['PRE_COPY_P2P', 'RUNNING_P2P'],
        ['PRE_COPY_P2P', 'STOP_COPY'],
        ['RUNNING_P2P', 'PRE_COPY_P2P'],
      );
    else arcs.push(['PRE_COPY', 'STOP_COPY']);
  }
  return arcs;
}

/**
 * The states a device passes through from `from` to `to` (without `from`; [] when equal), by the
 * kernel's rule: the shortest path whose interior holds no saving state (PRE_COPY, PRE_COPY_P2P,
 * STOP_COPY) unless both ends are saving states, so no data session opens and closes on the way.
 * undefined when there is none (from ERROR, into ERROR, STOP_COPY back to PRE_COPY, a state the
 * device does not offer).
 */
export function migrationPath(
  from: MigState,
  to: MigState,
  caps: { p2p: boolean; preCopy: boolean },
): MigState[] | undefined {
  if (from === to) return from === 'ERROR' ? undefined : [];
  // The uAPI forbids going back from STOP_COPY into pre-copy (a future flag may allow it).
  if (from === 'STOP_COPY' && (to === 'PRE_COPY' || to === 'PRE_COPY_P2P')) return undefined;
  const arcs = migrationArcs(caps);
  const interiorMaySave = SAVING.has(from) && SAVING.has(to);
  const prev = new Map<MigState, MigState>([[from, from]]);
  let frontier: MigState[] = [from];
  while (frontier.length && !prev.has(to)) {
    const next: MigState[] = [];
    for (const s of frontier) {
      if (s !== from && SAVING.has(s) && !interiorMaySave) continue; // no onward arcs from an interior saving state
      for (const [a, b] of arcs)
        if (a === s && !prev.has(b)) {
          prev.set(b, s);
          next.push(b);
        }
    }
    frontier = next;
  }
  if (!prev.has(to)) return undefined;
  const path: MigState[] = [];
  for (let s = to; s !== from; s = prev.get(s)!) path.unshift(s);
  return path;
}

/** Whether entering `to` from `from` opens a data session (the kernel returns its fd). */
export function arcOpensSession(from: MigState, to: MigState): boolean {
  return (to === 'RESUMING' && from === 'STOP') || (SAVING.has(to) && !SAVING.has(from));
}

const PCI_CLASSES: Record<number, string> = {
  0x010802: 'NVMe controller',
  0x0108: 'non-volatile memory controller',
  0x0106: 'SATA controller',
  0x01: 'mass storage controller',
  0x0200: 'Ethernet controller',
  0x02: 'network controller',
  0x0300: 'VGA controller',
  0x03: 'display controller',
  0x04: 'multimedia controller',
  0x06: 'bridge',
  0x0700: 'serial controller',
  0x07: 'communication controller',
  0x08: 'system peripheral',
  0x0c03: 'USB controller',
  0x0c: 'serial bus controller',
  0x12: 'processing accelerator',
};

/** A PCI class code (the 24-bit sysfs `class`) as words, most specific first; undefined for unclassified. */
export function pciClassName(classCode: number): string | undefined {
  return PCI_CLASSES[classCode] ?? PCI_CLASSES[classCode >>> 8] ?? PCI_CLASSES[classCode >>> 16];
}

/** "1b36:0010 NVMe controller, driver vfio-pci" or "mdev type mtty-1, driver mtty". */
export function describeHostDevice(host: MigratableHost): string {
  const parts: string[] = [];
  if (existsSync(`${host.sysfs}/mdev_type`)) {
    let type = '?';
    try {
      type = basename(readlinkSync(`${host.sysfs}/mdev_type`));
    } catch {
      /* racing a remove */
    }
    parts.push(`mdev type ${type}`);
  } else {
    const hex = (v: number | undefined) => (v ?? 0).toString(16).padStart(4, '0');
    const cls = Number(readTrim(`${host.sysfs}/class`) ?? 'NaN');
    const name = Number.isFinite(cls) ? pciClassName(cls) : undefined;
    parts.push(`${hex(host.vendor)}:${hex(host.device)}${name ? ` ${name}` : ''}`);
  }
  if (host.driver) parts.push(`driver ${host.driver}`);
  return parts.join(', ');
}

/**
 * The migration blocker of a device without VFIO migration, as QEMU words it
 * ("<name>: VFIO migration is not supported in kernel"), with what the device is and why.
 */
export function blockerMessage(who: { label: string; name: string; description?: string }, reason: string): string {
  const what = [who.label !== who.name ? who.name : undefined, who.description].filter(Boolean).join(', ');
  return `${who.label}${what ? ` (${what})` : ''}: VFIO migration is not supported: ${reason}`;
}

const CHUNK = 1 << 20;
/** Linux's ENOMSG (libuv has no name for it: Node calls it "Unknown system error -42"). */
const ENOMSG = 42;
const readAsync = (fd: number, buf: Uint8Array, len: number) =>
  new Promise<number>((resolve, reject) =>
    // position null: read(2), not pread — migration data fds are streams (pread gives ESPIPE).
    read(fd, buf, 0, len, null, (err, n) => (err ? reject(err) : resolve(n))),
  );
const writeAsync = (fd: number, buf: Uint8Array) =>
  new Promise<number>((resolve, reject) =>
    write(fd, buf, 0, buf.length, null, (err, n) => (err ? reject(err) : resolve(n))),
  );
const closeQuietly = (fd: number) => {
  try {
    closeSync(fd);
  } catch {
    /* already gone */
  }
};
class AbortedIo extends Error {}
const errCode = (e: unknown) => (e as { code?: string }).code ?? (e instanceof Error ? e.message : String(e));

type Phase = 'idle' | 'saving' | 'loading';

export class VfioMigration {
  private dataFd: number | undefined;
  private phase: Phase = 'idle';
  /** Reads/writes on the data fd in the thread pool; an abort meanwhile closes the fd after them. */
  private inflight = 0;
  private readonly closeAfterIo: number[] = [];
  /** Bytes moved through the data fd in the current (or last) save or load, by phase. */
  readonly stats = { precopyBytes: 0, stopCopyBytes: 0, loadedBytes: 0 };

  constructor(
    readonly device: MigratableDevice,
    readonly caps: MigrationCaps,
    /** How messages name the device (the VM's device id, else the VFIO name). */
    readonly label: string = device.name,
  ) {}

  /** What the device offers; `label` is the VM's id for it, used in messages. */
  static probe(device: MigratableDevice, host?: MigratableHost, label: string = device.name): MigrationProbe {
    const n = native(),
      c = n.constants;
    const blocked = (reason: string): MigrationProbe => ({
      supported: false,
      reason,
      label,
      blocker: blockerMessage(
        { label, name: device.name, ...(host ? { description: describeHostDevice(host) } : {}) },
        reason,
      ),
    });
    let flags: number;
    try {
      flags = n.vfioDeviceMigrationFlags(device.fd);
    } catch (e) {
      if (!isSyscallError(e)) throw e;
      if (e.code === 'ENOTTY')
        return blocked(
          `its driver${host?.driver ? ` (${host.driver})` : ''} has no migration support (VFIO_DEVICE_FEATURE_MIGRATION: ENOTTY)`,
        );
      return blocked(`VFIO_DEVICE_FEATURE_MIGRATION failed (${e.code})`);
    }
    if (!(flags & c.VFIO_MIGRATION_STOP_COPY))
      return blocked(`it offers migration flags 0x${flags.toString(16)} without STOP_COPY, which every transfer needs`);
    let dmaLogging = true;
    try {
      n.vfioDeviceFeatureProbe(device.fd, c.VFIO_DEVICE_FEATURE_DMA_LOGGING_START, c.VFIO_DEVICE_FEATURE_SET);
    } catch (e) {
      if (!isSyscallError(e)) throw e;
      dmaLogging = false;
    }
    return {
      supported: true,
      label,
      caps: {
        flags,
        p2p: (flags & c.VFIO_MIGRATION_P2P) !== 0,
        preCopy: (flags & c.VFIO_MIGRATION_PRE_COPY) !== 0,
        dmaLogging,
      },
    };
  }

  /** probe(), or the blocker as a MigrationError. */
  static open(device: MigratableDevice, host?: MigratableHost, label?: string): VfioMigration {
    const p = VfioMigration.probe(device, host, label);
    if (!p.supported)
      throw new MigrationError(p.blocker, {
        fix: 'remove the device before migrating (device_del), or use a device whose driver supports VFIO migration',
      });
    return new VfioMigration(device, p.caps, p.label);
  }

  state(): MigState {
    const v = native().vfioDeviceMigGetState(this.device.fd);
    return MIG_STATES[v] ?? 'ERROR';
  }

  /** The estimated size of the stop-copy data. */
  dataSize(): bigint {
    return native().vfioDeviceMigDataSize(this.device.fd);
  }

  /** What a PRE_COPY device still has to give (undefined outside PRE_COPY). */
  pending(): { initialBytes: bigint; dirtyBytes: bigint } | undefined {
    if (this.dataFd === undefined || !this.caps.preCopy) return undefined;
    try {
      return native().vfioMigPrecopyInfo(this.dataFd);
    } catch (e) {
      if (isSyscallError(e, 'EINVAL')) return undefined; // not in a PRE_COPY state
      throw e;
    }
  }

  /**
   * Moves the device to `to` one arc at a time along the kernel's path (as QEMU's
   * vfio_migration_set_state), so a failure leaves it at a known step. A data fd an arc opens is
   * kept (one session at a time); an arc that ends the session closes it. Returns the states
   * passed through, `to` last.
   */
  setState(to: MigState): MigState[] {
    const n = native();
    let cur = this.state();
    const path = migrationPath(cur, to, this.caps);
    if (!path)
      throw new MigrationError(`${this.label}: no VFIO migration state change from ${cur} to ${to}`, {
        fix: cur === 'ERROR' ? 'the device must be reset (VFIO_DEVICE_RESET)' : undefined,
      });
    for (const next of path) {
      let fd: number;
      try {
        fd = n.vfioDeviceMigSetState(this.device.fd, MIG_STATES.indexOf(next));
      } catch (e) {
        throw new MigrationError(`${this.label}: the device refused the migration state change ${cur} → ${next}`, {
          cause: e,
        });
      }
      if (fd >= 0) {
        this.closeDataFd();
        this.dataFd = fd;
      } else if (!SAVING.has(next) && next !== 'RESUMING') this.closeDataFd();
      cur = next;
    }
    return path;
  }

  // ---- source ----

  /** RUNNING → PRE_COPY where the device offers it (the data fd opens now), else nothing yet. */
  startSave(): void {
    this.expect('idle', 'startSave');
    this.phase = 'saving';
    this.stats.precopyBytes = this.stats.stopCopyBytes = 0;
    if (this.caps.preCopy) this.guard(() => void this.setState('PRE_COPY'));
  }

  /**
   * The pre-copy data the device has now (PRE_COPY_INFO's initial + dirty bytes), at most
   * `limit` bytes; ends at the device's temporary end of stream. Nothing without PRE_COPY.
   */
  async *readPrecopy(limit = Number.MAX_SAFE_INTEGER): AsyncGenerator<Uint8Array> {
    this.expect('saving', 'readPrecopy');
    if (!this.caps.preCopy) return;
    let left = Math.min(limit, this.precopyAvailable());
    while (left > 0) {
      const buf = Buffer.allocUnsafe(Math.min(CHUNK, left));
      let got: number;
      try {
        got = await this.io(this.dataFd!, () => readAsync(this.dataFd!, buf, buf.length));
      } catch (e) {
        if ((e as { errno?: number }).errno === -ENOMSG) break; // the temporary end of the pre-copy stream
        throw this.failIo(`reading ${this.label}'s pre-copy data failed`, e);
      }
      if (got === 0) break;
      this.stats.precopyBytes += got;
      left -= got;
      yield buf.subarray(0, got);
    }
  }

  private precopyAvailable(): number {
    try {
      const p = this.pending();
      return p ? Number(p.initialBytes + p.dirtyBytes) : 0;
    } catch (e) {
      throw this.failSync(`VFIO_MIG_GET_PRECOPY_INFO of ${this.label} failed`, e);
    }
  }

  /** P2P quiescence (PRE_COPY_P2P / RUNNING_P2P) before any device of the VM stops; no-op without P2P. */
  quiesce(): void {
    this.expect('saving', 'quiesce');
    if (!this.caps.p2p) return;
    this.guard(() => void this.setState(this.caps.preCopy ? 'PRE_COPY_P2P' : 'RUNNING_P2P'));
  }

  /** → STOP_COPY: the device stops; its final state can be read. */
  stopCopy(): void {
    this.expect('saving', 'stopCopy');
    this.guard(() => void this.setState('STOP_COPY'));
    if (this.dataFd === undefined)
      throw this.failSync(`${this.label} entered STOP_COPY without a data fd`, new Error('no data fd'));
  }

  /** The stop-copy data, to the device's end of stream. */
  async *readStopCopy(): AsyncGenerator<Uint8Array> {
    this.expect('saving', 'readStopCopy');
    const fd = this.dataFd;
    if (fd === undefined) throw new MigrationError(`${this.label}: readStopCopy before stopCopy`);
    let size = CHUNK;
    try {
      size = Math.max(4096, Math.min(CHUNK, Number(this.dataSize())));
    } catch {
      /* an estimate only */
    }
    for (;;) {
      const buf = Buffer.allocUnsafe(size);
      let got: number;
      try {
        got = await this.io(fd, () => readAsync(fd, buf, buf.length));
      } catch (e) {
        throw this.failIo(`reading ${this.label}'s stop-copy data failed`, e);
      }
      if (got === 0) return;
      this.stats.stopCopyBytes += got;
      yield buf.subarray(0, got);
    }
  }

  /** STOP_COPY → STOP, data fd closed: the device stays stopped (resume() restarts it). */
  finishSave(): void {
    this.expect('saving', 'finishSave');
    this.guard(() => void this.setState('STOP'));
    this.closeDataFd();
    this.phase = 'idle';
  }

  /** → RUNNING (after a save the source goes on with, or a load that asked not to run). */
  resume(): void {
    this.expect('idle', 'resume');
    this.guard(() => void this.setState('RUNNING'));
  }

  /**
   * The whole save as one stream: pre-copy chunks while the guest runs, then `stop()` (the
   * machine stops its vCPUs), then the stop-copy chunks. Ends with the device in STOP. An error,
   * or the consumer leaving early, puts the device back in RUNNING.
   */
  async *saveDeviceState(opts: { stop?: () => void | Promise<void> } = {}): AsyncGenerator<Uint8Array> {
    this.expect('idle', 'saveDeviceState');
    let done = false;
    try {
      this.startSave();
      yield* this.readPrecopy();
      await opts.stop?.();
      this.quiesce();
      this.stopCopy();
      yield* this.readStopCopy();
      this.finishSave();
      done = true;
    } finally {
      if (!done && this.phase !== 'idle') this.recover();
    }
  }

  /**
   * Stops several devices of one VM as the uAPI asks: every one quiesced (P2P) before any enters
   * STOP_COPY, so none is stopped while another may still DMA to it. On a failure every device is
   * put back in RUNNING and the error rethrown.
   */
  static stopCopyAll(migs: readonly VfioMigration[]): void {
    try {
      for (const m of migs) m.quiesce();
      for (const m of migs) m.stopCopy();
    } catch (e) {
      for (const m of migs) if (m.phase !== 'idle') m.recover();
      throw e;
    }
  }

  // ---- destination ----

  /** → RESUMING (through STOP): the data fd to write opens. */
  startLoad(): void {
    this.expect('idle', 'startLoad');
    this.phase = 'loading';
    this.stats.loadedBytes = 0;
    this.guard(() => void this.setState('RESUMING'));
  }

  /** Writes one chunk of the source's stream (in its order). */
  async write(chunk: Uint8Array): Promise<void> {
    this.expect('loading', 'write');
    let off = 0;
    while (off < chunk.length) {
      let n: number;
      try {
        const fd = this.dataFd!;
        n = await this.io(fd, () => writeAsync(fd, chunk.subarray(off)));
      } catch (e) {
        throw this.failIo(
          `${this.label} refused its migration data at byte ${this.stats.loadedBytes} (the stream is corrupt, or from another kind of device)`,
          e,
        );
      }
      off += n;
      this.stats.loadedBytes += n;
    }
  }

  /** RESUMING → STOP (the driver checks and takes the data), then → RUNNING unless run is false. */
  finishLoad(run = true): void {
    this.expect('loading', 'finishLoad');
    try {
      this.setState('STOP');
    } catch (e) {
      throw this.failSync(
        `${this.label} rejected the ${this.stats.loadedBytes} bytes of migration data (truncated, or not a state of this device)`,
        e,
      );
    }
    this.closeDataFd();
    this.phase = 'idle';
    if (run) this.resume();
  }

  /** The whole load: RESUMING, every chunk, STOP, RUNNING (unless run is false). */
  async loadDeviceState(
    chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
    opts: { run?: boolean } = {},
  ): Promise<void> {
    this.startLoad();
    try {
      for await (const c of chunks) await this.write(c);
    } catch (e) {
      if (this.phase !== 'idle') throw this.failSync(`loading ${this.label}'s state failed`, e);
      throw e;
    }
    this.finishLoad(opts.run ?? true);
  }

  // ---- recovery ----

  /** Abandons a save or a load: the device back in RUNNING, the data fd closed. Says how. */
  abort(): string {
    return this.recover();
  }

  /** Closes the data fd if one is open (the device's state is left as it is). */
  close(): void {
    this.closeDataFd();
    this.phase = 'idle';
  }

  private recover(): string {
    const resuming = this.phase === 'loading';
    this.phase = 'idle';
    let how: string;
    try {
      let st: MigState | undefined;
      try {
        st = this.state();
      } catch {
        /* reset below */
      }
      // A RESUMING session is abandoned by a reset (the uAPI): going on to STOP would load it.
      if (st !== undefined && st !== 'ERROR' && st !== 'RESUMING' && !resuming) {
        try {
          this.setState('RUNNING');
          return 'the device is back in RUNNING';
        } catch {
          /* reset below */
        }
      }
      how = this.resetToRunning();
    } finally {
      this.closeDataFd();
    }
    return how;
  }

  private resetToRunning(): string {
    this.closeDataFd();
    try {
      // Not VfioDevice.reset(): mdev drivers (mtty) implement the reset without advertising
      // VFIO_DEVICE_FLAGS_RESET, and the migration state returns to RUNNING with it.
      native().vfioDeviceReset(this.device.fd);
    } catch (e) {
      return `the device could not be returned to RUNNING nor reset (${errCode(e)}): it needs a reset before use`;
    }
    let st: MigState | string;
    try {
      st = this.state();
    } catch (e) {
      st = errCode(e);
    }
    return st === 'RUNNING'
      ? 'the device was reset and is back in RUNNING'
      : `the device was reset but reports ${st}: it needs a reset before use`;
  }

  private closeDataFd(): void {
    if (this.dataFd === undefined) return;
    const fd = this.dataFd;
    this.dataFd = undefined;
    if (this.inflight > 0)
      this.closeAfterIo.push(fd); // a pool thread may still be in read(2)/write(2) on it
    else closeQuietly(fd);
  }

  /** One read or write on the data fd; an abort() that came meanwhile makes it an error. */
  private async io<T>(fd: number, f: () => Promise<T>): Promise<T> {
    this.inflight++;
    try {
      const r = await f();
      if (this.dataFd !== fd) throw new AbortedIo();
      return r;
    } finally {
      if (--this.inflight === 0) for (const c of this.closeAfterIo.splice(0)) closeQuietly(c);
    }
  }

  private failIo(what: string, e: unknown): MigrationError {
    // abort() while the read or write was in flight: the device is already recovered.
    if (e instanceof AbortedIo || this.phase === 'idle')
      return new MigrationError(`${what}: the migration was aborted meanwhile`, { cause: e });
    return this.failSync(what, e);
  }

  private guard(f: () => void): void {
    try {
      f();
    } catch (e) {
      throw this.failSync(e instanceof MigrationError ? e.message : `${this.label}: migration step failed`, e);
    }
  }

  /** Recovers the device, then the error: what failed, the kernel's errno, what became of the device. */
  private failSync(what: string, e: unknown): MigrationError {
    const how = this.recover();
    const inner = e instanceof MigrationError ? e : undefined;
    const root = inner ? inner.cause : e;
    const because = inner && inner.message !== what ? `: ${inner.message.replace(`${this.label}: `, '')}` : '';
    const code = root === undefined ? '' : ` (${errCode(root)})`;
    return new MigrationError(`${what}${because}${code}; ${how}`, { cause: e });
  }

  private expect(phase: Phase, op: string): void {
    if (this.phase !== phase)
      throw new MigrationError(
        `${this.label}: ${op} while ${this.phase === 'idle' ? 'neither saving nor loading' : this.phase} (a caller's mistake)`,
      );
  }
}

/**
 * The device's own log of the pages it writes by DMA (VFIO_DEVICE_FEATURE_DMA_LOGGING_*, where
 * probe() reports caps.dmaLogging), so pre-copy can count RAM the device dirtied; a device without
 * it must have every page it can reach counted dirty (QEMU's rule).
 */
export class DeviceDirtyLog {
  private active = true;

  private constructor(
    readonly device: MigratableDevice,
    /** The page size the device tracks with (it may differ from the one asked for). */
    readonly pageSize: number,
    readonly label: string,
  ) {}

  /** Starts the log over IOVA ranges (page-aligned, not overlapping). One log per device at a time. */
  static start(
    device: MigratableDevice,
    ranges: { iova: number; length: number }[],
    pageSize = 4096,
    label: string = device.name,
  ): DeviceDirtyLog {
    try {
      const got = native().vfioDeviceDmaLoggingStart(device.fd, pageSize, ranges);
      return new DeviceDirtyLog(device, Number(got), label);
    } catch (e) {
      if (!isSyscallError(e)) throw e;
      throw new MigrationError(
        e.code === 'ENOTTY'
          ? `${label} has no DMA dirty logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_START: ENOTTY)`
          : `${label}: starting its DMA dirty log over ${ranges.length} range(s) failed (${e.code})`,
        {
          cause: e,
          fix:
            e.code === 'ENOTTY'
              ? 'count every page the device can reach as dirty'
              : e.code === 'EINVAL'
                ? 'ranges must be aligned to the page size and must not overlap'
                : undefined,
        },
      );
    }
  }

  /** Reads and clears the log for [iova, iova + length): bit i (LSB first) = the page at iova + i * pageSize. */
  bitmap(iova: number, length: number, pageSize = this.pageSize): Uint8Array {
    if (!this.active) throw new MigrationError(`${this.label}: its DMA dirty log is stopped`);
    try {
      return native().vfioDeviceDmaLoggingReport(this.device.fd, iova, length, pageSize);
    } catch (e) {
      // The uAPI: after a failed report the log must be taken as lost (all dirty).
      throw new MigrationError(
        `${this.label}: reading its DMA dirty log failed (${errCode(e)}): count the range dirty`,
        {
          cause: e,
        },
      );
    }
  }

  /** The pages written since the last read (addresses), clearing them. */
  dirtyPages(iova: number, length: number): number[] {
    const bits = this.bitmap(iova, length);
    const out: number[] = [];
    for (let i = 0; i < bits.length; i++)
      for (let b = 0, v = bits[i]!; v; b++, v >>= 1) if (v & 1) out.push(iova + (i * 8 + b) * this.pageSize);
    return out;
  }

  stop(): void {
    if (!this.active) return;
    this.active = false;
    native().vfioDeviceDmaLoggingStop(this.device.fd);
  }
}
