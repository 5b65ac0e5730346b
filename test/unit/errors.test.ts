// TsvmmError's fix lives in `fix`, not in the message: programs read it there, the CLI prints it
// on its own line ("tsvmm: fix: …") and QMP appends it to the error's desc. Checked on the sources
// (no string literal in product code says "fix:", but the two places that print the field) and on
// real error paths.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { projectRoot } from '../../core/paths.js';
import { ConfigError, describeError, TsvmmError } from '../../core/errors.js';
import { Kvm } from '../../core/kvm/kvm.js';
import { chooseBackend } from '../../core/vfio/vfio.js';
import { planFromInfo } from '../../core/vfio/hot-reset.js';
import { Iommufd } from '../../core/vfio/iommufd.js';
import { findHostDevice, VfioSetupError } from '../../core/vfio/sysfs.js';
import type { AssignedDevice } from '../../core/vfio/vfio.js';
import { planRam } from '../../core/ram.js';
import { checkConfig } from '../../machine/config/config.js';
import { parseUser } from '../../frontend/manager.js';
import { CommandError } from '../../frontend/commands.js';
import { TestHostError } from '../../testhost/util.js';
import { QmpServer } from '../../frontend/qmp/server.js';
import { QmpTestClient } from '../helpers/qmp.js';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-errors-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

/** The text of every string and template literal in a TypeScript source (comments skipped). */
export function stringLiterals(src: string): string[] {
  const out: string[] = [];
  let i = 0;
  // A template's text parts; `${…}` expressions are scanned as code (they may hold strings).
  const template = (): void => {
    let text = '';
    i++;
    while (i < src.length && src[i] !== '`') {
      if (src[i] === '\\') {
        text += src.slice(i, i + 2);
        i += 2;
      } else if (src[i] === '$' && src[i + 1] === '{') {
        out.push(text);
        text = '';
        i += 2;
        code('}');
      } else text += src[i++];
    }
    out.push(text);
    i++;
  };
  const code = (end?: string): void => {
    let depth = 0;
    while (i < src.length) {
      const ch = src[i]!;
      if (ch === '/' && src[i + 1] === '/') i = src.indexOf('\n', i) < 0 ? src.length : src.indexOf('\n', i);
      else if (ch === '/' && src[i + 1] === '*') i = src.indexOf('*/', i + 2) + 2;
      else if (ch === "'" || ch === '"') {
        let j = i + 1,
          text = '';
        while (j < src.length && src[j] !== ch) {
          if (src[j] === '\\') {
            text += src.slice(j, j + 2);
            j += 2;
          } else text += src[j++];
        }
        out.push(text);
        i = j + 1;
      } else if (ch === '`') template();
      else {
        if (ch === '{') depth++;
        if (ch === '}') {
          if (depth === 0 && end === '}') {
            i++;
            return;
          }
          depth--;
        }
        i++;
      }
    }
  };
  code();
  return out;
}

const PRODUCT = ['core', 'hw', 'machine', 'frontend', 'lib', 'bin', 'testhost'];
/** The places that print the field after its label, and how many literals each has for it. */
const PRINTERS: Record<string, number> = { 'bin/cli/main.ts': 1, 'core/errors.ts': 1 };

test('no string in product code embeds "fix:" (the fix goes in TsvmmError.fix), but the two printers of the field', () => {
  const found: Record<string, string[]> = {};
  let files = 0;
  for (const top of PRODUCT) {
    for (const e of readdirSync(join(projectRoot, top), { withFileTypes: true, recursive: true })) {
      if (!e.isFile() || !e.name.endsWith('.ts') || e.name.endsWith('.d.ts')) continue;
      const file = relative(projectRoot, join(e.parentPath, e.name));
      files++;
      const hits = stringLiterals(readFileSync(join(projectRoot, file), 'utf8')).filter((s) => /\bfix:/i.test(s));
      if (hits.length) found[file] = hits;
    }
  }
  assert.ok(files > 50, `scanned ${files} files`);
  const counts = Object.fromEntries(Object.entries(found).map(([f, h]) => [f, h.length]));
  assert.deepEqual(counts, PRINTERS, JSON.stringify(found, null, 1));
});

test('the scanner finds "fix:" in every kind of literal, and not in code or comments', () => {
  const src = [
    "const a = 'x. fix: y'; // fix: in a comment",
    'const b = "fix: z"; /* fix: */',
    'const c = `${a ? `nested fix: ${b}` : ""} tail`;',
    'const d = { fix: "run it" };',
  ].join('\n');
  const lits = stringLiterals(src);
  assert.deepEqual(
    lits.filter((s) => /\bfix:/i.test(s)),
    ['x. fix: y', 'fix: z', 'nested fix: '],
  );
  assert.ok(lits.includes('run it') && lits.includes(' tail'), JSON.stringify(lits));
});

/** A real error path: a TsvmmError whose message has no fix in it, and (when `fix`) the fix in its field. */
function refused(fn: () => unknown, code: string, message: RegExp, fix?: RegExp): TsvmmError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof TsvmmError, `expected a TsvmmError, got ${String(err)}`);
  assert.equal(err.code, code, err.message);
  assert.doesNotMatch(err.message, /\bfix:/i);
  assert.match(err.message, message);
  if (fix) assert.match(err.fix ?? '(no fix)', fix);
  return err;
}

