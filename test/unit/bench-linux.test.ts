import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  benchScript,
  buildBenchInitrd,
  linuxMetrics,
  MARKER_INIT,
  pairedRatios,
  parseRun,
  PAYLOAD_LINE,
  perChar,
  renderLinux,
  type LinuxResults,
  type SerialLine,
} from '../../bench/linux.js';
import { INIT_SCRIPT } from '../../machine/loader/initramfs.js';
import type { Snapshot } from '../../bench/vmm.js';

/** A launch's serial lines: init at 1000 ms, payload lines every 2 ms from 5000 ms (65 bytes each with CR LF). */
function run(chars: number, opts: { drop?: number } = {}): SerialLine[] {
  const l: SerialLine[] = [
    { t: 900, text: '[    0.5] some kernel warning', bytes: 30 },
    { t: 1000, text: 'bench-linux: init', bytes: 19 },
    { t: 1010, text: 'bench-linux: uptime 0.75 0.60', bytes: 31 },
    { t: 3000, text: `bench-linux: nvme ${'ab'.repeat(32)}  -`, bytes: 86 },
    { t: 3100, text: 'bench-linux: uart 0: uart:16550A port:000003F8 irq:4 tx:900 rx:0', bytes: 70 },
    { t: 3200, text: 'bench-linux: serial start', bytes: 27 },
  ];
  for (let i = 0; i < chars / 64; i++) if (i !== opts.drop) l.push({ t: 5000 + 2 * i, text: PAYLOAD_LINE, bytes: 65 });
  l.push({ t: 9000, text: `bench-linux: serial end 10.00 12.08 ${(chars / 64) * 65}`, bytes: 40 });
  return l;
}

test('bench linux: launch → userspace, guest uptime, and per-character cost from host arrival and guest counters', () => {
  const p = parseRun(run(1024), 1024);
  assert.deepEqual(p.problems, []);
  assert.equal(p.userspaceMs, 1000);
  assert.equal(p.guestUptimeMs, 750);
  assert.equal(p.nvmeSha, 'ab'.repeat(32));
  assert.match(p.uart!, /uart:16550A/);
  // 16 lines: the span from the first to the last is 15 × 2 ms for 15 × 65 bytes.
  assert.equal(p.payload?.lines, 16);
  assert.ok(Math.abs(p.serialHostUsPerChar! - 30_000 / 975) < 1e-9);
  // Guest: 2.08 s for 16 × 65 bytes.
  assert.ok(Math.abs(p.serialGuestUsPerChar! - 2.08e6 / 1040) < 1e-6);
});

test('bench linux: a lost payload line or missing markers are reported, not silently averaged', () => {
  assert.match(parseRun(run(1024, { drop: 3 }), 1024).problems.join(), /15 of 16 payload lines/);
  const noInit = parseRun(
    run(1024).filter((l) => l.text !== 'bench-linux: init'),
    1024,
  );
  assert.equal(noInit.userspaceMs, undefined);
  assert.match(noInit.problems.join(), /no "bench-linux: init"/);
  const noEnd = parseRun(
    run(1024).filter((l) => !l.text.startsWith('bench-linux: serial end')),
    1024,
  );
  assert.equal(noEnd.serialHostUsPerChar, undefined);
  assert.match(noEnd.problems.join(), /no serial start\/end/);
});

test("bench linux: per character, KVM's exit counters and the VMM's CPU outside the guest", () => {
  const snap = (exits: number, io: number, irq: number, cpu: Record<string, [number, number, number]>): Snapshot => ({
    t: 0,
    pid: 1,
    mainCtx: 0,
    threads: {},
    threadCpu: cpu,
    hostCpu: [],
    rssKiB: 0,
    rss: {},
    kvm: { exits, io_exits: io, irq_injections: irq },
  });
  // Thread 1: 30 ticks user of which 20 in the guest, 5 system → 15 ticks outside; thread 3 appeared: not counted.
  const a = snap(100, 50, 10, { '1 node': [100, 10, 50], '2 node': [0, 0, 0], '4 node': [1, 0, 0] });
  const b = snap(1100, 550, 110, {
    '1 node': [130, 15, 70],
    '2 node': [0, 0, 0],
    '3 new': [9, 9, 0],
    '4 node': [3, 0, 0],
  });
  b.wchan = { '2 node': 'futex_do_wait', '4 node': 'do_poll' };
  const r = perChar(a, b, 500, 1);
  assert.equal(r.exitsPerChar, 2);
  assert.equal(r.ioExitsPerChar, 1);
  assert.equal(r.irqsPerChar, 0.2);
  // Thread 4: 2 ticks. 17 ticks of 10 ms over 500 characters.
  assert.equal(r.cpuUsPerChar, (17 * 1e4) / 500);
  assert.deepEqual(r.threadUsPerChar, { main: 300, 'node (futex_do_wait)': 0, 'node (do_poll)': 40 });
});

