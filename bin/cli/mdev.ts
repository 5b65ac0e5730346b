// tsvmm mdev: mediated device types and instances (sysfs).
import { parseCommand, UsageError } from './common.js';

export const USAGE = `Usage: tsvmm mdev list [--json]
       tsvmm mdev create <type> [uuid]
       tsvmm mdev remove <uuid>

  list            mediated device types (with free instances) and existing mdevs (group, cdev)
    --json        { "types": [{ "parent", "type", "available", "deviceApi", "name" }],
                    "mdevs": [{ "uuid", "type", "parent", "group", "cdev", "path" }] }
  create <type>   create an mdev ('mtty-1', or parent/type); prints its sysfs path (a device's "sysfsdev")
  remove <uuid>   remove an mdev`;

export async function main(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === undefined) throw new UsageError('missing subcommand (list, create or remove)', USAGE);
  if (sub === '--help' || sub === '-h') {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  const m = await import('../../core/vfio/mdev.js');
  switch (sub) {
    case 'list': {
      const p = parseCommand(rest, { json: { type: 'boolean' } }, USAGE, { min: 0, max: 0, what: '' });
      if (!p) return 0;
      const types = m.mdevTypes(),
        devs = m.mdevs();
      if (p.values.json) {
        const nil = <T>(x: T | undefined) => x ?? null;
        process.stdout.write(
          JSON.stringify(
            {
              types: types.map((t) => ({
                parent: t.parent,
                type: t.type,
                available: t.available,
                deviceApi: nil(t.deviceApi),
                name: nil(t.name),
              })),
              mdevs: devs.map((d) => ({
                uuid: d.uuid,
                type: d.type,
                parent: d.parent,
                group: nil(d.group),
                cdev: nil(d.cdev),
                path: d.path,
              })),
            },
            null,
            2,
          ) + '\n',
        );
        return 0;
      }
      if (!types.length && !devs.length) process.stdout.write(`no mdev parents (${m.MDEV_BUS} empty or missing)\n`);
      for (const t of types)
        process.stdout.write(
          `type ${t.parent}/${t.type} available=${t.available}${t.deviceApi ? ` api=${t.deviceApi}` : ''}${t.name ? ` name="${t.name}"` : ''}\n`,
        );
      for (const d of devs)
        process.stdout.write(
          `mdev ${d.uuid} type=${d.type} parent=${d.parent} group=${d.group ?? '-'} cdev=${d.cdev ?? '-'} sysfsdev=${d.path}\n`,
        );
      return 0;
    }
    case 'create': {
      const p = parseCommand(rest, {}, USAGE, { min: 1, max: 2, what: 'mdev type' });
      if (!p) return 0;
      process.stdout.write(
        `${m.createMdev(p.positionals[0]!, ...(p.positionals[1] ? [p.positionals[1]] : [])).path}\n`,
      );
      return 0;
    }
    case 'remove': {
      const p = parseCommand(rest, {}, USAGE, { min: 1, max: 1, what: 'mdev uuid' });
      if (!p) return 0;
      m.removeMdev(p.positionals[0]!);
      return 0;
    }
    default:
      throw new UsageError(`unknown subcommand '${sub}'`, USAGE);
  }
}
