import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guestPaths } from '../../guest/index.js';
import { checkConfig, loadConfig, ConfigError, parseMemory, FORMS } from '../../machine/config/config.js';
import { configSchema } from '../../generated/config-validator.js';
import { parseJsonStrict } from '../../machine/config/json.js';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-config-'));
const kernel = join(dir, 'guest.elf');
copyFileSync(guestPaths().elf, kernel); // a real multiboot image: validate checks images
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

function problems(raw: unknown): string[] {
  try {
    checkConfig(raw, 'test.json', dir);
  } catch (e) {
    assert.ok(e instanceof ConfigError, String(e));
    return e.problems;
  }
  assert.fail('config was accepted');
}

test('a minimal config gets defaults and absolute paths', () => {
  const c = checkConfig({ kernel: { path: 'guest.elf' } }, 'test.json', dir);
  assert.equal(c.memoryBytes, 128 * 2 ** 20);
  assert.equal(c.vcpus, 1);
  assert.equal(c.kernel.path, kernel);
  assert.equal(c.kernel.format, 'auto');
  assert.deepEqual(c.serial, { output: 'stdout', input: 'none' });
  assert.deepEqual(c.devices, []);
});

test('memory: integers are MiB, strings take K/M/G', () => {
  assert.equal(parseMemory(64), 64 * 2 ** 20);
  assert.equal(parseMemory('65536K'), 64 * 2 ** 20);
  assert.equal(parseMemory('1G'), 2 ** 30);
  assert.equal(checkConfig({ memory: '256M', kernel: { path: 'guest.elf' } }, 't', dir).memoryBytes, 256 * 2 ** 20);
});

test('memory not a multiple of the page size is refused with the pointer and a fix', () => {
  const p = problems({ memory: '65537K', kernel: { path: 'guest.elf' } });
  assert.equal(p.length, 1);
  assert.match(p[0]!, /^\/memory: "65537K" is not a multiple of the 4 KiB page size \(e\.g\. use 65M\)/);
});

test('unknown keys name the key, its place and what is allowed', () => {
  const p = problems({ kernel: { path: 'guest.elf', pth: 'x' }, memroy: 64 });
  assert.ok(
    p.some((m) =>
      /^\(top level\): unknown key "memroy" \(allowed: name, memory, vcpus, kernel, .*devices.*\)$/.test(m),
    ),
    p.join('\n'),
  );
  assert.ok(
    p.some((m) => /^\/kernel: unknown key "pth" \(allowed: path, format, .*\)$/.test(m)),
    p.join('\n'),
  );
});

test('wrong types and values are reported at their JSON pointer', () => {
  const p = problems({ vcpus: 'two', kernel: { path: 'guest.elf', format: 'pe' } });
  assert.ok(p.includes('/vcpus: must be integer'), p.join('\n'));
  assert.ok(
    p.some((m) => m.startsWith('/kernel/format: must be one of "auto", "multiboot", "flat"')),
    p.join('\n'),
  );
});

test('a missing image says where it was looked for', () => {
  const p = problems({ kernel: { path: 'nope.elf' } });
  assert.deepEqual(p, [`/kernel/path: ${join(dir, 'nope.elf')} does not exist`]);
});

test('missing kernel is a missing required key', () => {
  assert.deepEqual(problems({}), ['(top level): missing required key "kernel"']);
});

test('devices: unknown type, both host and sysfsdev, duplicate slots', () => {
  assert.ok(
    problems({ kernel: { path: 'guest.elf' }, devices: [{ type: 'virtio-net' }] }).some((m) =>
      /^\/devices\/0\/type: unknown device type "virtio-net" \(known: vfio-pci\)$/.test(m),
    ),
  );
  assert.ok(
    problems({
      kernel: { path: 'guest.elf' },
      devices: [{ type: 'vfio-pci', host: '00:03.0', sysfsdev: '/sys/bus/pci/devices/0000:00:03.0' }],
    }).some((m) => /^\/devices\/0: give exactly one of "host" or "sysfsdev" \(or only "cdev", or only "fd"\)$/.test(m)),
  );
  assert.deepEqual(problems({ kernel: { path: 'guest.elf' }, devices: [{ type: 'vfio-pci', host: '3.0' }] }), [
    '/devices/0/host: "3.0" is not a PCI address: give domain:bus:device.function in hex, e.g. "0000:01:00.0" (or "01:00.0")',
  ]);
  assert.deepEqual(
    problems({
      kernel: { path: 'guest.elf' },
      devices: [
        { type: 'vfio-pci', host: '00:03.0', slot: 3 },
        { type: 'vfio-pci', host: '00:04.0', slot: 3 },
      ],
    }),
    ['/devices/1/slot: slot 3 is used by another device'],
  );
});

