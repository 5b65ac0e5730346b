// virtio-iommu (virtio 1.2 §5.13; device 23, PCI 1af4:1057): the guest's side of a vIOMMU. The
// request queue carries ATTACH, DETACH, MAP, UNMAP and PROBE; this model checks each against the
// spec, keeps the guest's domains and their mappings (an interval map per domain), and has the
// host side (IommuHost, hw/virtio/iommu-host.ts) make them true for DMA. A host refusal becomes
// the request's status and one log line, and the model's state stays as it was.
//
// Domains exist while an endpoint is attached (created by the first ATTACH, destroyed with their
// mappings when the last endpoint leaves), as QEMU keeps them. An endpoint attached to no domain
// bypasses translation while config.bypass is 1 (its value at reset, as QEMU's boot-bypass) and
// has no DMA when the driver sets it to 0 (VIRTIO_IOMMU_F_BYPASS_CONFIG). A reset (virtio or
// system) detaches every endpoint back to bypass and destroys every domain.
import { guestEvents } from '../pci.js';
import type { VirtioContext, VirtioDevice } from './device.js';
import { emptyChain, VirtqueueError, type SplitVirtqueue, type VirtqChain } from './virtqueue.js';
import { IntervalMap } from './interval-map.js';
import {
  VIRTIO_IOMMU_S_DEVERR,
  VIRTIO_IOMMU_S_INVAL,
  VIRTIO_IOMMU_S_NOENT,
  VIRTIO_IOMMU_S_NOMEM,
  VIRTIO_IOMMU_S_OK,
  VIRTIO_IOMMU_S_RANGE,
  VIRTIO_IOMMU_S_UNSUPP,
  type IommuHost,
  type IommuMapFlags,
  type IommuResult,
  type IommuTarget,
} from './iommu-host.js';

export const VIRTIO_ID_IOMMU = 23;

// Feature bits (§5.13.3).
export const VIRTIO_IOMMU_F_INPUT_RANGE = 1n << 0n,
  VIRTIO_IOMMU_F_DOMAIN_RANGE = 1n << 1n,
  VIRTIO_IOMMU_F_MAP_UNMAP = 1n << 2n,
  VIRTIO_IOMMU_F_BYPASS = 1n << 3n,
  VIRTIO_IOMMU_F_PROBE = 1n << 4n,
  VIRTIO_IOMMU_F_MMIO = 1n << 5n,
  VIRTIO_IOMMU_F_BYPASS_CONFIG = 1n << 6n;

// Requests (§5.13.6).
export const VIRTIO_IOMMU_T_ATTACH = 1,
  VIRTIO_IOMMU_T_DETACH = 2,
  VIRTIO_IOMMU_T_MAP = 3,
  VIRTIO_IOMMU_T_UNMAP = 4,
  VIRTIO_IOMMU_T_PROBE = 5;
export const VIRTIO_IOMMU_ATTACH_F_BYPASS = 1;
export const VIRTIO_IOMMU_MAP_F_READ = 1,
  VIRTIO_IOMMU_MAP_F_WRITE = 2,
  VIRTIO_IOMMU_MAP_F_MMIO = 4;
export const VIRTIO_IOMMU_PROBE_T_NONE = 0,
  VIRTIO_IOMMU_PROBE_T_RESV_MEM = 1;
export const VIRTIO_IOMMU_RESV_MEM_T_RESERVED = 0,
  VIRTIO_IOMMU_RESV_MEM_T_MSI = 1;

/** Bytes of each request the driver writes (head included, tail excluded). */
export const REQUEST_SIZE: Readonly<Record<number, number>> = {
  [VIRTIO_IOMMU_T_ATTACH]: 20,
  [VIRTIO_IOMMU_T_DETACH]: 20,
  [VIRTIO_IOMMU_T_MAP]: 36,
  [VIRTIO_IOMMU_T_UNMAP]: 28,
  [VIRTIO_IOMMU_T_PROBE]: 72,
};
export const VIRTIO_IOMMU_CONFIG_SIZE = 40;
/** The x86 MSI window: a hardware MSI region every endpoint's DMA reaches untranslated. */
export const X86_MSI_WINDOW = { start: 0xfee00000, end: 0xfeefffff };
const RESV_MEM_PROP_LEN = 20;

