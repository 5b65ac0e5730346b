// Migration as QMP has it (QEMU's qapi/migration.json): one outgoing job at a time (`migrate` to a
// URI: RAM while the guest runs where KVM keeps a dirty log, then the vCPUs stop, the rest goes
// out, and the source stays stopped in 'postmigrate'), one incoming (`migrate-incoming`, or the command line's --incoming), their
// MigrationInfo for query-migrate, the MIGRATION events, and the run states they imply
// (inmigrate, finish-migrate, postmigrate). Used by the command layer (QMP and the library).
import { TsvmmError } from '../core/errors.js';
import {
  openIncoming,
  openOutgoing,
  type MachineControl,
  type MigrationProgress,
  type TakeFd,
} from '../machine/index.js';

/** QAPI MigrationStatus (the values tsvmm reaches). */
export type MigrationStatus = 'none' | 'setup' | 'cancelling' | 'cancelled' | 'active' | 'completed' | 'failed';

interface Job {
  status: MigrationStatus;
  start: number;
  setupTime?: number;
  stoppedAt?: number;
  end?: number;
  progress?: MigrationProgress;
  error?: string;
}

type Emit = (event: string, data?: Record<string, unknown>) => void;

const PAGE = 4096;

export class Migration {
  private out: Job | undefined;
  private inc: Job | undefined;
  private cancelRequested = false;
  /** QEMU's defaults: a 300 ms pause, 128 MiB/s (MAX_THROTTLE in QEMU's migration.c). */
  readonly parameters = { 'downtime-limit': 300, 'max-bandwidth': 128 * 2 ** 20 };
  /** The outgoing connection, dropped by a cancel (a write may wait on a peer that reads nothing). */
  private abortOut: (() => void) | undefined;
  /** Waiting for migrate-incoming (the command line said --incoming defer). */
  private deferred: boolean;
  private incomingDone: { promise: Promise<void>; resolve: () => void; reject: (e: Error) => void } | undefined;

  constructor(
    private readonly m: MachineControl,
    private readonly emit: Emit,
    opts: { incoming?: 'defer' } = {},
  ) {
    this.deferred = opts.incoming === 'defer';
    if (this.deferred) this.incomingDone = deferred();
  }

  private event(job: Job, status: MigrationStatus): void {
    job.status = status;
    this.emit('MIGRATION', { status });
  }

  /** The run state QMP reports while migration owns the VM (undefined: the machine's own). */
  runState(): 'inmigrate' | 'finish-migrate' | 'postmigrate' | undefined {
    if (this.deferred || (this.inc && ['setup', 'active'].includes(this.inc.status))) return 'inmigrate';
    if (this.out?.status === 'active' && this.out.stoppedAt !== undefined) return 'finish-migrate';
    if (this.out?.status === 'completed' && this.m.status() !== 'running') return 'postmigrate';
    return undefined;
  }

  /** Whether migrate-incoming (or --incoming URI) was given already. */
  get incomingStarted(): boolean {
    return this.inc !== undefined;
  }

  /** Whether a destination waits for its stream (nothing may run the VM yet). */
  get waitingForIncoming(): boolean {
    return this.runState() === 'inmigrate';
  }

  /**
   * Starts an outgoing migration; throws at once (the VM untouched) for a blocker, a bad URI or
   * one already running. Returns the job's completion (which never rejects: failure is a status).
   */
  async start(uri: string, takeFd?: TakeFd): Promise<{ done: Promise<void> }> {
    if (this.out && ['setup', 'active', 'cancelling'].includes(this.out.status))
      throw new TsvmmError('ERR_MIGRATION', "There's a migration process in progress");
    if (this.waitingForIncoming) throw new TsvmmError('ERR_MIGRATION', 'Guest is waiting for an incoming migration');
    const blockers = this.m.migrationBlockers();
    if (blockers.length) throw new TsvmmError('ERR_MIGRATION', blockers.join('; '));
    const job: Job = { status: 'none', start: Date.now() };
    this.out = job;
    this.cancelRequested = false;
    this.event(job, 'setup');
    let target;
    try {
      target = await openOutgoing(uri, takeFd);
    } catch (e) {
      job.error = (e as Error).message;
      job.end = Date.now();
      this.event(job, 'failed');
      throw e;
    }
    job.setupTime = Date.now() - job.start;
    this.abortOut = () => target.abort();
    const wasRunning = this.m.status() === 'running';
    const done = (async () => {
      this.event(job, 'active');
      try {
        job.progress = await this.m.saveState(target.sink, {
          progress: (p) => (job.progress = { ...p }),
          cancelled: () => this.cancelRequested,
          // Pre-copy where KVM keeps a dirty log: the guest runs while RAM goes (QEMU's default).
          live: true,
          downtimeLimitMs: this.parameters['downtime-limit'],
          maxBandwidth: this.parameters['max-bandwidth'],
          onStop: () => {
            job.stoppedAt = Date.now();
            if (wasRunning) this.emit('STOP');
          },
          // QEMU's MIGRATION_PASS: each sync of the dirty bitmap, numbered as dirty-sync-count.
          onPass: (pass) => this.emit('MIGRATION_PASS', { pass }),
        });
        const flushing = Date.now();
        await target.finish();
        job.end = Date.now();
        if (process.env.TSVMM_MIGRATION_TRACE)
          console.error(`tsvmm: migration the stream's end reached the destination in ${job.end - flushing} ms`);
        this.event(job, 'completed');
      } catch (e) {
        target.abort();
        job.end = Date.now();
        job.error = (e as Error).message;
        if (this.cancelRequested) this.event(job, 'cancelled');
        else {
          console.error(`tsvmm: migration failed: ${job.error}`);
          if (process.env.TSVMM_DEBUG) console.error((e as Error).stack);
          this.event(job, 'failed');
        }
        // The source goes on as it was (QEMU: the VM resumes when migration fails).
        if (wasRunning && this.m.resume()) this.emit('RESUME');
      } finally {
        this.abortOut = undefined;
      }
    })();
    return { done };
  }

