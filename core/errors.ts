// tsvmm's one error type. Every error tsvmm raises on purpose is a TsvmmError with a stable
// `code` (what kind of failure, for programs), a message that says what and where, and, where
// there is one, `fix` (what the user can do). A failed syscall underneath is its `cause` (a
// SyscallError from core/native.ts, with errno `code` and `syscall`).

export type TsvmmErrorCode =
  | 'ERR_CONFIG' // the VM config, or a host limit it runs into (exit status 2)
  | 'ERR_USAGE' // a command line (exit status 2)
  | 'ERR_KVM' // /dev/kvm missing, or without a capability tsvmm needs
  | 'ERR_VFIO_SETUP' // a host device cannot be assigned (group, driver, IOMMU, permissions)
  | 'ERR_FD_PASSING' // fds passed by a manager: wrong kind, missing, not ours
  | 'ERR_LOADER' // the guest image
  | 'ERR_VM_SETUP' // building a VM failed below tsvmm's own checks (the syscall error is the cause)
  | 'ERR_QMP' // a QMP command failed (errorClass says how, as QEMU's)
  | 'ERR_DEVICE' // a device operation (device_add/del, notifiers)
  | 'ERR_MIGRATION' // saving, loading or migrating a VM or a device's state (a migration blocker too)
  | 'ERR_TIMEOUT' // a wait did not see what it waited for in time
  | 'ERR_ABORTED' // an AbortSignal ended a wait or an operation
  | 'ERR_VM_EXITED' // the VM ended while something waited for it
  | 'ERR_CLOSED' // the VM was closed
  | 'ERR_MIGRATION' // a snapshot or migration failed, or a stream was refused (which section, why)
  | 'ERR_TESTHOST'; // the nested test host could not be set up or run (exit status 2)

export interface TsvmmErrorOptions {
  /** What the user can do about it. */
  fix?: string;
  cause?: unknown;
  /** The process exit status a command-line front end uses for it (1 unless said). */
  exitCode?: number;
}

export class TsvmmError extends Error {
  readonly code: TsvmmErrorCode;
  readonly fix: string | undefined;
  readonly exitCode: number;

  constructor(code: TsvmmErrorCode, message: string, opts: TsvmmErrorOptions = {}) {
    super(message, opts.cause !== undefined ? { cause: opts.cause } : undefined);
    this.name = new.target.name;
    this.code = code;
    this.fix = opts.fix;
    this.exitCode = opts.exitCode ?? (code === 'ERR_CONFIG' || code === 'ERR_USAGE' || code === 'ERR_TESTHOST' ? 2 : 1);
  }
}

/**
 * An error as one text for channels that carry a single string (a QMP error's desc): the message,
 * then the fix where there is one, as the CLI prints them.
 */
export function describeError(e: unknown): string {
  const m = e instanceof Error ? e.message : String(e);
  return isTsvmmError(e) && e.fix ? `${m.replace(/[.\s]+$/, '')}; fix: ${e.fix}` : m;
}

export const isTsvmmError = (e: unknown): e is TsvmmError => e instanceof TsvmmError;

/**
 * A bad config (from every command: exit status 2), with each problem on its own line: where (its
 * JSON pointer, or the flag), what, and how to put it right.
 */
export class ConfigError extends TsvmmError {
  constructor(
    readonly source: string,
    readonly problems: string[],
    opts: TsvmmErrorOptions = {},
  ) {
    super('ERR_CONFIG', `${source}: invalid configuration\n${problems.map((p) => `  - ${p}`).join('\n')}`, {
      fix: 'correct each problem listed, as its line says (configs/vm.schema.json describes every key)',
      ...opts,
    });
  }
}
