// tsvmm/testing's pure parts: line helpers, the test guest's result lines, the Linux guest config.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkConfig } from '../../machine/config/config.js';
import {
  guestResults,
  keyValues,
  linePattern,
  lines,
  linuxGuest,
  testGuest,
  testHostDevice,
  waitForLine,
} from '../../lib/testing.js';
import { TsvmmError } from '../../core/errors.js';
import { fakeBzImage } from '../helpers/images.js';

test('testing: lines() returns complete lines only, without CR', () => {
  assert.deepEqual(lines(''), []);
  assert.deepEqual(lines('a\r\nb\nparti'), ['a', 'b']);
  assert.deepEqual(lines('a\n\nb\n'), ['a', '', 'b']);
});

test('testing: linePattern matches a whole line, not a line still arriving', () => {
  const p = linePattern(/count=(\d+) ok/);
  assert.equal(p.exec('edu msi count=1'), null, 'a line without its newline does not match');
  assert.equal(p.exec('edu msi count=12 o'), null);
  const m = p.exec('boot\nedu msi count=12 ok\nnext');
  assert.ok(m);
  assert.equal(m[1], '12', 'capture groups keep their numbers');
  assert.equal(m[0], 'edu msi count=12 ok\n');
  // A string is literal; flags other than g/m/y carry over.
  assert.ok(linePattern('a.b (x)').test('say a.b (x)\n'));
  assert.ok(!linePattern('a.b').test('aXb\n'));
  assert.ok(linePattern(/PASS EDU/i).test('pass edu-dma\r\n'));
  // Anchors refer to the line.
  assert.ok(linePattern(/^PASS/).test('x\nPASS a\n'));
  assert.ok(!linePattern(/^PASS/).test('x PASS a\n'));
});

test('testing: waitForLine hands waitForSerial a line pattern', async () => {
  let seen: string | RegExp | undefined;
  const vm = {
    waitForSerial: async (p: string | RegExp) => {
      seen = p;
      return (p as RegExp).exec('tsvmm-guest: exit 0\n')!;
    },
  };
  const m = await waitForLine(vm, /exit (\d+)/, { timeoutMs: 5 });
  assert.ok(seen instanceof RegExp);
  assert.equal(m[1], '0');
});

test('testing: guestResults parses PASS/FAIL lines', () => {
  const serial = 'edu id=0x010000ed\r\nPASS edu-id\nFAIL edu-dma: dst differs at 12\nPASS edu-msi\nPASS edu-intx';
  assert.deepEqual(guestResults(serial), [
    { name: 'edu-id', pass: true },
    { name: 'edu-dma', pass: false, why: 'dst differs at 12' },
    { name: 'edu-msi', pass: true },
  ]);
});

test('testing: keyValues parses key=value words', () => {
  assert.deepEqual(keyValues('edu msi count=3 ok'), { count: '3' });
  assert.deepEqual(keyValues('cmdline x="a b" y= z=1\nz=2'), { x: 'a b', y: '', z: '2' });
});

test('testing: testGuest names the built guest', () => {
  assert.ok(existsSync(testGuest.elf), testGuest.elf);
  assert.ok(existsSync(testGuest.bin), testGuest.bin);
  assert.ok(existsSync(testGuest.json), testGuest.json);
});

test('testing: linuxGuest gives a config that validates', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-linuxguest-'));
  try {
    const kernel = join(dir, 'bzImage');
    writeFileSync(kernel, fakeBzImage());
    const c = linuxGuest({
      kernel,
      script: 'echo hello',
      vcpus: 2,
      devices: [{ type: 'vfio-pci', id: 'edu', host: '0000:00:03.0' }],
    });
    assert.deepEqual(c.kernel, { path: kernel, format: 'linux', initramfs: { script: 'echo hello' } });
    const v = checkConfig(c, 'linuxGuest', dir);
    assert.equal(v.vcpus, 2);
    assert.equal(v.memoryBytes, 256 * 2 ** 20);
    assert.equal(v.kernel.initramfs?.script, 'echo hello');
    assert.equal(v.devices[0]?.host, '0000:00:03.0');
    assert.throws(
      () => linuxGuest({ kernel: join(dir, 'missing'), script: '' }),
      (e) => e instanceof TsvmmError && e.code === 'ERR_CONFIG',
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('testing: test host helpers refuse to run outside the test host', () => {
  const saved = process.env.TSVMM_TESTHOST;
  delete process.env.TSVMM_TESTHOST;
  try {
    assert.throws(
      () => testHostDevice('edu'),
      (e) => e instanceof TsvmmError && e.code === 'ERR_USAGE' && /runInTestHost/.test(e.fix ?? ''),
    );
  } finally {
    if (saved !== undefined) process.env.TSVMM_TESTHOST = saved;
  }
});
