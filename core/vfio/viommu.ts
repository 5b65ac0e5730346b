// The host side of a vIOMMU for assigned devices: guest DMA domains (core/memory/dma-domain.ts)
// made real in the host IOMMU on both VFIO backends. The guest-visible device model
// (virtio-iommu) calls this; it never throws for what a guest asks, it refuses with a reason.
//
// ## Interface (what the device model calls)
//
//   type ViommuTarget = number /* domain id */ | 'bypass' /* all guest RAM 1:1 */ | 'blocked' /* no DMA */
//   type HostResult = { ok: true } | { ok: false; status: RefusalStatus; reason: string }
//   type RefusalStatus = 'inval' | 'range' | 'noent' | 'nomem' | 'devErr' | 'unsupp'  // virtio-iommu's S_*
//   class VfioViommu {
//     constructor(memory: AddressSpace, opts?: { log?: (line: string) => void })
//     // the guest's requests
//     createDomain(id): HostResult                       // 'inval' if it exists
//     destroyDomain(id): HostResult                      // its endpoints become 'blocked'; 'noent' if unknown
//     attach(endpoint, to: ViommuTarget): HostResult     // 'noent' unknown endpoint/domain; 'unsupp' group split
//     detach(endpoint): HostResult                       // = attach(endpoint, 'blocked')
//     map(domain, iova, gpa, size, { read, write }): HostResult   // 'inval' non-RAM/overlap/unaligned,
//                                                        // 'nomem' DMA-entry limit, 'devErr' kernel errno,
//                                                        // 'unsupp' group split
//     unmap(domain, iova, size): HostResult              // 'range' if it would split a mapping
//     hasEndpoint(endpoint): boolean
//     reservedRegions(endpoint): ReservedRegion[]        // the host's, for PROBE's RESV_MEM (sysfs, inclusive ends)
//     reset(): void                                      // system reset: every domain gone, endpoints bypass
//     inspect(): ViommuInspect                           // domains (endpoints, mapping counts), totals
//     // the machine's wiring (setup errors throw VfioSetupError)
//     addEndpoint(endpoint, a: AssignedDevice, initial: 'bypass' | 'blocked' = 'bypass')  // a opened with viommu: true
//     removeEndpoint(endpoint)                           // back to 1:1 (bypass) before device_del releases it
//     endpointOf(a): number | undefined
//     close()
//   }
//
// The machine gets it as `vfio.viommu` (core/vfio/vfio.ts, made on first use), opens each device
// behind it with `vfio.open({ ...spec, viommu: true })`, then `vfio.viommu.addEndpoint(id, a)`
// with the endpoint id the device model uses (its requester ID); `vfio.release(a)` removes the
// endpoint itself, `vfio.close()` closes the vIOMMU. A group-mate hot-added later joins the page
// table its group is in. Devices of one host group are all behind the vIOMMU or none.
//
// Every refusal leaves the state as it was (nothing half-mapped, nothing half-attached).
//
// ## Backends
//
// - legacy (type1): one container per host IOMMU group behind the vIOMMU (LegacyVfio opens such
//   groups `isolated`: a group cannot change containers while its device fds are open). The
//   container mirrors its group's target: bypass = the 1:1 RAM listener of today (dma.ts); a
//   domain = every mapping of the domain replayed into it (each container attached to a domain
//   gets each of its maps and unmaps); blocked = empty. Changing target is unmap-all then replay:
//   DMA in that window faults (stats.unmappedWindows counts them). Each container holds at most
//   vfio_iommu_type1's dma_entry_limit mappings (default 65,535): a map beyond it is refused
//   ('nomem', the limit named, and logged).
// - iommufd: one IOAS per guest domain (made when the first iommufd endpoint joins it), the
//   device's own RAM IOAS for bypass, an empty IOAS for blocked. A group moves with
//   VFIO_DEVICE_ATTACH_IOMMUFD_PT on its attached devices: the kernel replaces the page table of
//   the whole group atomically, so there is no unmapped window.
//
// ## The group rule
//
// The functions of one host IOMMU group share one address space in hardware. Linux moves a group
// to a new domain one function at a time (the iommu core attaches each device of the group in
// turn: its default domain, VFIO's blocking domain, VFIO's own), so the functions may be in
// several places for a while. That is allowed while at most one of those places reaches memory
// (a domain holding mappings, or bypass: all of RAM); the host group follows that one, and an
// empty domain, blocked or bypass next to it is translated by it (viommu-plan.ts hostTarget). An
// attach or a map that would make two of them reach memory is refused ('unsupp', one log line
// naming the group and its members) before any kernel call (iommufd would say -EINVAL). When the
// group is whole in one domain again the host is in that domain.
import type { AddressSpace } from '../memory/index.js';
import {
  DmaDomains,
  OK,
  refuse,
  type DmaPerm,
  type DomainListener,
  type HostPiece,
  type HostResult,
  type Refusal,
} from '../memory/dma-domain.js';
import { native } from '../native.js';
import type { VfioContainer } from './container.js';
import { IommufdIoas, type GroupJoin } from './iommufd.js';
import { dmaEntryLimit } from './limits.js';
import { reservedRegions, VfioSetupError, type ReservedRegion } from './sysfs.js';
import type { AssignedDevice } from './vfio.js';
import {
  attachDecision,
  describeTarget,
  firstMapDecision,
  firstMapSole,
  hostTarget,
  legacyMovePlan,
  reachesMemory,
  type GroupState,
  type HoldsMappings,
  type ViommuTarget,
} from './viommu-plan.js';

