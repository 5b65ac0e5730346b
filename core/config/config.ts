// VM configuration: parse, validate against configs/vm.schema.json (compiled once), check what
// a schema cannot (sizes, files), and normalise into a VmConfig with absolute paths and bytes.
// Every problem is reported with its JSON pointer and how to fix it.
import { readFileSync, existsSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { createRequire } from 'node:module';
import type { ErrorObject, ValidateFunction } from 'ajv';
import { projectRoot } from '../paths.js';

export const PAGE_SIZE = 4096;
export const SCHEMA_PATH = `${projectRoot}/configs/vm.schema.json`;

export type VfioBackendChoice = 'auto' | 'legacy' | 'iommufd';
export interface VfioPciConfig {
  type: 'vfio-pci'; id?: string; host?: string; sysfsdev?: string; cdev?: string; group?: number; slot?: number; backend?: VfioBackendChoice;
  /** Name of a passed fd that opens the device (group or cdev). */
  fd?: string;
  /** The expansion ROM: hidden when false; a file's bytes instead of the device's (path absolute once checked). */
  rombar?: boolean;
  romfile?: string;
}
export type DeviceConfig = VfioPciConfig;

export type KernelFormat = 'auto' | 'multiboot' | 'flat' | 'linux';
/** linux: an initramfs built at start-up (core/loader/initramfs.ts); paths absolute once checked. */
export interface InitramfsConfig { script: string; modules?: string; busybox?: string }

/** The raw JSON shape (as the schema describes it). */
export interface RawConfig {
  name?: string;
  memory?: number | string;
  vcpus?: number;
  kernel: { path: string; format?: KernelFormat; loadAddress?: number; entry?: number; initrd?: string; initramfs?: InitramfsConfig };
  cmdline?: string;
  serial?: { output?: 'stdout' | 'file' | 'none'; path?: string; input?: 'none' | 'stdin' };
  devices?: DeviceConfig[];
  vfio?: { backend?: VfioBackendChoice };
}

/** A validated configuration with defaults applied, sizes in bytes and absolute paths. */
export interface VmConfig {
  name: string;
  memoryBytes: number;
  vcpus: number;
  kernel: { path: string; format: KernelFormat; loadAddress: number; entry?: number; initrd?: string; initramfs?: InitramfsConfig };
  cmdline: string;
  serial: { output: 'stdout' | 'file' | 'none'; path?: string; input: 'none' | 'stdin' };
  devices: DeviceConfig[];
  vfio: { backend: VfioBackendChoice };
}

export class ConfigError extends Error {
  constructor(readonly source: string, readonly problems: string[]) {
    super(`${source}: invalid configuration\n${problems.map((p) => `  - ${p}`).join('\n')}`);
  }
}

const require = createRequire(import.meta.url);
let validator: ValidateFunction<RawConfig> | undefined;
let schemaJson: Record<string, any> | undefined;

function validate(): ValidateFunction<RawConfig> {
  if (!validator) {
    // ajv is CommonJS; the 2020-12 build is what the schema's $schema names.
    const Ajv2020 = require('ajv/dist/2020') as typeof import('ajv/dist/2020.js').default;
    const ajv = new Ajv2020({ allErrors: true, discriminator: true, strict: true, strictRequired: false, allowUnionTypes: true, verbose: true });
    schemaJson = JSON.parse(readFileSync(SCHEMA_PATH, 'utf8')) as Record<string, any>;
    validator = ajv.compile<RawConfig>(schemaJson);
  }
  return validator;
}

function describe(e: ErrorObject, schemaKeys: (ptr: string) => string[]): string | undefined {
  const at = e.instancePath || '(top level)';
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'additionalProperties': {
      const allowed = schemaKeys(e.instancePath);
      return `${at}: unknown key "${String(p.additionalProperty)}"${allowed.length ? ` (allowed: ${allowed.join(', ')})` : ''}`;
    }
    case 'required': return `${at}: missing required key "${String(p.missingProperty)}"`;
    case 'type': return `${at}: must be ${String(p.type)}`;
    case 'enum': return `${at}: must be one of ${(p.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`;
    case 'const': return `${at}: must be ${JSON.stringify(p.allowedValue)}`;
    case 'pattern': return `${at}: ${JSON.stringify(e.data)} has the wrong form (expected ${String(p.pattern)})`;
    case 'minimum': case 'maximum': return `${at}: must be ${e.keyword === 'minimum' ? '≥' : '≤'} ${String(p.limit)}`;
    case 'discriminator': return p.error === 'mapping' ? `${at}/type: unknown device type ${JSON.stringify(p.tagValue)} (known: vfio-pci)` : `${at}: a device needs a "type"`;
    case 'oneOf': case 'if': case 'anyOf': return undefined; // the branch errors say more
    default: return `${at}: ${e.message ?? e.keyword}`;
  }
}

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