export interface VirtioIommuOptions {
  /** Makes the guest's domains and mappings real for DMA. */
  host: IommuHost;
  /** The endpoints (PCI requester IDs) behind this IOMMU at start; more come with addEndpoint. */
  endpoints?: Iterable<number>;
  /** Page sizes the IOMMU supports (default: every power of two from 4 KiB). */
  pageSizeMask?: bigint;
  /** IOVA range, inclusive (default 48 bits: x86's 4-level page tables). */
  inputRange?: { start: number; end: number };
  /** Domain IDs, inclusive. */
  domainRange?: { start: number; end: number };
  /** Bytes of PROBE properties the driver gives room for. */
  probeSize?: number;
  /** Most mappings the device keeps over all domains (beyond: S_NOMEM). */
  maxMappings?: number;
  /** Name in log lines. */
  name?: string;
}

interface Domain {
  bypass: boolean;
  endpoints: Set<number>;
  mappings: IntervalMap<{ gpa: number; flags: number }>;
}

/** Bytes of a request parsed (the largest fixed part, PROBE's, fits). */
const REQ_SCRATCH = 128;
const REQUEST_NAMES: readonly string[] = ['?', 'attach', 'detach', 'map', 'unmap', 'probe'];

/** The little-endian u64 at `off` as a number, or -1 when it is 2^53 or more. */
function u53(v: DataView, off: number): number {
  const hi = v.getUint32(off + 4, true);
  return hi >= 2 ** 21 ? -1 : hi * 2 ** 32 + v.getUint32(off, true);
}

/** The access of a MAP's READ and WRITE flags (index: flags & 3), one shared object each. */
const MAP_PERMS: readonly IommuMapFlags[] = [0, 1, 2, 3].map((f) =>
  Object.freeze({ read: (f & VIRTIO_IOMMU_MAP_F_READ) !== 0, write: (f & VIRTIO_IOMMU_MAP_F_WRITE) !== 0 }),
);

const targetKey = (t: IommuTarget) => (typeof t === 'object' ? `d${t.domain}` : t);

/** What inspect() and QMP show. */
export interface VirtioIommuState {
  bypass: boolean;
  domains: { id: number; bypass: boolean; endpoints: number[]; mappings: number }[];
  requests: Record<string, number>;
  refused: number;
}

export class VirtioIommu implements VirtioDevice {
  readonly deviceId = VIRTIO_ID_IOMMU;
  readonly features =
    VIRTIO_IOMMU_F_INPUT_RANGE |
    VIRTIO_IOMMU_F_DOMAIN_RANGE |
    VIRTIO_IOMMU_F_MAP_UNMAP |
    VIRTIO_IOMMU_F_BYPASS_CONFIG |
    VIRTIO_IOMMU_F_PROBE;
  /** requestq, eventq. */
  readonly queueSizes = [256, 64];
  readonly configSize = VIRTIO_IOMMU_CONFIG_SIZE;
  readonly pageSizeMask: bigint;
  readonly inputRange: { start: number; end: number };
  readonly domainRange: { start: number; end: number };
  readonly probeSize: number;
  readonly maxMappings: number;
  private readonly name: string;
  private readonly host: IommuHost;
  private readonly endpointIds = new Set<number>();
  /** Endpoint → the domain it is attached to. */
  private readonly attached = new Map<number, number>();
  private readonly domains = new Map<number, Domain>();
  /** What the host was last told of each endpoint (absent: bypass, the host's start). */
  private readonly told = new Map<number, string>();
  private bypass = 1;
  private mappingCount = 0;
  private ctx: VirtioContext | undefined;
  /** Requests by type (REQUEST_NAMES' index; the last: unknown types). */
  private readonly requestCounts = new Array<number>(REQUEST_NAMES.length + 1).fill(0);
  private refusedCount = 0;
  // Scratch for parsing a request and writing its tail: no allocation per request.
  private readonly reqBytes = new Uint8Array(REQ_SCRATCH);
  private readonly reqView = new DataView(this.reqBytes.buffer);
  private readonly tail = new Uint8Array(4);
  /** The chain being answered (each request is answered before the next is taken). */
  private readonly chain = emptyChain();