export type { ViommuTarget } from './viommu-plan.js';
export type { HostResult, Refusal, RefusalStatus, DmaPerm } from '../memory/dma-domain.js';

export interface ViommuStats {
  /** Guest maps and unmaps that took effect, and requests refused. */
  maps: number;
  unmaps: number;
  refused: number;
  attaches: number;
  /** Host group moves, and the legacy ones that had an unmapped window. */
  moves: number;
  unmappedWindows: number;
  /** Host IOMMU calls made for domains (MAP_DMA / IOAS_MAP, and their unmaps). */
  hostMaps: number;
  hostUnmaps: number;
}

export interface ViommuInspect {
  domains: {
    id: number;
    endpoints: number[];
    mappings: number;
    hostMappings: number;
    maps: number;
    unmaps: number;
    refused: number;
    orphaned: number;
  }[];
  endpoints: { endpoint: number; device: string; group: number; backend: string; target: string }[];
  groups: { group: number; backend: string; members: string[]; host: string }[];
  stats: ViommuStats;
}

interface Endpoint {
  id: number;
  name: string;
  target: ViommuTarget;
  group: HostGroup;
  device: AssignedDevice;
}

interface HostGroup {
  id: number;
  backend: 'legacy' | 'iommufd';
  members: Endpoint[];
  /** What the hardware has now. */
  current: ViommuTarget;
  /** legacy: the group's own container. */
  port?: ContainerPort;
  /** iommufd: the IOAS that maps all RAM 1:1 (the devices' own). */
  home?: IommufdIoas;
}

const errorText = (e: unknown) => (e instanceof Error ? e.message : String(e));

/** A legacy container as a domain listener, counting its entries against type1's limit. */
class ContainerPort implements DomainListener {
  entries = 0;
  constructor(
    readonly container: VfioContainer,
    readonly group: number,
    private readonly limit: { limit: number; source: string },
    private readonly stats: ViommuStats,
  ) {}
  get name(): string {
    return `the VFIO container of host group ${this.group}`;
  }
  room(): number {
    return Math.max(0, this.limit.limit - this.entries - this.container.mappings.size);
  }
  limitText(): string {
    return this.limit.source;
  }
  map(p: HostPiece, perm: DmaPerm): void {
    this.container.mapRaw(p.iova, p.size, p.vaddr, perm.read, perm.write);
    this.entries++;
    this.stats.hostMaps++;
  }
  unmap(p: HostPiece): void {
    this.container.unmapRaw(p.iova, p.size);
    this.entries--;
    this.stats.hostUnmaps++;
  }
  unmapRange(iova: number, size: number, count: number): void {
    // type1 unmaps every mapping wholly inside the range (and refuses one it would bisect).
    const n = this.container.unmapRaw(iova, size);
    if (n !== size) throw new Error(`VFIO_IOMMU_UNMAP_DMA of ${size} bytes at 0x${iova.toString(16)} unmapped ${n}`);
    this.entries -= count;
    this.stats.hostUnmaps++;
  }
}