export function parseMemory(v: number | string | undefined): number {
  if (v === undefined) return 128 * 2 ** 20;
  if (typeof v === 'number') return v * 2 ** 20;
  const n = Number(v.slice(0, -1));
  return n * { K: 2 ** 10, M: 2 ** 20, G: 2 ** 30 }[v.slice(-1) as 'K' | 'M' | 'G'];
}

/** Validates a parsed JSON value; `source` names it in messages, `baseDir` resolves paths. */
export function checkConfig(raw: unknown, source: string, baseDir: string): VmConfig {
  const v = validate();
  if (!v(raw)) {
    const schema = schemaJson!;
    const problems = [...new Set((v.errors ?? []).map((e) => describe(e, (p) => allowedKeys(schema, p))).filter((m): m is string => !!m))];
    // A device whose errors are only oneOf (host/sysfsdev both or neither):
    for (const e of v.errors ?? []) {
      if (e.keyword === 'oneOf' && /^\/devices\/\d+$/.test(e.instancePath) && !problems.some((p) => p.startsWith(e.instancePath)))
        problems.push(`${e.instancePath}: give exactly one of "host" or "sysfsdev" (or only "cdev", or only "fd")`);
    }
    throw new ConfigError(source, problems.length ? problems : ['(schema validation failed)']);
  }
  const problems: string[] = [];
  expandKernelEnv(raw.kernel, problems);
  const memoryBytes = parseMemory(raw.memory);
  if (memoryBytes % PAGE_SIZE) problems.push(`/memory: ${JSON.stringify(raw.memory)} is not a multiple of the 4 KiB page size (e.g. use ${Math.ceil(memoryBytes / 2 ** 20)}M)`);
  else if (memoryBytes < 2 * 2 ** 20) problems.push(`/memory: ${JSON.stringify(raw.memory)} is too small: at least 2M`);
  const kernelPath = resolve(baseDir, raw.kernel.path);
  if (!existsSync(kernelPath)) problems.push(`/kernel/path: ${kernelPath} does not exist${kernelPath.includes('/guest/out/') ? " (build the test guest: 'npm run build')" : ''}`);
  else if (!statSync(kernelPath).isFile()) problems.push(`/kernel/path: ${kernelPath} is not a file`);
  const serialPath = raw.serial?.path ? resolve(baseDir, raw.serial.path) : undefined;
  if (serialPath && !existsSync(dirname(serialPath))) problems.push(`/serial/path: directory ${dirname(serialPath)} does not exist`);
  if (raw.kernel.format !== 'flat' && (raw.kernel.loadAddress !== undefined || raw.kernel.entry !== undefined) && raw.kernel.format !== undefined)
    problems.push(`/kernel: loadAddress and entry apply to format "flat" only`);
  const linux = checkLinuxKernel(raw.kernel, baseDir, problems);
  const slots = new Set<number>();
  const devices = (raw.devices ?? []).map((d, i) => {
    if (d.romfile === undefined) return d;
    const romfile = resolve(baseDir, d.romfile);
    if (!existsSync(romfile) || !statSync(romfile).isFile()) problems.push(`/devices/${i}/romfile: ${romfile} is not a file: give the ROM image's path, or drop "romfile"`);
    else if (d.rombar === false) problems.push(`/devices/${i}: "romfile" with "rombar": false: the ROM would be hidden; drop one of them`);
    else if (statSync(romfile).size === 0 || statSync(romfile).size > 16 * 2 ** 20) problems.push(`/devices/${i}/romfile: ${romfile} is ${statSync(romfile).size} bytes; a ROM holds 1 byte to 16 MiB`);
    return { ...d, romfile };
  });
  (raw.devices ?? []).forEach((d, i) => {
    if (d.slot !== undefined) {
      if (slots.has(d.slot)) problems.push(`/devices/${i}/slot: slot ${d.slot} is used by another device`);
      slots.add(d.slot);
    }
  });
  if (problems.length) throw new ConfigError(source, problems);
  return {
    name: raw.name ?? 'tsvmm',
    memoryBytes,
    vcpus: raw.vcpus ?? 1,
    kernel: {
      path: kernelPath, format: raw.kernel.format ?? 'auto', loadAddress: raw.kernel.loadAddress ?? 0x100000,
      ...(raw.kernel.entry !== undefined ? { entry: raw.kernel.entry } : {}),
      ...linux,
    },
    cmdline: raw.cmdline ?? '',
    serial: { output: raw.serial?.output ?? 'stdout', ...(serialPath ? { path: serialPath } : {}), input: raw.serial?.input ?? 'none' },
    devices,
    vfio: { backend: raw.vfio?.backend ?? 'auto' },
  };
}

