// The command line without KVM: per-command --help, unknown options refused everywhere (exit 2),
// run's QEMU/cloud-hypervisor-style flags and --print-config, --json listings, manager's memlock.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectRoot } from '../../core/paths.js';
import { guestPaths } from '../../guest/index.js';

const cli = join(projectRoot, 'dist/bin/tsvmm.cjs');
const dir = mkdtempSync(join(tmpdir(), 'tsvmm-cli-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const tsvmm = (args: string[], opts: { cwd?: string; prefix?: string[] } = {}) => {
  const [cmd, ...pre] = opts.prefix ?? [process.execPath];
  return spawnSync(cmd!, [...pre, ...(opts.prefix ? [process.execPath] : []), cli, ...args], {
    encoding: 'utf8',
    cwd: opts.cwd ?? dir,
  });
};
const COMMANDS = ['run', 'validate', 'groups', 'mdev', 'manager', 'qmp', 'initramfs'];

test('tsvmm <command> --help prints that command\'s usage, exit 0 (validate does not read "--help" as a file)', () => {
  for (const c of COMMANDS) {
    for (const h of ['--help', '-h']) {
      const r = tsvmm([c, h]);
      assert.equal(r.status, 0, `${c} ${h}: ${r.stderr}`);
      assert.match(r.stdout, new RegExp(`^Usage: tsvmm ${c}`), c);
    }
  }
  const top = tsvmm(['--help']);
  assert.equal(top.status, 0);
  for (const c of [...COMMANDS, 'testhost']) assert.match(top.stdout, new RegExp(`^  ${c} `, 'm'));
  assert.equal(tsvmm([]).status, 2, 'no command: usage on stderr, exit 2');
  assert.equal(tsvmm(['frobnicate']).status, 2);
});

test('unknown options are refused by every command, with its usage, exit 2', () => {
  const cases: string[][] = [
    ['run', '--bogus'],
    ['validate', 'x.json', '--bogus'],
    ['groups', '--bogus'],
    ['groups', 'extra'],
    ['mdev', 'list', '--bogus'],
    ['mdev', 'remove', 'u', '--force'],
    ['manager', 'c.json', '--uid', '1', '--bogus'],
    ['qmp', 's', 'c', '--bogus'],
    ['initramfs', 'o', '--script', 's', '--bogus'],
  ];
  for (const args of cases) {
    const r = tsvmm(args);
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(
      r.stderr,
      /^tsvmm: (unknown option '--bogus'|unknown option '--force'|unexpected argument 'extra')\n\nUsage: tsvmm /,
      args.join(' '),
    );
  }
  const missing = tsvmm(['run', '--memory']);
  assert.equal(missing.status, 2);
  assert.match(missing.stderr, /--memory <value>' argument missing/);
});

test('run flags: QEMU/cloud-hypervisor style, shown by --print-config; flags override a file', () => {
  const elf = guestPaths().elf;
  const r = tsvmm([
    'run',
    '--print-config',
    '--memory',
    '1G',
    '--cpus',
    '2',
    '--kernel',
    elf,
    '--initrd',
    'rd.img',
    '--cmdline',
    'console=ttyS0 quiet',
    '--device',
    'vfio-pci,host=0000:01:00.0',
    '--device',
    'vfio-pci,host=02:00.0,id=nic,addr=0x5.0,backend=iommufd',
    '--serial',
    'stdio',
    '--name',
    'one',
  ]);
  assert.deepEqual(JSON.parse(r.stdout), {
    kernel: { path: elf, initrd: join(dir, 'rd.img') },
    memory: '1G',
    vcpus: 2,
    cmdline: 'console=ttyS0 quiet',
    name: 'one',
    devices: [
      { type: 'vfio-pci', host: '0000:01:00.0' },
      { type: 'vfio-pci', host: '02:00.0', id: 'nic', slot: 5, backend: 'iommufd' },
    ],
    serial: { output: 'stdout', input: 'stdin' },
  });
  assert.equal(r.status, 2, 'printed, then refused: rd.img does not exist');
  assert.match(r.stderr, /command-line flags: invalid configuration\n  - --initrd: .*rd\.img does not exist/);

  const cfg = join(dir, 'vm.json');
  writeFileSync(
    cfg,
    JSON.stringify({
      name: 'file',
      memory: 64,
      cmdline: 'from file',
      kernel: { path: elf },
      devices: [{ type: 'vfio-pci', host: '00:03.0' }],
    }),
  );
  const o = tsvmm([
    'run',
    cfg,
    '--memory',
    '256',
    '--cmdline',
    'from flags',
    '--device',
    'vfio-pci,host=00:04.0',
    '--serial',
    'file:out.log',
    '--print-config',
  ]);
  assert.equal(o.status, 0, o.stderr);
  assert.deepEqual(JSON.parse(o.stdout), {
    name: 'file',
    memory: 256,
    cmdline: 'from flags',
    kernel: { path: elf },
    devices: [
      { type: 'vfio-pci', host: '00:03.0' },
      { type: 'vfio-pci', host: '00:04.0' },
    ],
    serial: { output: 'file', path: join(dir, 'out.log') },
  });
  const v = tsvmm(['run', '--print-config', '--serial', 'none']);
  assert.equal(v.status, 0, v.stderr);
  assert.equal(JSON.parse(v.stdout).name, 'demo', 'no config and no --kernel: the demo guest, with the flags');

  for (const [args, re] of [
    [
      ['--device', 'e1000,netdev=n'],
      /--device: 'e1000' is not a device tsvmm has \(it has vfio-pci, virtio-iommu-pci\)/,
    ],
    [['--device', 'vfio-pci,host=00:03.0,bogus=1'], /--device: vfio-pci has no property 'bogus'/],
    [['--device', 'vfio-pci,host=00:03.0,addr=zz'], /--device: addr=zz is not a slot/],
    [['--serial', 'pty'], /--serial pty: expected stdio, none or file:PATH/],
    [['--cpus', 'two'], /--cpus two: not a number/],
  ] as const) {
    const e = tsvmm(['run', '--print-config', ...args]);
    assert.equal(e.status, 2, args.join(' '));
    assert.match(e.stderr, re);
  }
  const bad = tsvmm(['run', '--memory', '3X', '--kernel', elf]);
  assert.equal(bad.status, 2, 'a bad flag value: exit 2 before anything runs');
  assert.match(
    bad.stderr,
    /^tsvmm: --memory 3X: not a size \(e\.g\. --memory 512M, --memory 1\.5G, or --memory 1024 for MiB\)\n/,
  );
});

test("run --memory takes sizes as QEMU's -m does: MiB when bare, fractions with a unit, 8 KiB-aligned", () => {
  const shown = (m: string) => {
    const r = tsvmm(['run', '--print-config', '--memory', m]);
    return [r.status, JSON.parse(r.stdout).memory];
  };
  assert.deepEqual(shown('512'), [0, 512]);
  assert.deepEqual(shown('1G'), [0, '1G']);
  assert.deepEqual(shown('1.5G'), [0, '1536M']);
  assert.deepEqual(shown('2g'), [0, '2G']);
  assert.deepEqual(shown('2.5'), [0, '2560K'], 'bare is MiB, as -m 2.5 is 2.5M');
  assert.deepEqual(shown('0.3G'), [0, '314576K'], '322122547.2 bytes: truncated, then up to 8 KiB');
  assert.deepEqual(shown('3.5M'), [0, '3584K']);
  for (const m of ['1.5.1G', 'G', '-1G', '0x10M', '1e3M', '1.5Q']) {
    const r = tsvmm(['run', '--print-config', `--memory=${m}`]);
    assert.equal(r.status, 2, m);
    assert.match(r.stderr, new RegExp(`^tsvmm: --memory ${m.replace(/\./g, '\\.')}: not a size \\(e\\.g\\. `), m);
  }
});

test("run: a problem with a flag's value names the flag, not the JSON pointer it became", () => {
  const r = tsvmm([
    'run',
    '--print-config',
    '--memory',
    '1',
    '--cpus',
    '0',
    '--name',
    'a b',
    '--device',
    'vfio-pci,host=1:2.3',
    '--device',
    'vfio-pci,id=x',
  ]);
  assert.equal(r.status, 2);
  assert.equal(
    r.stderr
      .split('\n')
      .filter((l) => l.startsWith('  - '))
      .join('\n'),
    [
      '  - --name: "a b" is not a name tsvmm takes: 1 to 64 letters, digits, ".", "_" or "-", e.g. "vm-1"',
      '  - --memory 1: 1 MiB is too small: at least 2 MiB',
      '  - --cpus 0: 0 is too small: at least 1',
      '  - --device vfio-pci,host=1:2.3 (host): "1:2.3" is not a PCI address: give domain:bus:device.function in hex, e.g. "0000:01:00.0" (or "01:00.0")',
      '  - --device vfio-pci,id=x: needs one of "host", "sysfsdev", "cdev" or "fd" to say which host device (e.g. "host": "0000:01:00.0")',
    ].join('\n'),
  );
});

test('run --print-config prints the paths resolved, as run uses them; a config file with a duplicate key is refused', () => {
  const sub = join(dir, 'rel');
  mkdirSync(sub, { recursive: true });
  copyFileSync(guestPaths().elf, join(sub, 'k.elf'));
  writeFileSync(
    join(sub, 'vm.json'),
    JSON.stringify({ kernel: { path: 'k.elf' }, serial: { output: 'file', path: 'out.log' }, memory: 16 }),
  );
  const r = tsvmm(['run', 'rel/vm.json', '--print-config']);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), {
    kernel: { path: join(sub, 'k.elf') },
    serial: { output: 'file', path: join(sub, 'out.log') },
    memory: 16,
  });
  writeFileSync(join(sub, 'dup.json'), '{"kernel": {"path": "k.elf"}, "memory": 16, "memory": 32}');
  for (const cmd of ['run', 'validate']) {
    const d = tsvmm([cmd, 'rel/dup.json']);
    assert.equal(d.status, 2, cmd);
    assert.match(
      d.stderr,
      /\n {2}- \(top level\): duplicate key "memory" \(line 1, column 45\): give each key once\n/,
      cmd,
    );
  }
});