  constructor(o: VirtioIommuOptions) {
    this.host = o.host;
    this.name = o.name ?? 'virtio-iommu';
    for (const e of o.endpoints ?? []) this.endpointIds.add(e);
    this.pageSizeMask = o.pageSizeMask ?? BigInt.asUintN(64, ~0xfffn);
    this.inputRange = o.inputRange ?? { start: 0, end: 2 ** 48 - 1 };
    this.domainRange = o.domainRange ?? { start: 0, end: 0xffffffff };
    this.probeSize = o.probeSize ?? 512;
    this.maxMappings = o.maxMappings ?? 1 << 20;
    if (this.pageSizeMask === 0n) throw new RangeError(`${this.name}: page size mask is empty`);
    this.granule = Number(this.pageSizeMask & -this.pageSizeMask);
    if (this.inputRange.end >= 2 ** 53 || this.inputRange.start > this.inputRange.end)
      throw new RangeError(`${this.name}: input range must be inclusive and below 2^53`);
  }

  /** The smallest page the IOMMU maps: alignment of every mapping. */
  readonly granule: number;

  // --- endpoints -----------------------------------------------------------------------------------

  /** The endpoints behind the IOMMU (for the VIOT). */
  get endpoints(): readonly number[] {
    return [...this.endpointIds];
  }

  hasEndpoint(id: number): boolean {
    return this.endpointIds.has(id);
  }

  /** A device behind the IOMMU arrived (hot-plug): it starts as unattached endpoints do. */
  addEndpoint(id: number): void {
    this.endpointIds.add(id);
    if (!this.bypass) this.tell(id, 'blocked');
  }

  /** A device behind the IOMMU leaves: detached first (its domain goes if it was the last one in it). */
  removeEndpoint(id: number): void {
    const d = this.attached.get(id);
    if (d !== undefined) {
      try {
        this.host.attach(id, 'blocked');
      } catch (e) {
        this.logHost(`detaching endpoint ${id} as it leaves`, e);
      }
      this.leave(id, d);
    }
    this.endpointIds.delete(id);
    this.told.delete(id);
  }

  /** Tells the host an endpoint's new target unless it knows it; the host's refusal is returned. */
  private tell(ep: number, t: IommuTarget): IommuResult {
    const k = targetKey(t);
    if ((this.told.get(ep) ?? 'bypass') === k) return undefined;
    const r = this.host.attach(ep, t);
    if (!r) this.told.set(ep, k);
    return r;
  }

  /** Where an endpoint attached to no domain goes. */
  private get unattachedTarget(): IommuTarget {
    return this.bypass ? 'bypass' : 'blocked';
  }

  // --- config ------------------------------------------------------------------------------------

  private configBytes(): Uint8Array {
    const b = new Uint8Array(VIRTIO_IOMMU_CONFIG_SIZE);
    const v = new DataView(b.buffer);
    v.setBigUint64(0, this.pageSizeMask, true);
    v.setBigUint64(8, BigInt(this.inputRange.start), true);
    v.setBigUint64(16, BigInt(this.inputRange.end), true);
    v.setUint32(24, this.domainRange.start, true);
    v.setUint32(28, this.domainRange.end, true);
    v.setUint32(32, this.probeSize, true);
    b[36] = this.bypass;
    return b;
  }

  readConfig(offset: number, size: number): number {
    const b = this.configBytes();
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + (b[offset + i] ?? 0);
    return v;
  }

  writeConfig(offset: number, size: number, value: number): void {
    // Only `bypass` is the driver's, and only with VIRTIO_IOMMU_F_BYPASS_CONFIG (§5.13.4).
    if (offset !== 36 || size !== 1 || !this.ctx || !(this.ctx.features & VIRTIO_IOMMU_F_BYPASS_CONFIG)) return;
    const on = value & 0xff ? 1 : 0;
    if (on === this.bypass) return;
    this.bypass = on;
    for (const ep of this.endpointIds)
      if (!this.attached.has(ep)) this.refused(this.tell(ep, this.unattachedTarget), `bypass ${on} for endpoint ${ep}`);
  }