test('serial output to a file needs a path', () => {
  assert.ok(
    problems({ kernel: { path: 'guest.elf' }, serial: { output: 'file' } }).some(
      (m) => m === '/serial: missing required key "path"',
    ),
  );
});

test('loadConfig: unreadable and malformed files', () => {
  assert.throws(
    () => loadConfig(join(dir, 'absent.json')),
    (e: ConfigError) => /cannot read the file/.test(e.problems[0]!),
  );
  writeFileSync(join(dir, 'bad.json'), '{ "kernel": ');
  assert.throws(
    () => loadConfig(join(dir, 'bad.json')),
    (e: ConfigError) =>
      e.problems[0] === 'not valid JSON at line 1, column 13: expected a value, found the end of the file',
  );
  writeFileSync(join(dir, 'ok.json'), JSON.stringify({ kernel: { path: 'guest.elf' }, memory: 32 }));
  assert.equal(loadConfig(join(dir, 'ok.json')).memoryBytes, 32 * 2 ** 20);
});

test('VFIO backend: per VM and per device, cdev alone or with host, bad values refused', () => {
  const cfg = (extra: object) => ({ kernel: { path: 'guest.elf' }, ...extra });
  const a = checkConfig(
    cfg({ vfio: { backend: 'iommufd' }, devices: [{ type: 'vfio-pci', cdev: '/dev/vfio/devices/vfio0' }] }),
    't.json',
    dir,
  );
  assert.equal(a.vfio.backend, 'iommufd');
  assert.equal(a.devices[0]!.cdev, '/dev/vfio/devices/vfio0');
  const b = checkConfig(
    cfg({ devices: [{ type: 'vfio-pci', host: '00:03.0', cdev: '/dev/vfio/devices/vfio3', backend: 'legacy' }] }),
    't.json',
    dir,
  );
  assert.equal(b.vfio.backend, 'auto', 'the VM default');
  assert.equal(b.devices[0]!.backend, 'legacy');
  assert.ok(
    problems(cfg({ vfio: { backend: 'vfio' } })).some((m) =>
      /^\/vfio\/backend: must be one of "auto", "legacy", "iommufd"$/.test(m),
    ),
  );
  assert.ok(
    problems(cfg({ devices: [{ type: 'vfio-pci', host: '00:03.0', backend: 'cdev' }] })).some((m) =>
      m.startsWith('/devices/0/backend: must be one of'),
    ),
  );
  assert.ok(
    problems(cfg({ devices: [{ type: 'vfio-pci', cdev: '/dev/vfio/7' }] })).some(
      (m) => m === '/devices/0/cdev: "/dev/vfio/7" is not a VFIO device cdev: e.g. "/dev/vfio/devices/vfio0"',
    ),
  );
  assert.ok(
    problems(
      cfg({ devices: [{ type: 'vfio-pci', sysfsdev: '/sys/x', host: '00:03.0', cdev: '/dev/vfio/devices/vfio0' }] }),
    ).some((m) => /give exactly one of/.test(m)),
  );
});

test('a value of the wrong form gets an example of the right one, not the regular expression', () => {
  const p = problems({
    name: 'my vm',
    memory: '1.5G',
    kernel: { path: 'guest.elf' },
    devices: [
      { type: 'vfio-pci', host: '1:2.3', id: 'nic 0' },
      { type: 'vfio-pci', sysfsdev: '/dev/x' },
      { type: 'vfio-pci', fd: 'a/b' },
    ],
  });
  assert.deepEqual(p, [
    '/name: "my vm" is not a name tsvmm takes: 1 to 64 letters, digits, ".", "_" or "-", e.g. "vm-1"',
    '/memory: "1.5G" is not a size: a whole number and a unit (K, M, G or T), e.g. "512M" or "2G"; a bare number is MiB (512)',
    '/devices/0/id: "nic 0" is not an id tsvmm takes: 1 to 64 letters, digits, ".", "_" or "-", e.g. "nic0"',
    '/devices/0/host: "1:2.3" is not a PCI address: give domain:bus:device.function in hex, e.g. "0000:01:00.0" (or "01:00.0")',
    '/devices/1/sysfsdev: "/dev/x" is not a sysfs path: e.g. "/sys/bus/pci/devices/0000:01:00.0", or an mdev\'s "/sys/bus/mdev/devices/<uuid>"',
    '/devices/2/fd: "a/b" is not an fd name tsvmm takes: 1 to 64 letters, digits, ".", "_" or "-", e.g. "dev0"',
  ]);
  // Every key the schema gives a pattern has its example (else the message falls back to the pattern).
  const patterned: string[] = [];
  const walk = (s: unknown, key?: string): void => {
    if (!s || typeof s !== 'object') return;
    if (key && typeof (s as { pattern?: unknown }).pattern === 'string') patterned.push(key);
    for (const [k, v] of Object.entries(s as Record<string, unknown>))
      walk(v, k === 'properties' || k === 'oneOf' || k === '$defs' || /^\d+$/.test(k) ? key : k);
  };
  walk(configSchema);
  assert.ok(patterned.includes('host') && patterned.includes('memorySize'), patterned.join());
  for (const k of patterned) assert.ok(FORMS[k === 'memorySize' ? 'memory' : k], `no example for "${k}"`);
});