  /** migrate-set-parameters: QEMU's checks (downtime-limit at most 2000 s, a bandwidth ≥ 0). */
  setParameters(a: { 'downtime-limit'?: number; 'max-bandwidth'?: number }): void {
    const d = a['downtime-limit'],
      b = a['max-bandwidth'];
    if (d !== undefined && (!Number.isInteger(d) || d < 0 || d > 2_000_000))
      throw new TsvmmError(
        'ERR_MIGRATION',
        "Parameter 'downtime_limit' expects an integer in the range of 0 to 2000 seconds",
      );
    if (b !== undefined && (!Number.isInteger(b) || b < 0))
      throw new TsvmmError('ERR_MIGRATION', "Parameter 'max_bandwidth' expects an integer in the range of 0 to 2^64-1");
    if (d !== undefined) this.parameters['downtime-limit'] = d;
    if (b !== undefined) this.parameters['max-bandwidth'] = b;
  }

  /** migrate_cancel: a running save stops at its next section; the VM resumes. */
  cancel(): void {
    if (this.out && ['setup', 'active'].includes(this.out.status)) {
      this.cancelRequested = true;
      this.event(this.out, 'cancelling');
      this.abortOut?.();
    }
  }

  /**
   * Reads the machine's state from `uri` (before it first runs). Resolves when the load is done,
   * rejects (with which section and why) when the stream is refused.
   */
  async incoming(uri: string, takeFd?: TakeFd): Promise<void> {
    if (this.inc) throw new TsvmmError('ERR_MIGRATION', 'The incoming migration has already been started');
    const job: Job = { status: 'none', start: Date.now() };
    this.inc = job;
    this.deferred = false;
    this.event(job, 'setup');
    const done = (this.incomingDone ??= deferred());
    try {
      const src = await openIncoming(uri, takeFd);
      job.setupTime = Date.now() - job.start;
      this.event(job, 'active');
      try {
        job.progress = await this.m.loadState(src.source, { progress: (p) => (job.progress = { ...p }) });
      } finally {
        await src.close();
      }
      job.end = Date.now();
      this.event(job, 'completed');
      done.resolve();
    } catch (e) {
      job.end = Date.now();
      job.error = (e as Error).message;
      this.event(job, 'failed');
      done.reject(e as Error);
      throw e;
    }
  }

  /** Resolves when an incoming migration completes (at once when none was asked for). */
  incomingComplete(): Promise<void> {
    return this.incomingDone?.promise ?? Promise.resolve();
  }

  /** QMP query-migrate's MigrationInfo: the outgoing job's, else the incoming one's, else {}. */
  info(): Record<string, unknown> {
    const job = this.out ?? this.inc;
    if (!job || job.status === 'none') return {};
    const now = job.end ?? Date.now();
    const out: Record<string, unknown> = { status: job.status };
    if (job.setupTime !== undefined) out['setup-time'] = job.setupTime;
    if (job === this.out) {
      out['total-time'] = now - job.start;
      if (job.status === 'completed' && job.stoppedAt !== undefined) out.downtime = job.end! - job.stoppedAt;
      else if (job.status === 'active')
        // QEMU's: the limit until a pass measured the bandwidth, then the rest at that bandwidth.
        out['expected-downtime'] = job.progress?.expectedDowntimeMs ?? this.parameters['downtime-limit'];
    }
    const p = job.progress;
    if (p && job !== this.inc) {
      // Rates of the last pass (QEMU's are of its last 100 ms window): mbps, pages-per-second, dirty-pages-rate.
      const precopy = p.precopyBytes ?? p.bytes;
      out.ram = {
        transferred: p.bytes,
        remaining: p.remaining,
        total: p.ramTotal,
        duplicate: p.zeroPages,
        skipped: 0,
        normal: p.normalPages,
        'normal-bytes': p.normalPages * PAGE,
        'dirty-pages-rate': p.dirtyPagesRate ?? 0,
        mbps: p.mbps ?? 0,
        'dirty-sync-count': p.passes,
        'postcopy-requests': 0,
        'page-size': PAGE,
        'multifd-bytes': 0,
        'pages-per-second': p.pagesPerSecond ?? 0,
        'precopy-bytes': precopy,
        'downtime-bytes': p.bytes - precopy,
        'postcopy-bytes': 0,
        'dirty-sync-missed-zero-copy': 0,
      };
    }
    // QEMU's VfioStats (assigned devices' bytes), and how many of them went while the guest ran (PRE_COPY).
    if (p && job !== this.inc && (p.liveBytes || p.deviceBytes))
      out.vfio = { transferred: p.liveBytes + (p.deviceBytes ?? 0), 'x-precopy-bytes': p.liveBytes };
    if (job.error !== undefined && job.status === 'failed') out['error-desc'] = job.error;
    return out;
  }
}

function deferred(): { promise: Promise<void>; resolve: () => void; reject: (e: Error) => void } {
  let resolve!: () => void, reject!: (e: Error) => void;
  const promise = new Promise<void>((a, b) => {
    resolve = a;
    reject = b;
  });
  promise.catch(() => {}); // a failure is also reported where the load was asked for
  return { promise, resolve, reject };
}