/** A domain's IOAS as a domain listener. */
class IoasPort implements DomainListener {
  constructor(
    readonly ioas: IommufdIoas,
    readonly domain: number,
    private readonly stats: ViommuStats,
  ) {}
  get name(): string {
    return `the IOAS of domain ${this.domain}`;
  }
  room(): number {
    return Infinity;
  }
  limitText(): string {
    return 'iommufd has no DMA-entry limit';
  }
  map(p: HostPiece, perm: DmaPerm): void {
    this.ioas.mapRaw(p.iova, p.size, p.vaddr, perm.read, perm.write);
    this.stats.hostMaps++;
  }
  unmap(p: HostPiece): void {
    this.ioas.unmapRaw(p.iova, p.size);
    this.stats.hostUnmaps++;
  }
  unmapRange(iova: number, size: number): void {
    // IOMMU_IOAS_UNMAP removes every area wholly inside the range.
    this.ioas.unmapRaw(iova, size);
    this.stats.hostUnmaps++;
  }
}

export interface ViommuOptions {
  /** Where refusals worth an operator's eye go (group rule, DMA-entry limit). Default: stderr. */
  log?: (line: string) => void;
}

export class VfioViommu {
  readonly domains: DmaDomains;
  readonly stats: ViommuStats = {
    maps: 0,
    unmaps: 0,
    refused: 0,
    attaches: 0,
    moves: 0,
    unmappedWindows: 0,
    hostMaps: 0,
    hostUnmaps: 0,
  };
  private readonly endpoints = new Map<number, Endpoint>();
  private readonly groups = new Map<number, HostGroup>();
  private readonly ioasOf = new Map<number, IoasPort>();
  private blockedIoas: IommufdIoas | undefined;
  private readonly log: (line: string) => void;

  constructor(
    readonly memory: AddressSpace,
    opts: ViommuOptions = {},
  ) {
    this.log = opts.log ?? ((l) => process.stderr.write(`tsvmm: viommu: ${l}\n`));
    this.domains = new DmaDomains(memory);
  }

  private refused(r: Refusal): Refusal {
    this.stats.refused++;
    return r;
  }

  /** Whether a guest domain holds mappings (orphaned ones too: the guest still has them). */
  private readonly holds: HoldsMappings = (d) => (this.domains.get(d)?.mappings.size ?? 0) > 0;

  private reaches(t: ViommuTarget): boolean {
    return reachesMemory(t, this.holds);
  }

  /** Where host group `g` goes for its members' targets (or these `targets`). */
  private hostFor(g: HostGroup, targets = g.members.map((m) => m.target), holds = this.holds): ViommuTarget {
    return hostTarget(targets, holds, g.current);
  }

  private static state(g: HostGroup): GroupState {
    return {
      group: g.id,
      members: g.members.map((m) => ({ endpoint: m.id, name: m.name, target: m.target })),
      current: g.current,
    };
  }

  hasEndpoint(endpoint: number): boolean {
    return this.endpoints.has(endpoint);
  }

  /**
   * The IOVA ranges the host IOMMU reserves for an endpoint's group (the MSI window, and for
   * 'direct' regions RMRRs): a guest must not map there (the kernel refuses it, and the device
   * model reports them to the guest in PROBE). Empty for an unknown endpoint.
   */
  reservedRegions(endpoint: number): ReservedRegion[] {
    const e = this.endpoints.get(endpoint);
    return e ? reservedRegions(e.group.id) : [];
  }

  createDomain(id: number): HostResult {
    const d = this.domains.create(id);
    return 'ok' in d ? this.refused(d) : { ok: true };
  }

  destroyDomain(id: number): HostResult {
    if (!this.domains.get(id)) return this.refused(refuse('noent', `domain ${id} does not exist`));
    const moved = new Set<HostGroup>();
    for (const e of this.endpoints.values())
      if (e.target === id) {
        e.target = 'blocked';
        moved.add(e.group);
      }
    for (const g of moved) {
      const r = this.moveGroup(g, this.hostFor(g));
      if (!r.ok) this.log(`destroying domain ${id}: ${r.reason}`);
    }
    const port = this.ioasOf.get(id);
    if (port) {
      this.domains.get(id)!.removeListener(port, false); // destroying the IOAS drops its mappings
      port.ioas.destroy();
      this.ioasOf.delete(id);
    }
    const errors = this.domains.destroy(id);
    if (errors.length) this.log(`destroying domain ${id}: unmap failed: ${errorText(errors[0])}`);
    return { ok: true };
  }