test('sizes carry their unit: memory is MiB when bare, and the limits say so', () => {
  const k = { path: 'guest.elf' };
  assert.deepEqual(problems({ memory: 1, kernel: k }), ['/memory: 1 MiB is too small: at least 2 MiB']);
  assert.deepEqual(problems({ memory: { size: 2000000 }, kernel: k }), [
    '/memory/size: 2000000 MiB is too big: at most 1048576 MiB',
  ]);
  assert.equal(problems({ memory: '1M', kernel: k })[0], '/memory: "1M" is too small: at least 2 MiB ("2M")');
  assert.deepEqual(problems({ vcpus: 0, kernel: k }), ['/vcpus: 0 is too small: at least 1']);
});

test('a device that names no host device: one line, not one per alternative', () => {
  assert.deepEqual(problems({ kernel: { path: 'guest.elf' }, devices: [{ type: 'vfio-pci', id: 'x' }] }), [
    '/devices/0: needs one of "host", "sysfsdev", "cdev" or "fd" to say which host device (e.g. "host": "0000:01:00.0")',
  ]);
});

test('an unset ${VAR} in a path is one error, not also a missing file', () => {
  delete process.env.TSVMM_TEST_UNSET;
  assert.deepEqual(
    problems({
      kernel: { path: '${TSVMM_TEST_UNSET}/bzImage', initrd: '${TSVMM_TEST_UNSET}/rd', format: 'linux' },
    }),
    [
      '/kernel/path: environment variable TSVMM_TEST_UNSET is not set ("${TSVMM_TEST_UNSET}/bzImage" needs it): set it (export TSVMM_TEST_UNSET=…)',
      '/kernel/initrd: environment variable TSVMM_TEST_UNSET is not set ("${TSVMM_TEST_UNSET}/rd" needs it): set it (export TSVMM_TEST_UNSET=…)',
    ],
  );
});

test('config files: syntax errors at line:column, a duplicate key refused', () => {
  const load = (name: string, text: string) => {
    writeFileSync(join(dir, name), text);
    try {
      loadConfig(join(dir, name));
    } catch (e) {
      assert.ok(e instanceof ConfigError, String(e));
      return e.problems;
    }
    return assert.fail(`${name} was accepted`);
  };
  assert.deepEqual(load('comma.json', '{\n  "kernel": { "path": "guest.elf" },\n  "memory": 64,\n}\n'), [
    'not valid JSON at line 4, column 1: a comma before "}" (JSON allows no trailing comma)',
  ]);
  assert.deepEqual(load('quote.json', "{\n  'kernel': 1\n}"), [
    'not valid JSON at line 2, column 3: expected a key in double quotes, found "\'"',
  ]);
  assert.deepEqual(load('dup.json', '{\n  "kernel": { "path": "guest.elf" },\n  "memory": 64,\n  "memory": 128\n}'), [
    '(top level): duplicate key "memory" (line 4, column 3): give each key once',
  ]);
  assert.deepEqual(load('dup2.json', '{ "kernel": { "path": "guest.elf", "path": "other.elf" } }'), [
    '/kernel: duplicate key "path" (line 1, column 36): give each key once',
  ]);
  // The same key in two objects is not a duplicate; escapes name the same key.
  assert.deepEqual(parseJsonStrict('{"a": {"a": 1}, "b": [{"a": 2}, {"a": 3}]}'), {
    a: { a: 1 },
    b: [{ a: 2 }, { a: 3 }],
  });
  assert.throws(() => parseJsonStrict('{"a": 1, "\\u0061": 2}'), /duplicate key "a"/);
  // What JSON.parse takes, parseJsonStrict takes and returns alike.
  for (const t of ['0', '-1.5e+3', '"x\\n\\u00e9"', 'true', 'null', ' [ ] ', '{"k":[1,{"m":null}]}'])
    assert.deepEqual(parseJsonStrict(t), JSON.parse(t), t);
  for (const t of ['', '01', '[1,]', '{"a" 1}', '"\t"', 'nul', '{} x', '1.', '.5'])
    assert.throws(() => parseJsonStrict(t), /./, t);
});