/**
 * `${NAME}` in the kernel's paths is replaced by that environment variable, so a sample can name a
 * kernel that lives outside the tree (configs/linux/*.json: TSVMM_LINUX_KERNEL, TSVMM_LINUX_MODULES).
 */
function expandKernelEnv(k: RawConfig['kernel'], problems: string[]): void {
  const expand = (ptr: string, v: string) => v.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_m, name: string) => {
    const val = process.env[name];
    if (val === undefined || val === '') problems.push(`${ptr}: environment variable ${name} is not set (${JSON.stringify(v)} needs it)`);
    return val ?? '';
  });
  k.path = expand('/kernel/path', k.path);
  if (k.initrd !== undefined) k.initrd = expand('/kernel/initrd', k.initrd);
  if (k.initramfs?.modules !== undefined) k.initramfs.modules = expand('/kernel/initramfs/modules', k.initramfs.modules);
  if (k.initramfs?.busybox !== undefined) k.initramfs.busybox = expand('/kernel/initramfs/busybox', k.initramfs.busybox);
}

/** kernel.initrd / kernel.initramfs: linux only, one or the other; their paths resolved and checked. */
function checkLinuxKernel(k: RawConfig['kernel'], baseDir: string, problems: string[]): { initrd?: string; initramfs?: InitramfsConfig } {
  const out: { initrd?: string; initramfs?: InitramfsConfig } = {};
  if (k.initrd === undefined && k.initramfs === undefined) return out;
  if (k.format !== undefined && k.format !== 'linux' && k.format !== 'auto') problems.push(`/kernel: initrd and initramfs apply to format "linux" only`);
  if (k.initrd !== undefined && k.initramfs !== undefined) problems.push(`/kernel: give either "initrd" (a file) or "initramfs" (built at start-up), not both`);
  const file = (ptr: string, p: string, dir = false) => {
    const abs = resolve(baseDir, p);
    if (!existsSync(abs)) problems.push(`${ptr}: ${abs} does not exist`);
    else if (dir !== statSync(abs).isDirectory()) problems.push(`${ptr}: ${abs} is ${dir ? 'not a directory' : 'a directory, not a file'}`);
    return abs;
  };
  if (k.initrd !== undefined) out.initrd = file('/kernel/initrd', k.initrd);
  if (k.initramfs) {
    out.initramfs = { script: k.initramfs.script };
    if (k.initramfs.modules !== undefined) out.initramfs.modules = file('/kernel/initramfs/modules', k.initramfs.modules, true);
    if (k.initramfs.busybox !== undefined) out.initramfs.busybox = file('/kernel/initramfs/busybox', k.initramfs.busybox);
  }
  return out;
}

/** Reads, parses and checks a config file. */
export function loadConfig(path: string): VmConfig {
  const abs = resolve(path);
  let text: string;
  try {
    text = readFileSync(abs, 'utf8');
  } catch (e) {
    throw new ConfigError(abs, [`cannot read the file: ${(e as Error).message}`]);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(abs, [`not valid JSON: ${(e as Error).message}`]);
  }
  return checkConfig(raw, abs, dirname(abs));
}
