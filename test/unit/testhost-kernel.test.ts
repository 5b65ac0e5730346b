// The iommufd test-host kernel's config fragment and the check that holds a built .config to it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { missingFragmentOptions } from '../../testhost/kernel.js';
import { kernelFragmentPath } from '../../testhost/util.js';

test('an option of the fragment that is not =y after olddefconfig is reported; comments are not options', () => {
  const fragment = [
    '# VFIO (CONFIG_IN_A_COMMENT=y)',
    'CONFIG_VFIO=y',
    '  CONFIG_VFIO_PCI=y',
    'CONFIG_KVM=y',
    'CONFIG_NR_CPUS=8',
    '',
  ].join('\n');
  const config = ['CONFIG_VFIO=y', '# CONFIG_VFIO_PCI is not set', 'CONFIG_KVM=m', 'CONFIG_NR_CPUS=64'].join('\n');
  assert.deepEqual(missingFragmentOptions(fragment, config), ['CONFIG_VFIO_PCI', 'CONFIG_KVM']);
  assert.deepEqual(missingFragmentOptions(fragment, config.replace('CONFIG_KVM=m', 'CONFIG_KVM=y')), [
    'CONFIG_VFIO_PCI',
  ]);
});

test('the fragment: every line is a comment, blank, or one CONFIG_ assignment, and it asks for the VFIO APIs', () => {
  const lines = readFileSync(kernelFragmentPath, 'utf8').split('\n');
  for (const [i, l] of lines.entries())
    assert.match(l, /^(#.*|CONFIG_[A-Z0-9_]+=(y|n|-?\d+|"[^"]*")|)$/, `${kernelFragmentPath}:${i + 1}: '${l}'`);
  // An empty .config lacks every option the fragment asks for: these are among them.
  const asked = missingFragmentOptions(lines.join('\n'), '');
  for (const k of [
    'CONFIG_IOMMUFD',
    'CONFIG_VFIO_DEVICE_CDEV',
    'CONFIG_VFIO_CONTAINER',
    'CONFIG_SAMPLE_VFIO_MDEV_MTTY',
  ])
    assert.ok(asked.includes(k), `${k} is not asked for`);
});
