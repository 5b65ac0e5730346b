import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guestPaths } from '../../guest/index.js';
import { checkConfig, loadConfig, ConfigError, parseMemory } from '../../machine/config/config.js';

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
  assert.ok(
    problems({ kernel: { path: 'guest.elf' }, devices: [{ type: 'vfio-pci', host: '3.0' }] }).some((m) =>
      m.startsWith('/devices/0/host: "3.0" has the wrong form'),
    ),
  );
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
    (e: ConfigError) => /^not valid JSON/.test(e.problems[0]!),
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
    problems(cfg({ devices: [{ type: 'vfio-pci', cdev: '/dev/vfio/7' }] })).some((m) =>
      m.startsWith('/devices/0/cdev: "/dev/vfio/7" has the wrong form'),
    ),
  );
  assert.ok(
    problems(
      cfg({ devices: [{ type: 'vfio-pci', sysfsdev: '/sys/x', host: '00:03.0', cdev: '/dev/vfio/devices/vfio0' }] }),
    ).some((m) => /give exactly one of/.test(m)),
  );
});