  map(domain: number, iova: number, gpa: number, size: number, perm: DmaPerm): HostResult {
    const d = this.domains.get(domain);
    if (!d) return this.refused(refuse('noent', `domain ${domain} does not exist`));
    // A domain's first mapping makes it reach memory: the group rule, and the groups with a
    // function in it follow it there (they were in an empty place, so the move costs nothing).
    if (d.mappings.size === 0) {
      const r = this.firstMapping(domain);
      if (!r.ok) return this.refused(r);
    }
    const r = d.map(iova, gpa, size, perm);
    if (!r.ok) {
      if (r.status === 'nomem') this.log(r.reason);
      return this.refused(r);
    }
    this.stats.maps++;
    return r;
  }

  unmap(domain: number, iova: number, size: number): HostResult {
    const d = this.domains.get(domain);
    if (!d) return this.refused(refuse('noent', `domain ${domain} does not exist`));
    const r = d.unmap(iova, size);
    if (!r.ok) return this.refused(r);
    this.stats.unmaps += r.unmapped ?? 0;
    return OK;
  }

  private firstMapping(domain: number): HostResult {
    const moves: [HostGroup, ViommuTarget][] = [];
    for (const g of this.groups.values()) {
      // The usual case without building the group's state (strict and lazy mode make every map a first one).
      const sole = firstMapSole(g.members, domain, this.holds);
      if (sole === 'none') continue;
      if (sole === 'sole') {
        if (g.current !== domain) moves.push([g, domain]);
        continue;
      }
      const plan = firstMapDecision(VfioViommu.state(g), domain, this.holds);
      if (!plan) continue;
      if ('refuse' in plan) {
        this.log(plan.refuse);
        return refuse('unsupp', plan.refuse);
      }
      moves.push([g, plan.host]);
    }
    // Each group left an empty place for it: nothing to unmap, nothing reachable changes.
    for (const [g, to] of moves) {
      const r = this.moveGroup(g, to);
      if (!r.ok)
        return { ...r, reason: `moving host group ${g.id} to domain ${domain} for its first mapping: ${r.reason}` };
    }
    return { ok: true };
  }

  detach(endpoint: number): HostResult {
    return this.attach(endpoint, 'blocked');
  }

  attach(endpoint: number, to: ViommuTarget): HostResult {
    const e = this.endpoints.get(endpoint);
    if (!e) return this.refused(refuse('noent', `endpoint ${endpoint} is not an assigned device behind this vIOMMU`));
    if (typeof to === 'number') {
      if (!this.domains.get(to)) return this.refused(refuse('noent', `domain ${to} does not exist`));
    } else if (to !== 'bypass' && to !== 'blocked')
      return this.refused(refuse('inval', `attach target ${String(to)} is not a domain id, 'bypass' or 'blocked'`));
    const g = e.group;
    const plan = attachDecision(VfioViommu.state(g), endpoint, to, this.holds);
    if ('refuse' in plan) {
      this.log(plan.refuse);
      return this.refused(refuse('unsupp', plan.refuse));
    }
    const r = this.moveGroup(g, plan.host);
    if (!r.ok) return this.refused({ ...r, reason: `attaching ${e.name} to ${describeTarget(to)}: ${r.reason}` });
    e.target = to;
    this.stats.attaches++;
    return { ok: true };
  }

  /** Puts an assigned device (opened with `viommu: true`) behind the vIOMMU as `endpoint`. */
  addEndpoint(endpoint: number, a: AssignedDevice, initial: 'bypass' | 'blocked' = 'bypass'): void {
    if (this.endpoints.has(endpoint))
      throw new VfioSetupError(`vIOMMU endpoint ${endpoint} is already ${this.endpoints.get(endpoint)!.name}`);
    if ([...this.endpoints.values()].some((e) => e.device === a))
      throw new VfioSetupError(`${a.host.name} is already behind the vIOMMU`);
    let g = this.groups.get(a.host.group);
    if (g && g.backend !== a.backend)
      throw new VfioSetupError(`${a.host.name}: host group ${g.id} is on the ${g.backend} backend, not ${a.backend}`);
    const fresh = !g;
    if (!g) {
      g = { id: a.host.group, backend: a.backend, members: [], current: 'bypass' };
      if (a.backend === 'legacy') {
        const c = a.group?.container;
        if (!c?.isolated)
          throw new VfioSetupError(
            `${a.host.name} was opened without a container of its own: open it with "viommu": true to put it behind the vIOMMU`,
          );
        g.port = new ContainerPort(c, g.id, dmaEntryLimit(c.dmaLimit), this.stats);
      } else {
        if (!a.ioas) throw new VfioSetupError(`${a.host.name} is not attached to an IOAS`);
        g.home = a.ioas;
      }
    }
    const e: Endpoint = { id: endpoint, name: a.host.name, target: initial, group: g, device: a };
    g.members.push(e);
    const r = this.moveGroup(g, this.hostFor(g));
    if (!r.ok) {
      g.members.pop();
      throw new VfioSetupError(`${a.host.name} cannot be put behind the vIOMMU: ${r.reason}`);
    }
    this.endpoints.set(endpoint, e);
    if (fresh) this.groups.set(g.id, g);
  }

