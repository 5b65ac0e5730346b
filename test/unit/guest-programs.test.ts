// tsvmm's Linux guest programs (guest/linux/, built into guest/out/linux/) and how a config puts them in the
// initramfs: kernel.initramfs.programs and .files checked and archived; the programs themselves run here on the
// build machine where they need no device (dirty-checksum against the chain the test helpers recompute,
// nvme-read's hashes of a file against node's sha256, their argument errors).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildInitramfs, LINUX_PROGRAMS, linuxProgramPath } from '../../machine/loader/initramfs.js';
import { checkConfig, ConfigError } from '../../machine/config/config.js';
import { fakeBzImage } from '../helpers/images.js';
import { linuxGuest } from '../../lib/testing.js';
import {
  checkDirtyChecksum,
  dirtyChecksumChain,
  dirtyChecksumChainNative,
  parseDirtyChecksum,
} from '../helpers/guest-programs.js';

/** newc entries: name → {mode, data}. */
function readCpio(a: Uint8Array): Map<string, { mode: number; data: Uint8Array }> {
  const out = new Map<string, { mode: number; data: Uint8Array }>();
  const dec = new TextDecoder();
  for (let p = 0; ; ) {
    const f = (i: number) => parseInt(dec.decode(a.subarray(p + 6 + 8 * i, p + 14 + 8 * i)), 16);
    const nameSize = f(11);
    const name = dec.decode(a.subarray(p + 110, p + 110 + nameSize - 1));
    let d = p + 110 + nameSize;
    d += (4 - (d % 4)) % 4;
    if (name === 'TRAILER!!!') return out;
    assert.ok(!out.has(name), `${name} twice in the archive`);
    out.set(name, { mode: f(1), data: a.subarray(d, d + f(6)) });
    p = d + f(6);
    p += (4 - (p % 4)) % 4;
  }
}

function fakeBusybox(dir: string): string {
  const fake = new Uint8Array(64);
  fake.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  writeFileSync(join(dir, 'busybox'), fake);
  return join(dir, 'busybox');
}

test('initramfs programs: each built program lands in /bin with its bytes and exec bits; unknown names are refused', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-prog-'));
  const busybox = fakeBusybox(dir);
  const e = readCpio(buildInitramfs({ script: 'true', busybox, programs: [...LINUX_PROGRAMS] }));
  for (const p of LINUX_PROGRAMS) {
    const got = e.get(`bin/${p}`);
    assert.ok(got, `bin/${p} missing`);
    assert.equal(got.mode, 0o100755, p);
    assert.deepEqual(Buffer.from(got.data), readFileSync(linuxProgramPath(p)), p);
  }
  assert.throws(
    () => buildInitramfs({ script: 'true', busybox, programs: ['fio'] }),
    /program 'fio' is not one of tsvmm's guest programs \(dirty-checksum, vfio-edu, nvme-read, mtty-loop\)/,
  );
});

test('initramfs files: parent directories made, permission bits kept; a missing, dynamic, reserved, doubled or outside path is refused', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-files-'));
  const busybox = fakeBusybox(dir);
  writeFileSync(join(dir, 'data.txt'), 'hello');
  chmodSync(join(dir, 'data.txt'), 0o640);
  const e = readCpio(
    buildInitramfs({
      script: 'true',
      busybox,
      files: [
        { path: '/opt/t/data.txt', source: join(dir, 'data.txt') },
        { path: '/opt/t/dc', source: linuxProgramPath('dirty-checksum') },
        { path: '/bin/dc2', source: linuxProgramPath('dirty-checksum') },
      ],
    }),
  );
  assert.equal(e.get('opt')?.mode, 0o040755);
  assert.equal(e.get('opt/t')?.mode, 0o040755);
  assert.equal(e.get('opt/t/data.txt')?.mode, 0o100640);
  assert.equal(new TextDecoder().decode(e.get('opt/t/data.txt')!.data), 'hello');
  assert.equal(e.get('opt/t/dc')?.mode, 0o100755);
  assert.equal(e.get('bin/dc2')?.mode, 0o100755);
  const bad = (files: { path: string; source: string }[], re: RegExp) =>
    assert.throws(() => buildInitramfs({ script: 'true', busybox, files }), re);
  bad([{ path: '/bin/x', source: join(dir, 'nope') }], /files\[0\] \(\/bin\/x\): source .*nope does not exist/);
  bad([{ path: '/bin/x', source: dir }], /is not a regular file/);
  // node itself is a dynamically linked ELF.
  bad(
    [{ path: '/bin/node', source: process.execPath }],
    /dynamically linked; the initramfs has no libc: link it with -static/,
  );
  bad([{ path: '/init', source: join(dir, 'data.txt') }], /\/init belongs to the initramfs itself/);
  bad([{ path: '/modules/x.ko', source: join(dir, 'data.txt') }], /\/modules\/x\.ko belongs to the initramfs itself/);
  bad([{ path: '/bin', source: join(dir, 'data.txt') }], /\/bin is given twice/);
  bad([{ path: 'bin/x', source: join(dir, 'data.txt') }], /the path must be absolute/);
  bad([{ path: '/', source: join(dir, 'data.txt') }], /must name a file inside the initramfs/);
  bad(
    [{ path: '/init/x', source: join(dir, 'data.txt') }],
    /\/init is a file \(the initramfs itself\), not a directory/,
  );
  bad(
    [
      { path: '/a/b', source: join(dir, 'data.txt') },
      { path: '/a/b', source: join(dir, 'data.txt') },
    ],
    /files\[1\] \(\/a\/b\): \/a\/b is given twice \(also by files\[0\]/,
  );
  assert.throws(
    () =>
      buildInitramfs({
        script: 'true',
        busybox,
        programs: ['dirty-checksum'],
        files: [{ path: '/bin/dirty-checksum', source: join(dir, 'data.txt') }],
      }),
    /\/bin\/dirty-checksum is given twice \(also by program dirty-checksum\)/,
  );
});

