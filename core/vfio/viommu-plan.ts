// The pure rules of the vIOMMU's host side (no kernel calls): where a host IOMMU group's DMA
// goes given where the guest put its functions, which attaches would split a group, and what a
// legacy container does when its group changes address space.

/** Where the guest put an endpoint: a domain (by id), bypass (all RAM 1:1) or blocked (no DMA). */
export type ViommuTarget = number | 'bypass' | 'blocked';

export interface GroupMember {
  endpoint: number;
  name: string;
  target: ViommuTarget;
}

export function describeTarget(t: ViommuTarget): string {
  return typeof t === 'number' ? `domain ${t}` : t;
}

/**
 * The one address space a host group's hardware can have for the guest targets of its
 * functions: the domain if one of them is in a domain (the group rule keeps it to one), else
 * bypass if one bypasses, else blocked. A function left in bypass or blocked next to a group-mate
 * in a domain is translated by that domain: the IOMMU cannot tell them apart (this is the state a
 * guest passes through while it moves a group one function at a time).
 */
export function hostTarget(targets: readonly ViommuTarget[]): ViommuTarget {
  const domain = targets.find((t) => typeof t === 'number');
  if (domain !== undefined) return domain;
  return targets.includes('bypass') ? 'bypass' : 'blocked';
}

/**
 * The group rule: after moving `endpoint` to `to`, the functions of host group `group` may be in
 * at most one guest domain. Returns why not (naming the group and every member) or undefined.
 */
export function groupRuleViolation(
  group: number,
  members: readonly GroupMember[],
  endpoint: number,
  to: ViommuTarget,
): string | undefined {
  if (typeof to !== 'number') return undefined;
  const me = members.find((m) => m.endpoint === endpoint);
  const other = members.find((m) => m.endpoint !== endpoint && typeof m.target === 'number' && m.target !== to);
  if (!other) return undefined;
  const list = members.map((m) => `${m.name} (endpoint ${m.endpoint}, ${describeTarget(m.target)})`).join(', ');
  return (
    `host IOMMU group ${group} cannot be split: ${me?.name ?? `endpoint ${endpoint}`} cannot join domain ${to} while ` +
    `${other.name} is in ${describeTarget(other.target)}; the IOMMU cannot isolate the functions of one group, so they ` +
    `share one domain (members: ${list})`
  );
}

/**
 * What a legacy container does when its group moves from one target to another: what it
 * unmaps, what it maps, and whether the device sees an unmapped window in between (type1 has no
 * atomic replace: DMA during the window faults).
 */
export interface LegacyMovePlan {
  leave: 'identity' | 'domain' | 'none';
  enter: 'identity' | 'domain' | 'none';
  window: boolean;
}

export function legacyMovePlan(from: ViommuTarget, to: ViommuTarget): LegacyMovePlan {
  if (from === to) return { leave: 'none', enter: 'none', window: false };
  const kind = (t: ViommuTarget) => (t === 'bypass' ? 'identity' : t === 'blocked' ? 'none' : 'domain');
  const leave = kind(from),
    enter = kind(to);
  return { leave, enter, window: leave !== 'none' && enter !== 'none' };
}