  /** Takes a device from behind the vIOMMU, giving it back the 1:1 mapping of all RAM. */
  removeEndpoint(endpoint: number): void {
    const e = this.endpoints.get(endpoint);
    if (!e) return;
    const g = e.group;
    // The last member takes the group back to 1:1 while it is still a member (iommufd moves
    // the members' devices); otherwise the others decide where the group stays.
    const last = g.members.length === 1;
    if (!last) g.members.splice(g.members.indexOf(e), 1);
    const r = this.moveGroup(g, last ? 'bypass' : this.hostFor(g));
    if (!r.ok) this.log(`removing ${e.name}: ${r.reason}`);
    this.endpoints.delete(endpoint);
    if (last) {
      g.members.length = 0;
      this.groups.delete(g.id);
    }
  }

  /**
   * iommufd: where a device hot-added into host group `group` must attach, when the group is
   * behind the vIOMMU and not in bypass (a fresh attach elsewhere would be refused by the kernel).
   */
  groupJoin(group: number): GroupJoin | undefined {
    const g = this.groups.get(group);
    if (!g || g.backend !== 'iommufd' || g.current === 'bypass') return undefined;
    const ioas = this.ioasFor(g, g.current);
    return 'ok' in ioas ? undefined : { home: g.home!, attachId: ioas.id };
  }

  /** The endpoint registered for an assigned device, if any. */
  endpointOf(a: AssignedDevice): number | undefined {
    for (const e of this.endpoints.values()) if (e.device === a) return e.id;
    return undefined;
  }

  /** System reset: every endpoint back to bypass, every domain destroyed. */
  reset(): void {
    for (const e of this.endpoints.values()) e.target = 'bypass';
    for (const g of this.groups.values()) {
      const r = this.moveGroup(g, 'bypass');
      if (!r.ok) this.log(`reset: ${r.reason}`);
    }
    for (const d of [...this.domains.values()]) this.destroyDomain(d.id);
  }

  /** Releases everything: endpoints back to 1:1, domains, their IOASes, the blocked IOAS. */
  close(): void {
    for (const id of [...this.endpoints.keys()]) this.removeEndpoint(id);
    for (const d of [...this.domains.values()]) this.destroyDomain(d.id);
    this.domains.close();
    this.blockedIoas?.destroy();
    this.blockedIoas = undefined;
  }

  inspect(): ViommuInspect {
    const eps = [...this.endpoints.values()];
    return {
      domains: [...this.domains.values()].map((d) => ({
        id: d.id,
        endpoints: eps.filter((e) => e.target === d.id).map((e) => e.id),
        mappings: d.mappings.size,
        hostMappings: d.pieceCount,
        maps: d.stats.maps,
        unmaps: d.stats.unmaps,
        refused: d.stats.refused,
        orphaned: d.mappings.values().filter((m) => !m.pieces).length,
      })),
      endpoints: eps.map((e) => ({
        endpoint: e.id,
        device: e.name,
        group: e.group.id,
        backend: e.group.backend,
        target: describeTarget(e.target),
      })),
      groups: [...this.groups.values()].map((g) => ({
        group: g.id,
        backend: g.backend,
        members: g.members.map((m) => m.name),
        host: describeTarget(g.current),
      })),
      stats: { ...this.stats },
    };
  }

  // ---- moving a host group ----

  private moveGroup(g: HostGroup, to: ViommuTarget): HostResult {
    if (g.current === to) return { ok: true };
    const r = g.backend === 'legacy' ? this.moveLegacy(g, to) : this.moveIommufd(g, to);
    if (r.ok) {
      g.current = to;
      this.stats.moves++;
    }
    return r;
  }