  // --- lifecycle -----------------------------------------------------------------------------------

  activate(ctx: VirtioContext): void {
    this.ctx = ctx;
  }

  reset(): void {
    this.ctx = undefined;
    this.bypass = 1;
    for (const ep of this.endpointIds) this.refused(this.tell(ep, 'bypass'), `reset of endpoint ${ep} to bypass`);
    this.attached.clear();
    for (const id of [...this.domains.keys()]) this.dropDomain(id);
  }

  private dropDomain(id: number): void {
    const d = this.domains.get(id);
    if (!d) return;
    this.mappingCount -= d.mappings.size;
    this.domains.delete(id);
    try {
      this.host.destroyDomain(id);
    } catch (e) {
      this.logHost(`destroying domain ${id}`, e);
    }
  }

  inspect(): VirtioIommuState {
    return {
      bypass: this.bypass === 1,
      domains: [...this.domains].map(([id, d]) => ({
        id,
        bypass: d.bypass,
        endpoints: [...d.endpoints],
        mappings: d.mappings.size,
      })),
      requests: Object.fromEntries(
        this.requestCounts.flatMap((n, t) => (n ? [[REQUEST_NAMES[t] ?? 'unknown', n]] : [])),
      ),
      refused: this.refusedCount,
    };
  }

  /** Mappings over all domains (tests, the fuzzer). */
  get mappings(): number {
    return this.mappingCount;
  }

  // --- the request queue ---------------------------------------------------------------------------

  queueNotify(q: number): void {
    const ctx = this.ctx;
    // The event queue only holds buffers for fault reports, which this device does not send.
    if (q !== 0 || !ctx) return;
    const vq = ctx.queues[0];
    if (!vq) return;
    let pushed = false;
    do {
      vq.setNotification(false);
      while (vq.popInto(this.chain)) {
        this.handle(vq, this.chain);
        pushed = true;
      }
    } while (vq.setNotification(true));
    if (pushed) ctx.interruptQueue(0);
  }

  private handle(vq: SplitVirtqueue, chain: VirtqChain): void {
    // Without room for the head or the tail the request cannot be answered: the driver broke the protocol.
    if (chain.readableLen < 4 || chain.writableLen < 4)
      throw new VirtqueueError(
        `request with ${chain.readableLen} bytes to read and ${chain.writableLen} to write (needs 4 and 4)`,
      );
    const len = vq.readChainInto(chain, this.reqBytes);
    const type = this.reqBytes[0]!;
    const known = type < REQUEST_NAMES.length;
    this.requestCounts[known ? type : REQUEST_NAMES.length]!++;
    let status: number;
    let props: Uint8Array | undefined;
    const size = REQUEST_SIZE[type];
    if (size === undefined) status = VIRTIO_IOMMU_S_UNSUPP;
    else if (len < size) status = VIRTIO_IOMMU_S_INVAL;
    else {
      const v = this.reqView;
      try {
        switch (type) {
          case VIRTIO_IOMMU_T_ATTACH:
            status = this.attach(v.getUint32(4, true), v.getUint32(8, true), v.getUint32(12, true));
            break;
          case VIRTIO_IOMMU_T_DETACH:
            status = this.detach(v.getUint32(4, true), v.getUint32(8, true));
            break;
          case VIRTIO_IOMMU_T_MAP: {
            // Addresses below 2^53 (every real request) are parsed as numbers; others take the bigint path.
            const start = u53(v, 8),
              end = u53(v, 16),
              phys = u53(v, 24);
            const domain = v.getUint32(4, true),
              flags = v.getUint32(32, true);
            status =
              start >= 0 && end >= 0 && phys >= 0
                ? this.mapNumbers(domain, start, end, phys, flags)
                : this.map(domain, v.getBigUint64(8, true), v.getBigUint64(16, true), v.getBigUint64(24, true), flags);
            break;
          }
          case VIRTIO_IOMMU_T_UNMAP: {
            const start = u53(v, 8),
              end = u53(v, 16);
            status =
              start >= 0 && end >= 0
                ? this.unmapNumbers(v.getUint32(4, true), start, end)
                : this.unmap(v.getUint32(4, true), v.getBigUint64(8, true), v.getBigUint64(16, true));
            break;
          }
          default: {
            const r = this.probe(v.getUint32(4, true));
            status = typeof r === 'number' ? r : VIRTIO_IOMMU_S_OK;
            if (typeof r !== 'number') props = r;
          }
        }
      } catch (e) {
        // The host side failed rather than refused: the guest hears of a device error.
        this.logHost(`${REQUEST_NAMES[type] ?? 'unknown'} request`, e);
        status = VIRTIO_IOMMU_S_DEVERR;
      }
    }
    // The tail ends the writable part: after probe_size bytes of properties for PROBE, first otherwise.
    let written: number;
    if (type === VIRTIO_IOMMU_T_PROBE) {
      const need = this.probeSize + 4;
      if (chain.writableLen < need) {
        // No room for the properties: the status goes where the driver's tail is, at the end.
        // (Zeros before it, so what the used length covers was written; it is below probe_size + 4 bytes.)
        const out = new Uint8Array(chain.writableLen);
        out[out.length - 4] = status === VIRTIO_IOMMU_S_OK ? VIRTIO_IOMMU_S_INVAL : status;
        written = vq.writeChain(chain, out);
      } else {
        const out = new Uint8Array(need);
        if (props) out.set(props);
        out[this.probeSize] = status;
        written = vq.writeChain(chain, out);
      }
    } else {
      const tail = this.tail;
      tail[0] = status;
      written = vq.writeChain(chain, tail);
    }
    vq.push(chain.head, written);
  }