test('bench linux: rows with medians, ratios to QEMU, bold where tsvmm is worse, the null VMM n/a', () => {
  const s = (vmm: 'tsvmm' | 'qemu', round: number, userspaceMs: number, host: number) => ({
    vmm,
    round,
    exitCode: 0,
    userspaceMs,
    guestUptimeMs: 4000,
    serialHostUsPerChar: host,
    serialGuestUsPerChar: host,
    nvmeOk: true,
    uart: '0: uart:16550A',
  });
  const r: LinuxResults = {
    date: '2026-11-27T15:00:00Z',
    where: 'inside the test host',
    kernel: '6.12.0',
    qemu: 'QEMU version 7.2',
    chars: 1024,
    memMiB: 256,
    rounds: 3,
    samples: [
      s('tsvmm', 0, 9000, 300),
      s('qemu', 0, 10000, 100),
      s('tsvmm', 1, 8000, 330),
      s('qemu', 1, 12000, 110),
      s('tsvmm', 2, 8500, 310),
      s('qemu', 2, 11000, 105),
    ],
  };
  const m = linuxMetrics(r);
  assert.deepEqual(m.find((x) => x.def.id === 'linux-prekernel')!.samples.tsvmm, [5000, 4000, 4500]);
  const md = renderLinux(r);
  // 8500 / 11000 = 0.77: better, not bold.
  assert.match(
    md,
    /\| Linux launch → first line of \/init[^|]*\| ms \| lower \| 8,500 \(8,000–9,000\) \| 11,000 \(10,000–12,000\) \| n\/a\[\^1\] \| 0\.77× \| — \|/,
  );
  // 310 / 105 = 2.95: worse, bold, and listed under "worse".
  assert.match(
    md,
    /\| Linux serial console, per character \(host[^|]*\| µs \| lower \| 310 \(300–330\) \| 105 \(100–110\) \| n\/a\[\^1\] \| \*\*2\.95×\*\* \|/,
  );
  assert.match(md, /Where tsvmm is worse than QEMU:/);
  assert.match(md, /nvme read right \(first MiB's sha256\) in 6 of 6 launches/);
  // Within each round: 9000/10000, 8000/12000, 8500/11000 → median 0.77 (0.67–0.90).
  assert.equal(pairedRatios(r, 'linux-userspace')!.median, 8500 / 11000);
  assert.match(md, /- Linux launch → first line of \/init: 0\.77× \(0\.67–0\.90\)/);
  assert.match(md, /- Linux serial console, per character: \*\*3\.00×\*\* \(2\.95–3\.00\)/);
  // Another build in the same rounds: out of the table and the tsvmm ÷ QEMU ratios, compared with this tsvmm.
  r.samples.push(
    { ...s('tsvmm', 0, 4500, 150), alt: '/b/tsvmm.js' },
    { ...s('tsvmm', 1, 4000, 165), alt: '/b/tsvmm.js' },
  );
  const withAlt = renderLinux(r);
  assert.ok(withAlt.includes('| 8,500 (8,000–9,000) | 11,000 (10,000–12,000) |'), 'alt samples stay out of the table');
  assert.equal(pairedRatios(r, 'linux-userspace')!.median, 8500 / 11000);
  assert.match(
    withAlt,
    /Another build, \/b\/tsvmm\.js, [^\n]*\n\n- Linux launch → first line of \/init: 0\.50× \(0\.50–0\.50\)/,
  );
  r.samples = r.samples.filter((x) => !x.alt);
  // A failed launch is listed.
  r.samples.push({ vmm: 'tsvmm', round: 3, exitCode: 1, error: 'exit 1: boom' });
  assert.match(renderLinux(r), /Failed launches:\n\n- tsvmm round 4: exit 1: boom/);
});

test('bench linux: the script takes whole payload lines only', () => {
  assert.throws(() => benchScript(1000), /multiple of 64/);
  assert.throws(() => benchScript(64), /multiple of 64/);
  assert.match(benchScript(4096), /want=\$\(\(tx0 \+ 4160\)\)/);
});

test('bench linux: the initrd is the standard initramfs plus an appended /init that prints the marker first', (t) => {
  if (!existsSync('/bin/busybox')) return t.skip('no /bin/busybox here');
  const dir = mkdtempSync(join(tmpdir(), 'bench-linux-test-'));
  try {
    writeFileSync(join(dir, 'modules.order'), '');
    const b = buildBenchInitrd(1024, dir);
    // Walk the concatenated newc archives: the last entry of each name wins when the kernel unpacks.
    const files = new Map<string, string>();
    let trailers = 0;
    const dec = new TextDecoder('latin1');
    for (let off = 0; off < b.length; ) {
      assert.equal(dec.decode(b.subarray(off, off + 6)), '070701', `newc magic at ${off}`);
      const field = (i: number) => parseInt(dec.decode(b.subarray(off + 6 + i * 8, off + 14 + i * 8)), 16);
      const size = field(6),
        nameLen = field(11);
      const name = dec.decode(b.subarray(off + 110, off + 110 + nameLen - 1));
      let p = (off + 110 + nameLen + 3) & ~3;
      if (name === 'TRAILER!!!') trailers++;
      else if (name === 'init' || name === 'stdinit' || name === 'script')
        files.set(name, dec.decode(b.subarray(p, p + size)));
      p = (p + size + 3) & ~3;
      off = p;
    }
    assert.equal(trailers, 2);
    assert.equal(files.get('init'), MARKER_INIT);
    assert.equal(files.get('stdinit'), INIT_SCRIPT);
    assert.equal(files.get('script'), benchScript(1024));
    assert.match(MARKER_INIT.split('\n')[1]!, /^echo "bench-linux: init"$/, "the marker is /init's first command");
    // Both scripts parse as busybox sh.
    for (const [name, text] of [
      ['init', MARKER_INIT],
      ['script', benchScript(1024)],
    ] as const) {
      const r = spawnSync('/bin/busybox', ['sh', '-n'], { input: text, encoding: 'utf8' });
      assert.equal(r.status, 0, `${name}: ${r.stderr}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
