// The schema's errors (ajv's, from the generated validator) as a person reads them: where (the
// JSON pointer), what, and an example of the right form instead of a regular expression; one
// line where the schema's alternatives would give several.
import type { ErrorObject } from 'ajv';
import { configSchema } from '../../generated/config-validator.js';

function describe(e: ErrorObject, schemaKeys: (ptr: string) => string[]): string | undefined {
  const at = e.instancePath || '(top level)';
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'additionalProperties': {
      const allowed = schemaKeys(e.instancePath);
      return `${at}: unknown key "${String(p.additionalProperty)}"${allowed.length ? ` (allowed: ${allowed.join(', ')})` : ''}`;
    }
    case 'required':
      return `${at}: missing required key "${String(p.missingProperty)}"`;
    case 'type':
      return `${at}: must be ${String(p.type)}`;
    case 'enum':
      return `${at}: must be one of ${(p.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`;
    case 'const':
      return `${at}: must be ${JSON.stringify(p.allowedValue)}`;
    case 'pattern': {
      const form = FORMS[e.instancePath.split('/').pop()!];
      return form
        ? `${at}: ${JSON.stringify(e.data)} ${form}`
        : `${at}: ${JSON.stringify(e.data)} has the wrong form (expected ${String(p.pattern)})`;
    }
    case 'minimum':
    case 'maximum': {
      // A bare number of memory is MiB (as QEMU's -m): say so, with the limit in MiB.
      const mib = /^\/memory(\/size)?$/.test(e.instancePath) ? ' MiB' : '';
      return `${at}: ${String(e.data)}${mib} is too ${e.keyword === 'minimum' ? 'small: at least' : 'big: at most'} ${String(p.limit)}${mib}`;
    }
    case 'discriminator':
      return p.error === 'mapping'
        ? `${at}/type: unknown device type ${JSON.stringify(p.tagValue)} (known: vfio-pci)`
        : `${at}: a device needs a "type"`;
    case 'oneOf':
    case 'if':
    case 'anyOf':
      return undefined; // the branch errors say more
    default:
      return `${at}: ${e.message ?? e.keyword}`;
  }
}

/**
 * What a value of the wrong form should look like, by key: an example of the right form (the
 * schema's regular expression tells a person little). A unit test holds every patterned key here.
 */
export const FORMS: Record<string, string> = {
  host: 'is not a PCI address: give domain:bus:device.function in hex, e.g. "0000:01:00.0" (or "01:00.0")',
  sysfsdev:
    'is not a sysfs path: e.g. "/sys/bus/pci/devices/0000:01:00.0", or an mdev\'s "/sys/bus/mdev/devices/<uuid>"',
  cdev: 'is not a VFIO device cdev: e.g. "/dev/vfio/devices/vfio0"',
  name: 'is not a name tsvmm takes: 1 to 64 letters, digits, ".", "_" or "-", e.g. "vm-1"',
  id: 'is not an id tsvmm takes: 1 to 64 letters, digits, ".", "_" or "-", e.g. "nic0"',
  fd: 'is not an fd name tsvmm takes: 1 to 64 letters, digits, ".", "_" or "-", e.g. "dev0"',
  memory: 'is not a size: a whole number and a unit (K, M, G or T), e.g. "512M" or "2G"; a bare number is MiB (512)',
  path: 'is not an absolute path in the initramfs: e.g. "/bin/tool"',
  size: 'is not a size: a whole number and a unit (K, M, G or T), e.g. "512M" or "2G"; a bare number is MiB (512)',
};

/** The device keys that name what to open; a device needs one of them (the schema's oneOf). */
const DEVICE_SOURCES = ['host', 'sysfsdev', 'cdev', 'fd'];

// Keys allowed at an object pointer, for "unknown key" messages.
function allowedKeys(schema: Record<string, any>, ptr: string): string[] {
  const parts = ptr.split('/').filter(Boolean);
  let s: Record<string, any> | undefined = schema;
  for (const part of parts) {
    if (!s) return [];
    if (/^\d+$/.test(part) && s.items) s = s.items.$ref ? schema.$defs.device : s.items;
    else s = s.properties?.[part];
  }
  return s?.properties ? Object.keys(s.properties).filter((k) => k !== '$schema') : [];
}

/** `memory` is a size or an object: once it is one of them, "must be <another form>" says nothing. */
function otherMemoryForm(raw: unknown, problem: string): boolean {
  const m = /^\/memory(?:\/size)?: must be (integer|string|object)$/.exec(problem);
  if (!m || typeof raw !== 'object' || raw === null) return false;
  const ptr = problem.startsWith('/memory/size') ? 'size' : 'memory';
  const base = (raw as { memory?: unknown }).memory;
  const val = ptr === 'size' ? (base as { size?: unknown } | undefined)?.size : base;
  const kind =
    typeof val === 'number'
      ? 'integer'
      : typeof val === 'string'
        ? 'string'
        : typeof val === 'object' && val !== null
          ? 'object'
          : undefined;
  return kind !== undefined && kind !== m[1];
}

/** The problems of a config the schema refused, one line each. */
export function schemaProblems(errors: ErrorObject[], raw: unknown): string[] {
  const schema = configSchema as Record<string, any>;
  // A device with none of the keys that name what to open fails each oneOf branch with its own
  // "missing required key": one line says it.
  const sourceless = new Set(
    errors
      .filter(
        (e) =>
          e.keyword === 'required' &&
          /^\/devices\/\d+$/.test(e.instancePath) &&
          DEVICE_SOURCES.includes(String((e.params as { missingProperty?: unknown }).missingProperty)),
      )
      .map((e) => e.instancePath)
      .filter((ptr) => {
        const d = (raw as { devices?: Record<string, unknown>[] }).devices?.[Number(ptr.split('/')[2])];
        return !!d && typeof d === 'object' && !DEVICE_SOURCES.some((k) => k in d);
      }),
  );
  const problems = [
    ...new Set(
      errors
        .filter(
          (e) =>
            !(
              e.keyword === 'required' &&
              sourceless.has(e.instancePath) &&
              DEVICE_SOURCES.includes(String((e.params as { missingProperty?: unknown }).missingProperty))
            ),
        )
        .map((e) => describe(e, (p) => allowedKeys(schema, p)))
        .filter((m): m is string => !!m),
    ),
  ].filter((m) => !otherMemoryForm(raw, m));
  for (const ptr of sourceless)
    problems.push(
      `${ptr}: needs one of "host", "sysfsdev", "cdev" or "fd" to say which host device (e.g. "host": "0000:01:00.0")`,
    );
  // A device whose errors are only oneOf (host/sysfsdev both or neither):
  for (const e of errors) {
    if (
      e.keyword === 'oneOf' &&
      /^\/devices\/\d+$/.test(e.instancePath) &&
      !problems.some((p) => p.startsWith(e.instancePath))
    )
      problems.push(`${e.instancePath}: give exactly one of "host" or "sysfsdev" (or only "cdev", or only "fd")`);
  }
  return problems;
}