  /** A refusal from the host: logged once per reason, counted; its status returned. */
  private refused(r: IommuResult, what: string): number {
    if (!r) return VIRTIO_IOMMU_S_OK;
    this.refusedCount++;
    guestEvents.report('error', `${this.name}:refused:${r.reason}`, () => `${this.name}: ${what} refused: ${r.reason}`);
    return r.status;
  }

  private logHost(what: string, e: unknown): void {
    guestEvents.report(
      'error',
      `${this.name}:host:${what}`,
      () => `${this.name}: host side failed ${what}: ${(e as Error).message}`,
    );
  }

  private attach(domain: number, ep: number, flags: number): number {
    if (!this.endpointIds.has(ep)) return VIRTIO_IOMMU_S_NOENT;
    if (domain < this.domainRange.start || domain > this.domainRange.end) return VIRTIO_IOMMU_S_RANGE;
    if (flags & ~VIRTIO_IOMMU_ATTACH_F_BYPASS) return VIRTIO_IOMMU_S_INVAL;
    const bypass = (flags & VIRTIO_IOMMU_ATTACH_F_BYPASS) !== 0;
    if (bypass && !(this.ctx!.features & VIRTIO_IOMMU_F_BYPASS_CONFIG)) return VIRTIO_IOMMU_S_INVAL;
    const existing = this.domains.get(domain);
    if (existing && existing.bypass !== bypass) return VIRTIO_IOMMU_S_INVAL;
    const from = this.attached.get(ep);
    if (from === domain) return VIRTIO_IOMMU_S_OK;
    if (!existing) {
      const r = this.host.createDomain(domain, { bypass });
      if (r) return this.refused(r, `creating domain ${domain}`);
    }
    let r: IommuResult;
    try {
      r = this.tell(ep, { domain });
    } catch (e) {
      if (!existing) this.host.destroyDomain(domain); // nothing half-made stays behind
      throw e;
    }
    if (r) {
      if (!existing) this.host.destroyDomain(domain);
      return this.refused(r, `attaching endpoint ${ep} to domain ${domain}`);
    }
    const d = existing ?? { bypass, endpoints: new Set<number>(), mappings: new IntervalMap() };
    this.domains.set(domain, d);
    if (from !== undefined) this.leave(ep, from);
    d.endpoints.add(ep);
    this.attached.set(ep, domain);
    return VIRTIO_IOMMU_S_OK;
  }

