// Terminating signals for `run`, caught from the dispatcher's first line: one that arrives while
// node is still loading the VMM is remembered instead of killing the process, and `run` ends the
// VM (or its set-up) cleanly with 128 + N, as a shell reports a signal.
export const TERMINATING = { SIGHUP: 129, SIGINT: 130, SIGTERM: 143 } as const;
export type TerminatingSignal = keyof typeof TERMINATING;

let pending: TerminatingSignal | undefined;
interface EarlySignals {
  pending?: string;
  listener: (sig: NodeJS.Signals) => void;
}
let handler: ((sig: TerminatingSignal) => void) | undefined;
const listener = (sig: NodeJS.Signals) => {
  if (handler) handler(sig as TerminatingSignal);
  else pending ??= sig as TerminatingSignal;
};

let caught = false;
export function catchSignals(): void {
  if (caught) return;
  caught = true;
  for (const s of Object.keys(TERMINATING)) process.on(s, listener);
  // The installed bin/tsvmm.cts listens from its first line while the code loads: take over.
  const key = Symbol.for('tsvmm.earlySignals');
  const early = (globalThis as { [k: symbol]: EarlySignals | undefined })[key];
  if (early) {
    for (const s of Object.keys(TERMINATING)) process.off(s, early.listener);
    if (early.pending && Object.hasOwn(TERMINATING, early.pending)) pending ??= early.pending as TerminatingSignal;
    delete (globalThis as { [k: symbol]: unknown })[key];
  }
}

/** Routes the signals to `h` from now on; returns one that came before, if any. */
export function onSignal(h: (sig: TerminatingSignal) => void): TerminatingSignal | undefined {
  handler = h;
  return pending;
}

export function releaseSignals(): void {
  handler = undefined;
  caught = false;
  for (const s of Object.keys(TERMINATING)) process.off(s, listener);
}

/**
 * SIGUSR1 would start Node's inspector on 127.0.0.1:9229, with no authentication: whoever may
 * signal the VMM could then run code in the process holding /dev/kvm, guest RAM and the VFIO fds.
 * A listener replaces node's own handler (libuv installs its sigaction over it), so the signal only
 * reaches this; node 20 has no --disable-sigusr1. bin/tsvmm.cts installs one from its first line
 * (the same symbol), so only the moment node itself starts is left.
 */
export function refuseInspectorSignal(): void {
  const key = Symbol.for('tsvmm.noInspector');
  const g = globalThis as { [k: symbol]: unknown };
  if (g[key]) return;
  g[key] = true;
  let told = false;
  process.on('SIGUSR1', () => {
    if (told) return;
    told = true;
    process.stderr.write('tsvmm: SIGUSR1 ignored: tsvmm starts no inspector (for one: node --inspect <tsvmm> ...)\n');
  });
}
