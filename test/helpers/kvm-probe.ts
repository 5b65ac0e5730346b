// What this machine's /dev/kvm can run, found by running it: the test guest in the modes that exercise what
// test/kvm's guests need (kvm-route.ts CAPABILITIES). A paravirtual KVM (kvm_pvm) opens and runs simple guests but
// fails some guest code (an emulation failure on `int n`, #GP on enabling PAE paging); the device node alone does
// not tell. Run as `node dist/test/helpers/kvm-probe.js`: prints a JSON ProbeResult on stdout (scripts/test-kvm.mjs
// runs it in a child process with a time limit, so a probe that hangs cannot hang the suite).
import { accessSync, constants } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { runGuest } from './guest.js';
import type { Capabilities } from './kvm-route.js';

export interface ProbeResult {
  capabilities: Capabilities;
  /** Per probed capability: 'ok' or how it failed (the guest's last line and the VMM's exit reason). */
  details: Record<string, string>;
}

/** One probe: the test guest with `cmdline` in `memoryMiB`; it passes when the guest exits 0 and printed `ok`. */
async function probe(cmdline: string, memoryMiB: number, ok: string): Promise<string> {
  try {
    const r = await runGuest({ cmdline, config: { memory: memoryMiB }, timeoutMs: 20_000 });
    if (r.status === 0 && r.lines.includes(ok)) return 'ok';
    // The guest's last word before its own "exit N" line (an exception report says which instruction failed).
    const said = r.lines.filter((l) => !/^tsvmm-guest: exit \d+$/.test(l)).at(-1);
    return `exit ${r.status} (${r.reason}); the guest's last line: ${said ?? '(none)'}`;
  } catch (e) {
    return `failed to run: ${(e as Error).message.split('\n')[0]}`;
  }
}

export async function probeKvm(): Promise<ProbeResult> {
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch (e) {
    return {
      capabilities: { kvm: false, 'soft-int': false, 'pae-high': false },
      details: { kvm: `/dev/kvm: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` },
    };
  }
  const softInt = await probe('test=probe-int', 16, 'probe: int ok');
  // RAM above 4 GiB starts past 3 GiB of guest RAM; 64 MiB more gives test=highmem its three 2 MiB spots.
  const paeHigh = await probe('test=highmem', 3072 + 64, 'highmem: ok');
  return {
    capabilities: { kvm: true, 'soft-int': softInt === 'ok', 'pae-high': paeHigh === 'ok' },
    details: { kvm: 'ok', 'soft-int': softInt, 'pae-high': paeHigh },
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  probeKvm().then(
    (r) => process.stdout.write(JSON.stringify(r) + '\n'),
    (e: Error) => {
      process.stderr.write(`kvm-probe: ${e.stack ?? e.message}\n`);
      process.exitCode = 1;
    },
  );
}
