// Pure logic of the benchmark report: per-metric summaries (median, min, max over the rounds),
// ratios between VMMs from the same run, and the markdown table. No I/O here (unit-tested).

export const VMMS = ['tsvmm', 'qemu', 'null'] as const;
export type VmmName = (typeof VMMS)[number];

export interface Summary {
  median: number;
  min: number;
  max: number;
  n: number;
}

/** Median (mean of the middle two for an even count), min and max; undefined when there are no samples. */
export function summarize(samples: readonly number[]): Summary | undefined {
  const v = samples.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return undefined;
  const mid = v.length >> 1;
  const median = v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
  return { median, min: v[0]!, max: v[v.length - 1]!, n: v.length };
}

export interface MetricDef {
  id: string;
  label: string;
  unit: string;
  better: 'lower' | 'higher';
  /** Digits after the point in the table. */
  digits: number;
  /** Why a column has no value (footnote), per VMM. */
  na?: Partial<Record<VmmName, string>>;
  /** Shown under the table when tsvmm is worse than QEMU on this metric: cause (from a profile) and fix. */
  whyWorse?: string;
}

export interface MetricResult {
  def: MetricDef;
  samples: Record<VmmName, number[]>;
}

export interface Row {
  id: string;
  label: string;
  unit: string;
  better: 'lower' | 'higher';
  tsvmm?: Summary;
  qemu?: Summary;
  null?: Summary;
  /** tsvmm median ÷ QEMU median, tsvmm median ÷ null median (undefined: no value, or 0/0). */
  ratioQemu?: number;
  ratioNull?: number;
  /** tsvmm is worse than QEMU by more than the tolerance. */
  worseThanQemu: boolean;
  na: Partial<Record<VmmName, string>>;
}

/** Ratio a/b: 1 when both are 0 (equal), Infinity when only b is 0, undefined without values. */
export function ratio(a: number | undefined, b: number | undefined): number | undefined {
  if (a === undefined || b === undefined) return undefined;
  if (b === 0) return a === 0 ? 1 : Infinity;
  return a / b;
}

/** Worse by more than `tol` (relative), in the metric's direction. */
export function isWorse(r: number | undefined, better: 'lower' | 'higher', tol = 0.05): boolean {
  if (r === undefined || Number.isNaN(r)) return false;
  return better === 'lower' ? r > 1 + tol : r < 1 - tol;
}

export function toRow(m: MetricResult): Row {
  const s = (v: VmmName) => (m.def.na?.[v] ? undefined : summarize(m.samples[v] ?? []));
  const t = s('tsvmm'),
    q = s('qemu'),
    n = s('null');
  const rq = ratio(t?.median, q?.median),
    rn = ratio(t?.median, n?.median);
  return {
    id: m.def.id,
    label: m.def.label,
    unit: m.def.unit,
    better: m.def.better,
    tsvmm: t,
    qemu: q,
    null: n,
    ratioQemu: rq,
    ratioNull: rn,
    worseThanQemu: isWorse(rq, m.def.better),
    na: m.def.na ?? {},
  };
}

export function fmtNum(x: number, digits: number): string {
  if (!Number.isFinite(x)) return x > 0 ? '∞' : '-∞';
  const a = Math.abs(x);
  if (a >= 1e6) return x.toExponential(2).replace('e+', 'e');
  return x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function fmtSummary(
  s: Summary | undefined,
  digits: number,
  na: string | undefined,
  foot: (why: string) => string,
): string {
  if (na) return `n/a${foot(na)}`;
  if (!s) return 'failed';
  if (s.n === 1 || s.min === s.max) return fmtNum(s.median, digits);
  return `${fmtNum(s.median, digits)} (${fmtNum(s.min, digits)}–${fmtNum(s.max, digits)})`;
}

export function fmtRatio(r: number | undefined, better: 'lower' | 'higher'): string {
  if (r === undefined) return '—';
  if (!Number.isFinite(r)) return '∞';
  const txt = r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2);
  return isWorse(r, better) ? `**${txt}×**` : `${txt}×`;
}

/**
 * The markdown table: one row per metric, median (min–max) per VMM, and tsvmm's ratios to QEMU
 * and to the null VMM (bold where tsvmm is worse). Footnotes explain every n/a; notes explain
 * every row where tsvmm is worse than QEMU.
 */
export function renderMarkdown(
  results: MetricResult[],
  opts: { rounds: string; title?: string; diagnostics?: string[] } = { rounds: '' },
): string {
  const rows = results.map(toRow);
  const notes: string[] = [];
  const foot = (why: string) => {
    let i = notes.indexOf(why);
    if (i < 0) i = notes.push(why) - 1;
    return `[^${i + 1}]`;
  };
  const lines = [
    '| metric | unit | better | tsvmm | QEMU | null VMM | tsvmm ÷ QEMU | tsvmm ÷ null |',
    '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const [i, r] of rows.entries()) {
    const d = results[i]!.def.digits;
    lines.push(
      `| ${r.label} | ${r.unit} | ${r.better} | ${fmtSummary(r.tsvmm, d, r.na.tsvmm, foot)} | ${fmtSummary(r.qemu, d, r.na.qemu, foot)} | ` +
        `${fmtSummary(r.null, d, r.na.null, foot)} | ${fmtRatio(r.ratioQemu, r.better)} | ${fmtRatio(r.ratioNull, r.better)} |`,
    );
  }
  const out = [...(opts.title ? [opts.title, ''] : []), ...lines, ''];
  out.push(
    `Medians over ${opts.rounds}, (min–max) when they differ. Ratios are tsvmm's median divided by the other column's; **bold**: tsvmm is worse (more than 5 %).`,
  );
  if (notes.length) out.push('', ...notes.map((n, i) => `[^${i + 1}]: ${n}`));
  // One note per explanation: rows that share it (the DMA sizes) are listed together.
  const worse = new Map<string, Row[]>();
  rows.forEach((r, i) => {
    if (!r.worseThanQemu) return;
    const why = results[i]!.def.whyWorse ?? 'not analysed yet.';
    worse.set(why, [...(worse.get(why) ?? []), r]);
  });
  if (worse.size) {
    out.push('', 'Where tsvmm is worse than QEMU:', '');
    for (const [why, rs] of worse) {
      out.push(
        `- ${rs.map((r) => `**${r.label}** (${fmtRatio(r.ratioQemu, r.better).replace(/\*/g, '')})`).join(', ')}: ${why}`,
      );
    }
  }
  if (opts.diagnostics?.length)
    out.push('', 'Other diagnostics from this run:', '', ...opts.diagnostics.map((d) => `- ${d}`));
  return out.join('\n') + '\n';
}
