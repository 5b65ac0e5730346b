// The pure rules of the vIOMMU's host side (no kernel calls): where a host IOMMU group's DMA
// goes given where the guest put its functions, which attaches and maps would split a group,
// and what a legacy container does when its group changes address space.

/** Where the guest put an endpoint: a domain (by id), bypass (all RAM 1:1) or blocked (no DMA). */
export type ViommuTarget = number | 'bypass' | 'blocked';

export interface GroupMember {
  endpoint: number;
  name: string;
  target: ViommuTarget;
}

/** Whether a guest domain holds mappings (an empty domain reaches nothing, as blocked). */
export type HoldsMappings = (domain: number) => boolean;

export function describeTarget(t: ViommuTarget): string {
  return typeof t === 'number' ? `domain ${t}` : t;
}

/** Whether a device in `t` reaches memory: bypass (all of RAM), or a domain holding mappings. */
export function reachesMemory(t: ViommuTarget, holds: HoldsMappings): boolean {
  return t === 'bypass' || (typeof t === 'number' && holds(t));
}

/**
 * The targets among `targets` that let a device reach memory: bypass (all of RAM) and the
 * domains holding mappings, each once. A host group can follow only one of them: its functions
 * share one address space in hardware.
 */
export function holders(targets: readonly ViommuTarget[], holds: HoldsMappings): ViommuTarget[] {
  const out: ViommuTarget[] = [];
  for (const t of targets) if (reachesMemory(t, holds) && !out.includes(t)) out.push(t);
  return out;
}

/**
 * The one address space a host group's hardware gets for the guest targets of its functions.
 * Linux moves a group one function at a time (the iommu core attaches each device of the group
 * in turn), so the functions are often in two places for a while; the group follows the one
 * that reaches memory:
 * - a domain with mappings (a function in bypass, blocked or an empty domain next to it is
 *   translated by it: the IOMMU cannot tell group-mates apart, and the guest mapped it for them);
 * - else bypass, if a function bypasses (all of RAM, which the guest gave the group);
 * - else nothing is reachable: an empty domain of theirs (preferring `current`, so that moving
 *   between empty places costs nothing, and so that the domain's first map finds the group
 *   already there), or blocked.
 * Two holders at once is what the group rule refuses; should a hot-added function make it so,
 * the domain wins over bypass (the smaller reach).
 */
export function hostTarget(
  targets: readonly ViommuTarget[],
  holds: HoldsMappings,
  current?: ViommuTarget,
): ViommuTarget {
  const h = holders(targets, holds);
  const domain = h.find((t) => typeof t === 'number');
  if (domain !== undefined) return domain;
  if (h.length) return 'bypass';
  if (typeof current === 'number' && targets.includes(current)) return current;
  return targets.find((t) => typeof t === 'number') ?? 'blocked';
}

const memberList = (members: readonly GroupMember[]) =>
  members.map((m) => `${m.name} (endpoint ${m.endpoint}, ${describeTarget(m.target)})`).join(', ');

/** Why a group whose holders would grow from `before` to `after` is refused, or undefined. */
function splitWhy(
  group: number,
  members: readonly GroupMember[],
  moved: readonly GroupMember[],
  what: string,
  before: readonly ViommuTarget[],
  after: readonly ViommuTarget[],
  fresh: ViommuTarget,
): string | undefined {
  if (after.length < 2 || after.every((t) => before.includes(t))) return undefined;
  const other = after.find((t) => t !== fresh)!;
  const reach = (t: ViommuTarget) =>
    t === 'bypass' ? 'bypass (all of guest RAM)' : `${describeTarget(t)}, which holds mappings`;
  const who = moved.filter((m) => m.target === other).map((m) => m.name);
  return (
    `host IOMMU group ${group} cannot be split: ${what} while ${who.join(' and ')} ${who.length > 1 ? 'are' : 'is'} in ` +
    `${reach(other)}; the IOMMU cannot isolate the functions of one group, so at most one of their domains may ` +
    `hold mappings (move the others to it or empty it first; members: ${memberList(members)})`
  );
}