test('real error paths: the message says what, `fix` says how', () => {
  refused(
    () => Kvm.open(join(dir, 'no-kvm')),
    'ERR_KVM',
    /no-kvm does not exist: this machine has no KVM$/,
    /kvm_intel/,
  );
  const noPerm = join(dir, 'kvm-0000');
  writeFileSync(noPerm, '', { mode: 0o000 });
  if (process.getuid?.() !== 0)
    refused(() => Kvm.open(noPerm), 'ERR_KVM', /^no permission to open .*kvm-0000 \(EACCES\)$/, /'kvm' group/);
  refused(
    () =>
      chooseBackend('auto', { legacy: '/dev/vfio/vfio does not exist', iommufd: '/dev/iommu does not exist' }, 'edu'),
    'ERR_VFIO_SETUP',
    /^edu: VFIO is not available on this host\./,
    /^load vfio-pci \(modprobe vfio-pci\)/,
  );
  refused(
    () => Iommufd.open(undefined, join(dir, 'no-iommu')),
    'ERR_VFIO_SETUP',
    /no-iommu does not exist: this kernel has no iommufd/,
    /legacy backend/,
  );
  const dev = { host: { name: '0000:01:01.0' }, device: { fd: 40 } } as unknown as AssignedDevice;
  refused(
    () => planFromInfo(dev, { flags: 0, devices: [{ segment: 0, bus: 1, devfn: 16, groupId: 9 }] }, new Map()),
    'ERR_VFIO_SETUP',
    /whose VFIO group this VM does not hold$/,
    /^assign a device of group 9/,
  );
  refused(
    () => planRam({ size: 2 ** 50, backing: 'anonymous', prealloc: false }, { resident: false }),
    'ERR_CONFIG',
    /^\/memory: 1048576 GiB of guest RAM is more than this host has/,
    /^give the VM less memory$/,
  );
  refused(
    () => findHostDevice({ host: 'ffff:ff:1f.7' }),
    'ERR_VFIO_SETUP',
    /^no PCI device ffff:ff:1f\.7 on this host \(\/sys\/bus\/pci\/devices\/ffff:ff:1f\.7 does not exist\)$/,
    /^check the address: 'lspci -D' or 'tsvmm groups'/,
  );
  refused(() => parseUser({ uid: '0' }), 'ERR_USAGE', /must not run as root$/, /--user nobody/);
  const cfg = refused(
    () => checkConfig({ kernel: { path: 'x' }, memory: '3X' }, 'vm.json', dir),
    'ERR_CONFIG',
    /^vm\.json: invalid configuration\n {2}- \/memory: /,
    /configs\/vm\.schema\.json/,
  );
  assert.ok(cfg instanceof ConfigError);
  const th = new TestHostError('no qemu-system-x86_64', { fix: 'apt-get install qemu-system-x86' });
  assert.ok(th instanceof TsvmmError && th.code === 'ERR_TESTHOST' && th.exitCode === 2);
});

test('QMP: a failed command keeps the fix of what failed beneath it, and its desc carries it', () => {
  const cause = new VfioSetupError('0000:01:00.0 has no IOMMU group: the IOMMU is off or absent', {
    fix: 'enable VT-d/AMD-Vi in the firmware',
  });
  const e = new CommandError('GenericError', cause.message, cause);
  assert.equal(e.fix, cause.fix);
  assert.doesNotMatch(e.message, /fix:/);
  assert.equal(
    describeError(e),
    '0000:01:00.0 has no IOMMU group: the IOMMU is off or absent; fix: enable VT-d/AMD-Vi in the firmware',
  );
  assert.equal(describeError(new CommandError('DeviceNotFound', "Device 'x' not found")), "Device 'x' not found");
  assert.equal(describeError(new Error('plain')), 'plain');
});

test('QMP: the desc a client reads ends with the fix', async () => {
  const srv = new QmpServer(
    join(dir, 'qmp.sock'),
    {
      device_add: () => {
        const cause = new VfioSetupError('0000:01:00.0 is bound to nvme, not vfio-pci', { fix: 'bind it to vfio-pci' });
        throw new CommandError('GenericError', cause.message, cause);
      },
    },
    { qemu: { major: 7, minor: 2, micro: 0 }, package: 'tsvmm test' },
  );
  await srv.listen();
  const c = await QmpTestClient.connect(srv.path);
  try {
    await c.next();
    await c.call('qmp_capabilities');
    assert.deepEqual(await c.call('device_add', { driver: 'vfio-pci', host: '01:00.0' }), {
      error: { class: 'GenericError', desc: '0000:01:00.0 is bound to nvme, not vfio-pci; fix: bind it to vfio-pci' },
    });
  } finally {
    c.s.destroy();
    await srv.close();
  }
});

test('the CLI prints the fix on a line of its own', () => {
  const r = spawnSync(process.execPath, [join(projectRoot, 'dist/bin/tsvmm.cjs'), 'manager', 'c.json', '--uid', '0'], {
    encoding: 'utf8',
  });
  assert.equal(r.status, 2, r.stderr);
  assert.equal(
    r.stderr,
    'tsvmm: the VMM must not run as root\ntsvmm: fix: pick an unprivileged user (--user nobody)\n',
  );
});