test('config: initramfs.programs checked by the schema and for repeats; files resolved against the config dir with ${ENV}, a missing source named', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-cfgp-'));
  writeFileSync(join(dir, 'bzImage'), fakeBzImage());
  writeFileSync(join(dir, 'tool'), 'x');
  process.env.TSVMM_TEST_TOOLDIR = dir;
  try {
    const kernel = (initramfs: object) => ({ kernel: { path: join(dir, 'bzImage'), format: 'linux', initramfs } });
    const c = checkConfig(
      kernel({
        script: 'true',
        programs: ['vfio-edu'],
        files: [
          { path: '/bin/tool', source: 'tool' },
          { path: '/bin/tool2', source: '${TSVMM_TEST_TOOLDIR}/tool' },
        ],
      }),
      't',
      dir,
    );
    assert.deepEqual(c.kernel.initramfs, {
      script: 'true',
      programs: ['vfio-edu'],
      files: [
        { path: '/bin/tool', source: join(dir, 'tool') },
        { path: '/bin/tool2', source: join(dir, 'tool') },
      ],
    });
    const refused = (initramfs: object, re: RegExp) =>
      assert.throws(
        () => checkConfig(kernel(initramfs), 't', dir),
        (e: Error) => e instanceof ConfigError && re.test(e.message),
      );
    // tsvmm/testing's linuxGuest passes them through.
    const g = linuxGuest({
      kernel: join(dir, 'bzImage'),
      script: 'dirty-checksum 1M',
      programs: ['dirty-checksum'],
      files: [{ path: '/etc/x', source: join(dir, 'tool') }],
    });
    assert.deepEqual(checkConfig(g, 'linuxGuest', dir).kernel.initramfs, {
      script: 'dirty-checksum 1M',
      programs: ['dirty-checksum'],
      files: [{ path: '/etc/x', source: join(dir, 'tool') }],
    });
    refused({ script: 'true', programs: ['fio'] }, /\/kernel\/initramfs\/programs\/0/);
    refused({ script: 'true', programs: ['nvme-read', 'nvme-read'] }, /programs\/1: nvme-read is listed twice/);
    refused({ script: 'true', files: [{ path: '/bin/x', source: 'nope' }] }, /files\/0\/source: .*nope does not exist/);
    refused({ script: 'true', files: [{ path: 'bin/x', source: 'tool' }] }, /files\/0\/path/);
    refused({ script: 'true', files: [{ path: '/bin/x' }] }, /files\/0.*source/);
  } finally {
    delete process.env.TSVMM_TEST_TOOLDIR;
  }
});

