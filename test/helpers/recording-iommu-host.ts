// A TEST DOUBLE of the vIOMMU's host side (IommuHost): it records every call and keeps the state a
// real host side would have (domains, endpoint targets, mappings) so tests and the fuzzer can check
// the device against it, and it refuses what it is told to (a mapping limit, a refusal hook). It
// maps nothing for DMA and touches no kernel interface: it stands in for the host side only where
// that is what is being tested, never in a running machine.
import {
  VIRTIO_IOMMU_S_INVAL,
  VIRTIO_IOMMU_S_NOMEM,
  type IommuHost,
  type IommuMapFlags,
  type IommuResult,
  type IommuTarget,
} from '../../hw/virtio/iommu-host.js';

export interface RecordedMapping {
  iova: number;
  gpa: number;
  size: number;
  flags: IommuMapFlags;
}

export class RecordingIommuHost implements IommuHost {
  readonly calls: string[] = [];
  readonly domains = new Map<number, { bypass: boolean; mappings: Map<number, RecordedMapping> }>();
  readonly endpoints = new Map<number, IommuTarget>();
  /** Errors of the device's use of the interface (an order the host cannot follow). */
  readonly violations: string[] = [];
  /** Most mappings over all domains before map() refuses with S_NOMEM (a host DMA-entry limit). */
  maxMappings = Infinity;
  /** Refuses a call when it returns a result (tests of the device's handling of refusals). */
  refuse: ((call: string) => IommuResult) | undefined;
  /** Keep `calls` (off for long fuzz runs). */
  record = true;
  private mapped = 0;

  constructor(private readonly reserved: readonly { start: number; end: number }[] = []) {}

  get mappingCount(): number {
    return this.mapped;
  }

  private log(c: string): IommuResult {
    if (this.record) this.calls.push(c);
    return this.refuse?.(c);
  }

  createDomain(domain: number, opts: { bypass: boolean }): IommuResult {
    const r = this.log(`create ${domain}${opts.bypass ? ' bypass' : ''}`);
    if (r) return r;
    if (this.domains.has(domain)) this.violations.push(`domain ${domain} created twice`);
    this.domains.set(domain, { bypass: opts.bypass, mappings: new Map() });
    return undefined;
  }

  destroyDomain(domain: number): void {
    this.log(`destroy ${domain}`);
    const d = this.domains.get(domain);
    if (!d) return void this.violations.push(`destroy of unknown domain ${domain}`);
    for (const [ep, t] of this.endpoints)
      if (typeof t === 'object' && t.domain === domain)
        this.violations.push(`domain ${domain} destroyed with endpoint ${ep} attached`);
    this.mapped -= d.mappings.size;
    this.domains.delete(domain);
  }

  attach(endpoint: number, target: IommuTarget): IommuResult {
    const r = this.log(`attach ${endpoint} ${typeof target === 'object' ? target.domain : target}`);
    if (r) return r;
    if (typeof target === 'object' && !this.domains.has(target.domain)) {
      this.violations.push(`attach of ${endpoint} to unknown domain ${target.domain}`);
      return { status: VIRTIO_IOMMU_S_INVAL, reason: 'no such domain' };
    }
    this.endpoints.set(endpoint, target);
    return undefined;
  }

  map(domain: number, iova: number, gpa: number, size: number, flags: IommuMapFlags): IommuResult {
    const r = this.log(`map ${domain} 0x${iova.toString(16)}+0x${size.toString(16)} -> 0x${gpa.toString(16)}`);
    if (r) return r;
    const d = this.domains.get(domain);
    if (!d) {
      this.violations.push(`map in unknown domain ${domain}`);
      return { status: VIRTIO_IOMMU_S_INVAL, reason: 'no such domain' };
    }
    if (d.bypass) this.violations.push(`map in bypass domain ${domain}`);
    if (this.mapped >= this.maxMappings)
      return {
        status: VIRTIO_IOMMU_S_NOMEM,
        reason: `the host's limit of ${this.maxMappings} DMA mappings is reached`,
      };
    for (const m of d.mappings.values())
      if (iova < m.iova + m.size && m.iova < iova + size)
        this.violations.push(`map 0x${iova.toString(16)} overlaps 0x${m.iova.toString(16)} in domain ${domain}`);
    d.mappings.set(iova, { iova, gpa, size, flags });
    this.mapped++;
    return undefined;
  }

  unmap(domain: number, iova: number, size: number): void {
    this.log(`unmap ${domain} 0x${iova.toString(16)}+0x${size.toString(16)}`);
    const d = this.domains.get(domain);
    const hit = [...(d?.mappings.values() ?? [])].filter((m) => m.iova < iova + size && iova < m.iova + m.size);
    // The device names a range that starts at a mapping and ends with one, and splits none.
    const whole = hit.filter((m) => m.iova >= iova && m.iova + m.size <= iova + size);
    if (
      !d ||
      !hit.length ||
      whole.length !== hit.length ||
      !hit.some((m) => m.iova === iova) ||
      !hit.some((m) => m.iova + m.size === iova + size)
    )
      return void this.violations.push(
        `unmap of 0x${iova.toString(16)}+0x${size.toString(16)} in ${domain} is not a range of whole mappings`,
      );
    for (const m of whole) d.mappings.delete(m.iova);
    this.mapped -= whole.length;
  }

  reservedRegions(): readonly { start: number; end: number }[] {
    return this.reserved;
  }
}