  /** The endpoint is no longer in domain `id` (the host already knows where it goes); an empty domain goes. */
  private leave(ep: number, id: number): void {
    this.attached.delete(ep);
    const d = this.domains.get(id);
    if (!d) return;
    d.endpoints.delete(ep);
    if (d.endpoints.size === 0) this.dropDomain(id);
  }

  private detach(domain: number, ep: number): number {
    if (!this.endpointIds.has(ep)) return VIRTIO_IOMMU_S_NOENT;
    if (!this.domains.has(domain)) return VIRTIO_IOMMU_S_NOENT;
    if (this.attached.get(ep) !== domain) return VIRTIO_IOMMU_S_INVAL;
    const r = this.tell(ep, this.unattachedTarget);
    if (r) return this.refused(r, `detaching endpoint ${ep} from domain ${domain}`);
    this.leave(ep, domain);
    return VIRTIO_IOMMU_S_OK;
  }

  /** MAP with every address below 2^53: the checks of map(), in the same order, on numbers. */
  private mapNumbers(domain: number, s: number, e: number, phys: number, flags: number): number {
    const d = this.domains.get(domain);
    if (!d) return VIRTIO_IOMMU_S_NOENT;
    if (flags & ~(VIRTIO_IOMMU_MAP_F_READ | VIRTIO_IOMMU_MAP_F_WRITE | VIRTIO_IOMMU_MAP_F_MMIO))
      return VIRTIO_IOMMU_S_INVAL;
    if (flags & VIRTIO_IOMMU_MAP_F_MMIO) return VIRTIO_IOMMU_S_INVAL;
    if (s > e) return VIRTIO_IOMMU_S_INVAL;
    if (d.bypass) return VIRTIO_IOMMU_S_INVAL;
    if (s < this.inputRange.start || e > this.inputRange.end) return VIRTIO_IOMMU_S_RANGE;
    const size = e - s + 1;
    if (phys + size > 2 ** 53) return VIRTIO_IOMMU_S_RANGE;
    const g = this.granule;
    if (s % g || (e + 1) % g || phys % g) return VIRTIO_IOMMU_S_RANGE;
    return this.mapChecked(d, domain, s, e, phys, size, flags);
  }

  private map(domain: number, start: bigint, end: bigint, phys: bigint, flags: number): number {
    const d = this.domains.get(domain);
    if (!d) return VIRTIO_IOMMU_S_NOENT;
    if (flags & ~(VIRTIO_IOMMU_MAP_F_READ | VIRTIO_IOMMU_MAP_F_WRITE | VIRTIO_IOMMU_MAP_F_MMIO))
      return VIRTIO_IOMMU_S_INVAL;
    if (flags & VIRTIO_IOMMU_MAP_F_MMIO) return VIRTIO_IOMMU_S_INVAL; // VIRTIO_IOMMU_F_MMIO is not offered
    if (start > end) return VIRTIO_IOMMU_S_INVAL;
    if (d.bypass) return VIRTIO_IOMMU_S_INVAL;
    if (start < BigInt(this.inputRange.start) || end > BigInt(this.inputRange.end)) return VIRTIO_IOMMU_S_RANGE;
    const size = end - start + 1n;
    if (phys + size > 2n ** 53n) return VIRTIO_IOMMU_S_RANGE;
    const g = BigInt(this.granule) - 1n;
    if (start & g || (end + 1n) & g || phys & g) return VIRTIO_IOMMU_S_RANGE;
    return this.mapChecked(d, domain, Number(start), Number(end), Number(phys), Number(size), flags);
  }

  /** The rest of a MAP whose addresses and alignment passed: overlap, the mapping limit, the host. */
  private mapChecked(
    d: Domain,
    domain: number,
    s: number,
    e: number,
    phys: number,
    size: number,
    flags: number,
  ): number {
    if (d.mappings.overlaps(s, e)) return VIRTIO_IOMMU_S_INVAL;
    if (this.mappingCount >= this.maxMappings)
      return this.refused(
        { status: VIRTIO_IOMMU_S_NOMEM, reason: `the device's limit of ${this.maxMappings} mappings is reached` },
        `mapping in domain ${domain}`,
      );
    const r = this.host.map(domain, s, phys, size, MAP_PERMS[flags & 3]!);
    if (r) return this.refused(r, `mapping 0x${s.toString(16)}+0x${size.toString(16)} in domain ${domain}`);
    d.mappings.insert(s, e, { gpa: phys, flags });
    this.mappingCount++;
    return VIRTIO_IOMMU_S_OK;
  }