  private moveLegacy(g: HostGroup, to: ViommuTarget): HostResult {
    const from = g.current;
    const plan = legacyMovePlan(from, to);
    const left = this.leaveLegacy(g, from);
    if (!left.ok) return left;
    const r = this.enterLegacy(g, to);
    if (!r.ok) {
      const back = this.enterLegacy(g, from);
      if (!back.ok) {
        g.current = 'blocked';
        const why = `${r.reason}; restoring ${describeTarget(from)} failed too (${back.reason}): host group ${g.id} can do no DMA now`;
        this.log(why);
        return refuse('devErr', why);
      }
      return r;
    }
    // An empty domain left or entered is no window: nothing was reachable on that side.
    if (plan.window && this.reaches(from) && this.reaches(to)) this.stats.unmappedWindows++;
    return { ok: true };
  }

  private leaveLegacy(g: HostGroup, from: ViommuTarget): HostResult {
    const port = g.port!;
    const c = port.container;
    try {
      if (from === 'bypass') c.detach();
      else if (typeof from === 'number') {
        const d = this.domains.get(from);
        const oneCall = c.canUnmapAll && port.entries > 0;
        const errors = d ? d.removeListener(port, !oneCall) : [];
        if (oneCall) {
          c.unmapAllRaw();
          port.entries = 0;
          this.stats.hostUnmaps++;
        }
        if (errors.length) throw errors[0];
      }
    } catch (e) {
      return refuse('devErr', `emptying ${port.name} failed: ${errorText(e)}`);
    }
    return { ok: true };
  }

  private enterLegacy(g: HostGroup, to: ViommuTarget): HostResult {
    const port = g.port!;
    if (to === 'blocked') return { ok: true };
    if (to === 'bypass') {
      try {
        port.container.attach(this.memory);
        return { ok: true };
      } catch (e) {
        port.container.detach();
        return refuse('devErr', `mapping all guest RAM into ${port.name} failed: ${errorText(e)}`);
      }
    }
    const d = this.domains.get(to);
    if (!d) return refuse('noent', `domain ${to} does not exist`);
    return d.addListener(port);
  }

  private ioasFor(g: HostGroup, t: ViommuTarget): IommufdIoas | Refusal {
    const fd = g.home!.iommufd;
    if (t === 'bypass') return g.home!;
    try {
      if (t === 'blocked') return (this.blockedIoas ??= new IommufdIoas(fd, native().iommuIoasAlloc(fd)));
    } catch (e) {
      return refuse('devErr', `IOMMU_IOAS_ALLOC failed: ${errorText(e)}`);
    }
    const have = this.ioasOf.get(t);
    if (have) return have.ioas;
    const d = this.domains.get(t);
    if (!d) return refuse('noent', `domain ${t} does not exist`);
    let ioas: IommufdIoas;
    try {
      ioas = new IommufdIoas(fd, native().iommuIoasAlloc(fd));
    } catch (e) {
      return refuse('devErr', `IOMMU_IOAS_ALLOC for domain ${t} failed: ${errorText(e)}`);
    }
    const port = new IoasPort(ioas, t, this.stats);
    const r = d.addListener(port);
    if (!r.ok) {
      ioas.destroy();
      return r;
    }
    this.ioasOf.set(t, port);
    return ioas;
  }

  private moveIommufd(g: HostGroup, to: ViommuTarget): HostResult {
    const target = this.ioasFor(g, to);
    if ('ok' in target) return target;
    const prev = this.ioasFor(g, g.current);
    const moved: Endpoint[] = [];
    // The first replace moves the whole group's page table; the others find it done.
    for (const m of g.members) {
      try {
        native().vfioDeviceAttachIommufdPt(m.device.device.fd, target.id);
        moved.push(m);
      } catch (e) {
        if (!('ok' in prev))
          for (const x of moved.reverse()) {
            try {
              native().vfioDeviceAttachIommufdPt(x.device.device.fd, prev.id);
            } catch {
              /* reported below */
            }
          }
        return refuse(
          'devErr',
          `VFIO_DEVICE_ATTACH_IOMMUFD_PT (replace) of ${m.name} to the IOAS of ${describeTarget(to)} failed: ${errorText(e)}`,
        );
      }
    }
    return { ok: true };
  }
}
