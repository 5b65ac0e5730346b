// What MSI and MSI-X capabilities share (hw/msi.ts, hw/msix.ts): running the listener's callbacks
// with their errors collected, tracking what the listener was told about each vector, and the
// checks of arguments and config accesses.
import type { MsiMessage } from '../core/msi.js';

/** Runs listener callbacks, collecting their errors; rethrows them at the outermost level. @internal */
export class CallbackRunner {
  private depth = 0;
  private errors: unknown[] = [];

  call(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      this.errors.push(e);
    }
  }

  batch(body: () => void): void {
    this.depth++;
    try {
      body();
    } finally {
      if (--this.depth === 0 && this.errors.length > 0) {
        const errors = this.errors;
        this.errors = [];
        throw errors.length === 1
          ? errors[0]
          : new AggregateError(errors, `${errors.length} interrupt listener callbacks failed`);
      }
    }
  }
}

/** The vector side of a capability, as ReportedVectors needs it (MsixCap and MsiCap both are). */
export interface VectorSource {
  isMasked(v: number): boolean;
  message(v: number): MsiMessage;
  isPending(v: number): boolean;
  clearPending(v: number): void;
}

/**
 * What the listener was last told about each vector, shared by MSI and MSI-X: sync(v) reports
 * only the difference — vectorRelease when it became masked, vectorUse when it came into use or
 * its message changed while in use — then delivers (notify) a pending interrupt it may now take.
 */
export class ReportedVectors {
  private readonly use: Uint8Array;
  private readonly msg: Uint32Array;

  constructor(
    count: number,
    private readonly runner: CallbackRunner,
  ) {
    this.use = new Uint8Array(count);
    this.msg = new Uint32Array(count * 3);
  }

  sync(
    v: number,
    src: VectorSource,
    l: {
      vectorUse?(v: number, m: MsiMessage): void;
      vectorRelease?(v: number): void;
      notify?(v: number, m: MsiMessage): void;
    },
  ): void {
    if (src.isMasked(v)) {
      if (this.use[v]) {
        this.use[v] = 0;
        if (l.vectorRelease) this.runner.call(() => l.vectorRelease!(v));
      }
      return;
    }
    const m = src.message(v),
      r = v * 3;
    if (!this.use[v] || this.msg[r] !== m.addressLo || this.msg[r + 1] !== m.addressHi || this.msg[r + 2] !== m.data) {
      this.use[v] = 1;
      this.msg[r] = m.addressLo;
      this.msg[r + 1] = m.addressHi;
      this.msg[r + 2] = m.data;
      if (l.vectorUse) this.runner.call(() => l.vectorUse!(v, m));
    }
    // A callback above may have masked it again (then the bit waits) or already delivered it.
    if (l.notify && src.isPending(v) && !src.isMasked(v) && this.use[v]) {
      src.clearPending(v);
      const now = src.message(v);
      this.runner.call(() => l.notify!(v, now));
    }
  }
}

/** @internal */
export function checkInt(who: string, what: string, v: number, min: number, max: number): void {
  if (!Number.isInteger(v) || v < min || v > max)
    throw new RangeError(`${who}: ${what} must be an integer in [${min}, ${max}], got ${String(v)}`);
}

/** @internal */
export function checkConfigAccess(offsetInCap: number, size: number): void {
  if (size !== 1 && size !== 2 && size !== 4)
    throw new RangeError(`config access size must be 1, 2 or 4, got ${String(size)}`);
  if (!Number.isInteger(offsetInCap))
    throw new RangeError(`config access offset must be an integer, got ${String(offsetInCap)}`);
}
