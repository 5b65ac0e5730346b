// Where an assigned device's BARs and capabilities are, read from its config space and VFIO's
// region info: which pieces of a BAR can be mmap'd (sparse areas, minus the MSI-X table's pages),
// and where the MSI-X, MSI and power-management capabilities sit.
import { PCI_CAPABILITY_LIST, PCI_STATUS, PCI_STATUS_CAP_LIST, type BarType } from './pci.js';

export const PAGE = 4096;
const CAP_ID_PM = 0x01,
  CAP_ID_MSI = 0x05,
  CAP_ID_MSIX = 0x11;

/** Largest ROM image taken from a romfile (PCI allows up to 16 MiB). */
export const ROM_MAX = 16 * 2 ** 20;

export interface BarLayout {
  index: number;
  type: BarType;
  prefetchable: boolean;
  size: number;
  virtualSize: number;
  mmaps: { offset: number; size: number }[];
}

export interface MsixLayout {
  capOffset: number;
  vectors: number;
  tableBar: number;
  tableOffset: number;
  pbaBar: number;
  pbaOffset: number;
}

/** Where the mmap'd pieces of a BAR go: sparse areas (or all), minus the MSI-X page hole. */
export function barMmapRanges(
  size: number,
  sparse: { offset: number; size: number }[] | undefined,
  hole: { start: number; end: number } | undefined,
): { offset: number; size: number }[] {
  const areas = sparse ?? [{ offset: 0, size }];
  const out: { offset: number; size: number }[] = [];
  for (const a of areas) {
    let pieces = [{ start: a.offset, end: a.offset + a.size }];
    if (hole)
      pieces = pieces.flatMap((p) => [
        { start: p.start, end: Math.min(p.end, hole.start) },
        { start: Math.max(p.start, hole.end), end: p.end },
      ]);
    for (const p of pieces) {
      const start = Math.ceil(p.start / PAGE) * PAGE,
        end = Math.min(Math.floor(p.end / PAGE) * PAGE, size);
      if (end > start) out.push({ offset: start, size: end - start });
    }
  }
  return out;
}

/** QEMU's MSI-X hole: [table start rounded down to a page, table end rounded up). */
export function msixHole(m: MsixLayout): { start: number; end: number } {
  return {
    start: Math.floor(m.tableOffset / PAGE) * PAGE,
    end: Math.ceil((m.tableOffset + m.vectors * 16) / PAGE) * PAGE,
  };
}

/** The capabilities tsvmm emulates or follows, found by walking the capability list. */
export interface DeviceCapabilities {
  msix?: MsixLayout;
  msiCapOffset?: number;
  /** Power management: vfio-pci turns the BARs off (mmaps included) in D3hot. */
  pmCapOffset?: number;
}

export function findCapabilities(config: Uint8Array): DeviceCapabilities {
  const found: DeviceCapabilities = {};
  if (!(config[PCI_STATUS]! & PCI_STATUS_CAP_LIST)) return found;
  const seen = new Set<number>();
  for (let p = config[PCI_CAPABILITY_LIST]! & 0xfc; p >= 0x40 && !seen.has(p); p = config[p + 1]! & 0xfc) {
    seen.add(p);
    const id = config[p]!;
    const ctrl = config[p + 2]! | (config[p + 3]! << 8);
    if (id === CAP_ID_MSIX) {
      const v = new DataView(config.buffer, config.byteOffset, config.byteLength);
      const table = v.getUint32(p + 4, true),
        pba = v.getUint32(p + 8, true);
      found.msix = {
        capOffset: p,
        vectors: (ctrl & 0x7ff) + 1,
        tableBar: table & 7,
        tableOffset: table & ~7,
        pbaBar: pba & 7,
        pbaOffset: pba & ~7,
      };
    } else if (id === CAP_ID_MSI) {
      found.msiCapOffset = p;
    } else if (id === CAP_ID_PM) {
      found.pmCapOffset = p;
    }
  }
  return found;
}