test('dirty-checksum: the chained sums it prints are the ones the test helpers recompute; bad arguments exit 2', () => {
  const r = spawnSync(linuxProgramPath('dirty-checksum'), ['-p', '3', '256K'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(checkDirtyChecksum(r.stdout, { from: 1, expect: dirtyChecksumChain(256 * 1024, 3) }), 3);
  assert.match(
    r.stdout,
    /^dirty-checksum start words=32768 passes=3\n(pass \d+ sum 0x[0-9a-f]{16}\n){3}dirty-checksum done bad=0\n$/,
  );
  assert.deepEqual(dirtyChecksumChainNative(256 * 1024, 3), dirtyChecksumChain(256 * 1024, 3));
  // A different size gives different sums: the chain depends on every word.
  assert.notDeepEqual(dirtyChecksumChain(256 * 1024 - 8, 1), dirtyChecksumChain(256 * 1024, 1));
  for (const args of [['12'], ['-p', 'x', '1M'], [], ['1M', '2M']]) {
    const b = spawnSync(linuxProgramPath('dirty-checksum'), args, { encoding: 'utf8' });
    assert.equal(b.status, 2, `${args.join(' ')}: ${b.stdout}${b.stderr}`);
  }
  // The checker sees gaps and error lines.
  assert.throws(
    () => checkDirtyChecksum('pass 1 sum 0x0000000000000001\npass 3 sum 0x0000000000000002\n'),
    /consecutive/,
  );
  assert.throws(
    () => checkDirtyChecksum('pass 1 sum 0x0000000000000001\ndirty-checksum error pass 2 bad=1\n'),
    /errors/,
  );
  assert.deepEqual(parseDirtyChecksum('x\r\npass 7 sum 0x00000000000000ff\r\n').passes, [
    { n: 7, sum: '0x00000000000000ff' },
  ]);
});

test('mtty-loop: bad arguments exit 2; a path that is not a tty, or is missing, exits 1 saying so', () => {
  const run = (args: string[]) => spawnSync(linuxProgramPath('mtty-loop'), args, { encoding: 'utf8' });
  for (const args of [
    [],
    ['-w', '0', '/dev/null'],
    ['-w', '5000', '/dev/null'],
    ['-r', 'x', '/dev/null'],
    ['a', 'b'],
  ]) {
    const b = run(args);
    assert.equal(b.status, 2, `${args.join(' ')}: ${b.stdout}${b.stderr}`);
    assert.match(b.stderr, /usage: mtty-loop/);
  }
  const notTty = run(['/dev/null']);
  assert.equal(notTty.status, 1, notTty.stdout + notTty.stderr);
  assert.match(notTty.stdout, /^mtty-loop error tcgetattr \/dev\/null: .*\(not a tty\?\)$/m);
  const missing = run(['/nonexistent/ttyS9']);
  assert.equal(missing.status, 1);
  assert.match(missing.stdout, /^mtty-loop error open \/nonexistent\/ttyS9: No such file or directory$/m);
});

test('nvme-read on a file: block hashes equal sha256 of those bytes; seq and rand report counts; a block past the end and bad arguments fail', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-nvr-'));
  const img = join(dir, 'img');
  const data = randomBytes(2 * 2 ** 20);
  writeFileSync(img, data);
  const run = (args: string[]) => spawnSync(linuxProgramPath('nvme-read'), args, { encoding: 'utf8' });
  const h = run(['hash', img, '0', '5', '511']);
  assert.equal(h.status, 0, h.stdout + h.stderr);
  const sha = (o: number, n: number) =>
    createHash('sha256')
      .update(data.subarray(o, o + n))
      .digest('hex');
  assert.equal(h.stdout, [0, 5, 511].map((b) => `nvme-read block ${b} sha256 ${sha(b * 4096, 4096)}\n`).join(''));
  const h512 = run(['-b', '512', 'hash', img, '3']);
  assert.equal(h512.stdout, `nvme-read block 3 sha256 ${sha(1536, 512)}\n`);
  const seq = run(['seq', img, '1']);
  assert.match(seq.stdout, /^nvme-read seq bytes=[1-9]\d* usec=\d+ MBps=[\d.]+$/m, seq.stdout + seq.stderr);
  const rand = run(['-s', '3', 'rand', img, '1']);
  assert.match(rand.stdout, /^nvme-read rand ios=[1-9]\d* usec=\d+ iops=\d+ jobs=1$/m, rand.stdout + rand.stderr);
  const rand2 = run(['-j', '2', 'rand', img, '1']);
  assert.match(rand2.stdout, /^nvme-read rand ios=[1-9]\d* usec=\d+ iops=\d+ jobs=2$/m, rand2.stdout + rand2.stderr);
  assert.equal(run(['-j', '0', 'rand', img, '1']).status, 2);
  const past = run(['hash', img, '512']);
  assert.equal(past.status, 1);
  assert.match(past.stdout, /nvme-read error block 512 is past the end of .*img \(512 blocks of 4096\)/);
  assert.equal(run(['-b', '100', 'hash', img, '0']).status, 2);
  assert.equal(run(['hash', img]).status, 2);
  assert.equal(run(['seq', img, '0']).status, 2);
  assert.match(run(['hash', join(dir, 'nope'), '0']).stdout, /^nvme-read error open .*nope: No such file/);
});

test('vfio-edu: bad arguments exit 2 with the reason, before touching any device', () => {
  const run = (args: string[]) => spawnSync(linuxProgramPath('vfio-edu'), args, { encoding: 'utf8' });
  const cases: [string[], RegExp][] = [
    [[], /give the mode, ok or unmapped/],
    [['dma'], /give the mode, ok or unmapped/],
    [['-t', 'iommufd', 'ok'], /-t iommufd: auto, type1 or noiommu/],
    [['-i', 'msix', 'ok'], /-i msix: auto, msi or intx/],
    [['-n', '0', 'ok'], /-n 0: 1 to 4032 bytes/],
  ];
  for (const [args, re] of cases) {
    const r = run(args);
    assert.equal(r.status, 2, args.join(' '));
    assert.match(r.stdout, new RegExp(`^vfio-edu error bad arguments: ${re.source}`), args.join(' '));
  }
  const u = run(['-t', 'noiommu', 'unmapped']);
  assert.equal(u.status, 1);
  assert.match(u.stdout, /^vfio-edu error unmapped mode needs an IOMMU \(type1\)/);
});
