// tsvmm groups: the host's IOMMU groups, their devices, drivers and viability.
import { parseCommand } from './common.js';

export const USAGE = `Usage: tsvmm groups [--json]

Lists the host's IOMMU groups: each group's devices (vendor:device IDs, driver) and whether the
group is viable for assignment (every member bound to vfio-pci, pci-stub or no driver).
  --json      one JSON array: [{ "group", "viable", "members": [{ "name", "vendor", "device", "driver" }] }]
Exit status 1 when the host has no IOMMU groups.`;

export async function main(args: string[]): Promise<number> {
  const p = parseCommand(args, { json: { type: 'boolean' } }, USAGE, { min: 0, max: 0, what: '' });
  if (!p) return 0;
  const { listGroups } = await import('../../core/vfio/sysfs.js');
  const groups = listGroups();
  if (p.values.json) {
    process.stdout.write(
      JSON.stringify(
        groups.map((g) => ({
          group: g.group,
          viable: g.viable,
          members: g.members.map((m) => ({
            name: m.name,
            vendor: m.vendor ?? null,
            device: m.device ?? null,
            driver: m.driver ?? null,
          })),
        })),
        null,
        2,
      ) + '\n',
    );
    return groups.length ? 0 : 1;
  }
  if (!groups.length) {
    process.stdout.write('no IOMMU groups: the IOMMU is off or absent (boot with intel_iommu=on / amd_iommu=on)\n');
    return 1;
  }
  for (const g of groups) {
    process.stdout.write(`group ${g.group} ${g.viable ? 'viable' : 'NOT viable'}\n`);
    for (const m of g.members) {
      const ids =
        m.vendor !== undefined
          ? ` ${m.vendor.toString(16).padStart(4, '0')}:${(m.device ?? 0).toString(16).padStart(4, '0')}`
          : '';
      process.stdout.write(`  ${m.name}${ids} driver=${m.driver ?? '(none)'}\n`);
    }
  }
  return 0;
}
