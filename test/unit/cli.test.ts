// The command line without KVM: per-command --help, unknown options refused everywhere (exit 2),
// run's QEMU/cloud-hypervisor-style flags and --print-config, --json listings, manager's memlock.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
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
  assert.match(r.stderr, /command-line flags: invalid configuration\n  - \/kernel\/initrd: .*rd\.img does not exist/);

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
    [['--device', 'e1000,netdev=n'], /--device: 'e1000' is not a device tsvmm has \(it has vfio-pci\)/],
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
  assert.equal(bad.status, 2, 'a bad flag value is a config problem: exit 2 before anything runs');
  assert.match(bad.stderr, /\/memory: "3X" has the wrong form/);
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