  private unmap(domain: number, start: bigint, end: bigint): number {
    const d = this.domains.get(domain);
    if (!d) return VIRTIO_IOMMU_S_NOENT;
    if (start > end) return VIRTIO_IOMMU_S_INVAL;
    if (d.bypass) return VIRTIO_IOMMU_S_INVAL;
    // Nothing lies beyond the input range, so a range reaching past it (or past 2^53) is cut there.
    const top = BigInt(this.inputRange.end);
    if (start > top) return VIRTIO_IOMMU_S_OK;
    return this.unmapRange(d, domain, Number(start), Number(end > top ? top : end));
  }

  /** UNMAP with both ends below 2^53: the checks of unmap(), on numbers. */
  private unmapNumbers(domain: number, start: number, end: number): number {
    const d = this.domains.get(domain);
    if (!d) return VIRTIO_IOMMU_S_NOENT;
    if (start > end) return VIRTIO_IOMMU_S_INVAL;
    if (d.bypass) return VIRTIO_IOMMU_S_INVAL;
    const top = this.inputRange.end;
    if (start > top) return VIRTIO_IOMMU_S_OK;
    return this.unmapRange(d, domain, start, end > top ? top : end);
  }

  /** Removes the mappings wholly inside [s, e] (inclusive, within the input range), none if one straddles it. */
  private unmapRange(d: Domain, domain: number, s: number, e: number): number {
    const hits = d.mappings.intersecting(s, e);
    if (!hits.length) return VIRTIO_IOMMU_S_OK;
    // A mapping the range would split stays whole, and so does every other (§5.13.6.7). Only
    // the first and the last can reach past the range.
    if (hits[0]!.start < s || hits[hits.length - 1]!.end > e) return VIRTIO_IOMMU_S_RANGE;
    d.mappings.removeRun(hits[0]!.start, hits.length);
    this.mappingCount -= hits.length;
    // One host call for all of them (the host unmaps what lies wholly inside, as the guest's do).
    const first = hits[0]!.start,
      last = hits[hits.length - 1]!.end;
    try {
      this.host.unmap(domain, first, last - first + 1);
    } catch (err) {
      this.logHost(`unmapping 0x${first.toString(16)}..0x${last.toString(16)} in domain ${domain}`, err);
    }
    return VIRTIO_IOMMU_S_OK;
  }

  /** PROBE: the endpoint's reserved regions — the MSI window, then the host's — as RESV_MEM properties. */
  private probe(ep: number): number | Uint8Array {
    if (!this.endpointIds.has(ep)) return VIRTIO_IOMMU_S_NOENT;
    const out = new Uint8Array(this.probeSize);
    const v = new DataView(out.buffer);
    const regions = [
      { subtype: VIRTIO_IOMMU_RESV_MEM_T_MSI, ...X86_MSI_WINDOW },
      ...(this.host.reservedRegions?.(ep) ?? []).map((r) => ({ subtype: VIRTIO_IOMMU_RESV_MEM_T_RESERVED, ...r })),
    ];
    let at = 0;
    for (const r of regions) {
      // The list ends with a zero header (type NONE), so room for one must stay.
      if (at + 4 + RESV_MEM_PROP_LEN + 4 > this.probeSize) {
        guestEvents.report(
          'error',
          `${this.name}:probe-full`,
          () => `${this.name}: reserved regions do not fit probe_size ${this.probeSize}; the rest are not reported`,
        );
        break;
      }
      v.setUint16(at, VIRTIO_IOMMU_PROBE_T_RESV_MEM, true);
      v.setUint16(at + 2, RESV_MEM_PROP_LEN, true);
      out[at + 4] = r.subtype;
      v.setBigUint64(at + 8, BigInt(r.start), true);
      v.setBigUint64(at + 16, BigInt(r.end), true);
      at += 4 + RESV_MEM_PROP_LEN;
    }
    return out;
  }
}