/**
 * The group rule for an attach: after moving `endpoint` to `to`, at most one of the targets of
 * host group `group`'s functions may reach memory (a domain holding mappings, or bypass). An
 * attach to an empty domain (or to blocked) is always fine: that is how a group moves. Returns
 * why not (naming the group and every member) or undefined.
 */
export function groupRuleViolation(
  group: number,
  members: readonly GroupMember[],
  endpoint: number,
  to: ViommuTarget,
  holds: HoldsMappings,
): string | undefined {
  const me = members.find((m) => m.endpoint === endpoint);
  const moved = members.map((m) => (m.endpoint === endpoint ? { ...m, target: to } : m));
  const before = holders(
    members.map((m) => m.target),
    holds,
  );
  const after = holders(
    moved.map((m) => m.target),
    holds,
  );
  const what = `${me?.name ?? `endpoint ${endpoint}`} cannot join ${to === 'bypass' ? 'bypass (all of guest RAM)' : `${describeTarget(to)}, which holds mappings,`}`;
  return splitWhy(group, members, moved, what, before, after, to);
}

/**
 * The group rule for a map into `domain`: refused when a function of the group is in `domain`
 * and another is in a different target that reaches memory (the map would make two).
 */
export function mapRuleViolation(
  group: number,
  members: readonly GroupMember[],
  domain: number,
  holds: HoldsMappings,
): string | undefined {
  const inIt = members.filter((m) => m.target === domain);
  if (!inIt.length) return undefined;
  const targets = members.map((m) => m.target);
  const before = holders(targets, holds);
  const after = holders(targets, (d) => d === domain || holds(d));
  const what = `a mapping in domain ${domain} (where ${inIt.map((m) => m.name).join(' and ')} ${inIt.length > 1 ? 'are' : 'is'}) is refused`;
  return splitWhy(group, members, members, what, before, after, domain);
}

/** A host group as the rules see it: its functions' targets and where its hardware is now. */
export interface GroupState {
  group: number;
  members: readonly GroupMember[];
  current: ViommuTarget;
}

/** What to do with a guest request for one host group: refuse it (why), or move the host to `host`. */
export type GroupDecision = { refuse: string } | { host: ViommuTarget };

/** The guest attaches `endpoint` (a member of `g`) to `to`. */
export function attachDecision(g: GroupState, endpoint: number, to: ViommuTarget, holds: HoldsMappings): GroupDecision {
  const why = groupRuleViolation(g.group, g.members, endpoint, to, holds);
  if (why) return { refuse: why };
  return {
    host: hostTarget(
      g.members.map((m) => (m.endpoint === endpoint ? to : m.target)),
      holds,
      g.current,
    ),
  };
}

/**
 * firstMapDecision's usual case, decided without allocating: 'sole' when a function of the group
 * is in `domain` and every other is where memory is not reachable (blocked, an empty domain), so
 * the map makes `domain` the group's one holder (allowed; the host goes there); 'none' when no
 * function is in `domain` (no say); undefined when another function reaches memory (the full rule
 * decides). Strict and lazy mode empty a domain at every unmap, so every guest map is a first one.
 */
export function firstMapSole(
  members: readonly { readonly target: ViommuTarget }[],
  domain: number,
  holds: HoldsMappings,
): 'sole' | 'none' | undefined {
  let inIt = false;
  for (let i = 0; i < members.length; i++) {
    const t = members[i]!.target;
    if (t === domain) inIt = true;
    else if (reachesMemory(t, holds)) return undefined;
  }
  return inIt ? 'sole' : 'none';
}

/**
 * The guest maps into `domain`, which holds nothing yet (later maps change nothing for the
 * groups): undefined when no member of `g` is in it.
 */
export function firstMapDecision(g: GroupState, domain: number, holds: HoldsMappings): GroupDecision | undefined {
  if (!g.members.some((m) => m.target === domain)) return undefined;
  const why = mapRuleViolation(g.group, g.members, domain, holds);
  if (why) return { refuse: why };
  return {
    host: hostTarget(
      g.members.map((m) => m.target),
      (d) => d === domain || holds(d),
      g.current,
    ),
  };
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
