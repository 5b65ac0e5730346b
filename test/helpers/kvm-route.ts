// Where each file of test/kvm runs (scripts/test-kvm.mjs): on this machine's /dev/kvm when that KVM can do what
// the file's guests do, else inside the test host (a full KVM in a nested Linux), so none is ever skipped. Pure:
// the probe's result (or TSVMM_KVM_PROBE) in, a plan out — unit-tested on any machine (test/unit/kvm-route.test.ts).

/** What a file's guests need of /dev/kvm beyond running simple protected-mode code with paging off. */
export const CAPABILITIES = {
  kvm: 'a /dev/kvm this user can open',
  'soft-int': 'a software interrupt (int 0x80) through the IDT after a segment reload and far jump, paging off',
  'pae-high': 'PAE paging, writing RAM above 4 GiB',
} as const;
export type Capability = keyof typeof CAPABILITIES;
export type Capabilities = Record<Capability, boolean>;

/**
 * What each file needs beyond 'kvm' (which every file needs). A file not listed needs only 'kvm'; a new file
 * whose guests do more adds itself here (kvm-route.test.ts checks every entry names an existing file).
 */
export const FILE_NEEDS: Readonly<Record<string, readonly Capability[]>> = {
  'highmem.test.js': ['pae-high'],
  'multiboot.test.js': ['soft-int'],
};

/** The forced probe results TSVMM_KVM_PROBE may name: a machine without /dev/kvm, a full KVM, a paravirtual one. */
export const FORCED: Readonly<Record<string, Capabilities>> = {
  none: { kvm: false, 'soft-int': false, 'pae-high': false },
  full: { kvm: true, 'soft-int': true, 'pae-high': true },
  pvm: { kvm: true, 'soft-int': false, 'pae-high': false },
};

/** TSVMM_KVM_PROBE's value as forced capabilities; undefined when unset (probe the machine); throws on a bad value. */
export function forcedCapabilities(value: string | undefined): Capabilities | undefined {
  if (value === undefined || value === '') return undefined;
  const c = FORCED[value];
  if (!c)
    throw new Error(
      `TSVMM_KVM_PROBE=${value}: not one of ${Object.keys(FORCED).join(', ')} (unset it to probe this machine's /dev/kvm)`,
    );
  return { ...c };
}

export interface Plan {
  /** Files run here, on /dev/kvm. */
  local: string[];
  /** Files run inside the test host, each with the capabilities this machine lacks. */
  host: { file: string; missing: Capability[] }[];
}

/** Splits `files` (basenames of dist/test/kvm/*.test.js) by what `caps` offers. */
export function route(files: readonly string[], caps: Capabilities): Plan {
  const plan: Plan = { local: [], host: [] };
  for (const file of [...files].sort()) {
    const needs: Capability[] = ['kvm', ...(FILE_NEEDS[file] ?? [])];
    const missing = needs.filter((c) => !caps[c]);
    if (missing.length) plan.host.push({ file, missing });
    else plan.local.push(file);
  }
  return plan;
}

/** The decision in words, for the script's output: what the KVM lacks and where each file goes. */
export function describePlan(plan: Plan, caps: Capabilities, source: string): string[] {
  const out = [`test:kvm: /dev/kvm capabilities (${source}):`];
  for (const c of Object.keys(CAPABILITIES) as Capability[])
    out.push(`test:kvm:   ${caps[c] ? 'yes' : 'NO '} ${c}: ${CAPABILITIES[c]}`);
  out.push(`test:kvm: here, on /dev/kvm: ${plan.local.length ? plan.local.join(' ') : '(none)'}`);
  out.push(
    `test:kvm: in the test host: ${
      plan.host.length ? plan.host.map((h) => `${h.file} (needs ${h.missing.join(', ')})`).join(' ') : '(none)'
    }`,
  );
  return out;
}