test("tsvmm help <command> prints that command's help; manager without a user is a usage error (exit 2)", () => {
  for (const c of [...COMMANDS, 'testhost']) {
    const h = tsvmm(['help', c]);
    assert.equal(h.status, 0, `help ${c}: ${h.stderr}`);
    assert.equal(h.stdout, tsvmm([c, '--help']).stdout, c);
  }
  assert.equal(tsvmm(['help']).stdout, tsvmm(['--help']).stdout);
  const u = tsvmm(['help', 'nope']);
  assert.equal(u.status, 2);
  assert.match(u.stderr, /^tsvmm: help: unknown command 'nope'/);
  const m = tsvmm(['manager', join(projectRoot, 'configs/demo.json')]);
  assert.equal(m.status, 2, m.stderr);
  assert.match(m.stderr, /^tsvmm: manager needs --user NAME or --uid N: .*\n\nUsage: tsvmm manager /);
});

test('groups --json and mdev list --json are machine-readable', () => {
  const g = tsvmm(['groups', '--json']);
  const groups = JSON.parse(g.stdout) as unknown[];
  assert.ok(Array.isArray(groups));
  assert.equal(g.status, groups.length ? 0 : 1);
  const m = tsvmm(['mdev', 'list', '--json']);
  assert.equal(m.status, 0, m.stderr);
  const j = JSON.parse(m.stdout) as { types: unknown[]; mdevs: unknown[] };
  assert.ok(Array.isArray(j.types) && Array.isArray(j.mdevs));
});

test('manager: --memlock takes K/M/G; a limit it may not set is explained with the fix', () => {
  const bad = tsvmm(['manager', join(projectRoot, 'configs/demo.json'), '--uid', '65534', '--memlock', '8Q']);
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /--memlock: '8Q' is not a size/);
  // A hard limit of 1 MiB and no CAP_SYS_RESOURCE (dropped from the bounding set when root):
  // prlimit cannot raise it for the VMM.
  const drop =
    process.getuid?.() === 0 ? ['setpriv', '--bounding-set', '-sys_resource', '--inh-caps', '-sys_resource'] : [];
  const r = tsvmm(['manager', join(projectRoot, 'configs/demo.json'), '--uid', '65534', '--memlock', '8M'], {
    prefix: ['prlimit', '--memlock=1048576:1048576', ...drop],
  });
  assert.equal(r.status, 1, r.stderr);
  assert.match(
    r.stderr,
    /cannot give the VMM a locked-memory limit of 8 MiB \(--memlock\): prlimit: .*\n  this process's hard limit is 1 MiB, and raising it needs CAP_SYS_RESOURCE .*\ntsvmm: fix: raise the hard limit .* or pass --memlock 1M/,
  );
});
