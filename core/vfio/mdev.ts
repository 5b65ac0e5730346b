// Mediated devices over sysfs (Documentation/driver-api/vfio-mediated-device.rst): a parent
// device offers types under /sys/class/mdev_bus/<parent>/mdev_supported_types/<type>/; writing
// a UUID to a type's `create` makes /sys/bus/mdev/devices/<uuid>, which VFIO assigns like any
// device (sysfsdev=, its own IOMMU group, a cdev with the iommufd backend).
import { existsSync, readdirSync, readlinkSync, realpathSync, writeFileSync } from 'node:fs';
import { basename, dirname } from 'node:path';
import { randomUUID } from 'node:crypto';
import { VfioSetupError, groupOf, cdevOf, readTrim } from './sysfs.js';

export const MDEV_BUS = '/sys/class/mdev_bus';
export const MDEV_DEVICES = '/sys/bus/mdev/devices';

export interface MdevType {
  parent: string;
  type: string;
  name?: string;
  description?: string;
  deviceApi?: string;
  available: number;
  path: string;
}
export interface Mdev {
  uuid: string;
  path: string;
  parent: string;
  type: string;
  group?: number;
  cdev?: string;
}

const list = (p: string): string[] => {
  try {
    return readdirSync(p).sort();
  } catch {
    return [];
  }
};

export function mdevTypes(): MdevType[] {
  return list(MDEV_BUS).flatMap((parent) =>
    list(`${MDEV_BUS}/${parent}/mdev_supported_types`).map((type) => {
      const path = `${MDEV_BUS}/${parent}/mdev_supported_types/${type}`;
      const name = readTrim(`${path}/name`),
        description = readTrim(`${path}/description`),
        deviceApi = readTrim(`${path}/device_api`);
      return {
        parent,
        type,
        path,
        available: Number(readTrim(`${path}/available_instances`) ?? 0),
        ...(name ? { name } : {}),
        ...(description ? { description } : {}),
        ...(deviceApi ? { deviceApi } : {}),
      };
    }),
  );
}

export function mdevs(): Mdev[] {
  return list(MDEV_DEVICES).map((uuid) => {
    const path = `${MDEV_DEVICES}/${uuid}`;
    let type = '?',
      parent = '?';
    try {
      type = basename(readlinkSync(`${path}/mdev_type`));
    } catch {
      /* racing a remove */
    }
    try {
      parent = basename(dirname(realpathSync(path)));
    } catch {
      /* racing a remove */
    }
    const group = groupOf(path),
      cdev = cdevOf(path);
    return { uuid, path, parent, type, ...(group !== undefined ? { group } : {}), ...(cdev ? { cdev } : {}) };
  });
}

/** Creates an mdev of a type ("mtty-1", or "parent/type" when several parents offer it). */
export function createMdev(typeSpec: string, uuid: string = randomUUID()): Mdev {
  if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(uuid))
    throw new VfioSetupError(`'${uuid}' is not a UUID (e.g. ${randomUUID()})`);
  const [parentWant, typeWant] = typeSpec.includes('/')
    ? (typeSpec.split('/', 2) as [string, string])
    : [undefined, typeSpec];
  const all = mdevTypes();
  if (!all.length)
    throw new VfioSetupError(`no mdev parent devices (${MDEV_BUS} is empty or missing)`, {
      fix: 'load a vendor driver that offers mediated devices (e.g. modprobe mtty)',
    });
  const matches = all.filter((t) => t.type === typeWant && (!parentWant || t.parent === parentWant));
  const known = all
    .map((t) => `${t.parent}/${t.type}${t.name ? ` (${t.name})` : ''}, ${t.available} available`)
    .join('; ');
  if (!matches.length) throw new VfioSetupError(`no mdev type '${typeSpec}'. known: ${known}`);
  if (matches.length > 1)
    throw new VfioSetupError(
      `mdev type '${typeSpec}' is offered by ${matches.map((m) => m.parent).join(', ')}: say which, as parent/type`,
    );
  const t = matches[0]!;
  if (t.available < 1)
    throw new VfioSetupError(`mdev type ${t.parent}/${t.type} has no instances left (available_instances 0)`, {
      fix: "remove one first ('tsvmm mdev list')",
    });
  try {
    writeFileSync(`${t.path}/create`, uuid);
  } catch (e) {
    throw new VfioSetupError(
      `creating ${t.parent}/${t.type} ${uuid} failed: ${(e as Error).message}` +
        ((e as NodeJS.ErrnoException).code === 'EACCES' ? ' (needs root)' : ''),
      { cause: e },
    );
  }
  const m = mdevs().find((x) => x.uuid === uuid);
  if (!m) throw new VfioSetupError(`${MDEV_DEVICES}/${uuid} did not appear after create`);
  return m;
}

export function removeMdev(uuid: string): void {
  const path = `${MDEV_DEVICES}/${uuid}`;
  if (!existsSync(path))
    throw new VfioSetupError(`no mdev ${uuid} (${path} does not exist); 'tsvmm mdev list' shows them`);
  try {
    writeFileSync(`${path}/remove`, '1');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new VfioSetupError(
      `removing mdev ${uuid} failed: ${(e as Error).message}` +
        (code === 'EBUSY'
          ? ' (it is in use: stop the VM that has it first)'
          : code === 'EACCES'
            ? ' (needs root)'
            : ''),
      { cause: e },
    );
  }
}
