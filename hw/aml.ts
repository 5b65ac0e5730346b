// AML (ACPI 6.5 chapter 20), just the terms tsvmm's DSDT uses: names, packages, buffers,
// devices, methods with If/Store/And/ShiftLeft/Notify, operation regions and fields, and the
// resource descriptors of _CRS. Each function returns the encoded bytes of one term.
export type Aml = Uint8Array | number[];

export const cat = (...parts: Aml[]): Uint8Array => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
};

/** PkgLength: the encoded length counts its own bytes. */
export function amlPkgLength(contentLen: number): number[] {
  if (contentLen + 1 <= 0x3f) return [contentLen + 1];
  if (contentLen + 2 <= 0xfff) {
    const t = contentLen + 2;
    return [0x40 | (t & 0xf), t >> 4];
  }
  if (contentLen + 3 <= 0xfffff) {
    const t = contentLen + 3;
    return [0x80 | (t & 0xf), (t >> 4) & 0xff, t >> 12];
  }
  throw new RangeError(`AML package of ${contentLen} bytes is too large`);
}

/** A field's bit width: PkgLength's encoding, without counting its own bytes. */
function fieldLength(bits: number): number[] {
  if (bits <= 0x3f) return [bits];
  if (bits <= 0xfff) return [0x40 | (bits & 0xf), bits >> 4];
  throw new RangeError(`AML field of ${bits} bits is too large`);
}

export function amlInteger(v: number): number[] {
  if (!Number.isInteger(v) || v < 0) throw new RangeError(`AML integer ${v}`);
  if (v === 0) return [0x00];
  if (v === 1) return [0x01];
  if (v <= 0xff) return [0x0a, v];
  if (v <= 0xffff) return [0x0b, v & 0xff, v >> 8];
  if (v <= 0xffffffff) return [0x0c, v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24];
  throw new RangeError('AML integers above 32 bits are not needed here');
}

export const amlString = (s: string): number[] => [0x0d, ...[...s].map((c) => c.charCodeAt(0)), 0x00];

export const nameSeg = (s: string): number[] => {
  if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(s)) throw new RangeError(`AML NameSeg '${s}'`);
  return [...s.padEnd(4, '_')].map((c) => c.charCodeAt(0));
};

/** A NameString: 'PCEJ', '\\_SB.PCI0.S01', '^PCEJ'. */
export function amlPath(path: string): number[] {
  const out: number[] = [];
  let rest = path;
  if (rest.startsWith('\\')) {
    out.push(0x5c);
    rest = rest.slice(1);
  }
  while (rest.startsWith('^')) {
    out.push(0x5e);
    rest = rest.slice(1);
  }
  const segs = rest === '' ? [] : rest.split('.');
  if (segs.length === 0) out.push(0x00);
  else if (segs.length === 1) out.push(...nameSeg(segs[0]!));
  else if (segs.length === 2) out.push(0x2e, ...nameSeg(segs[0]!), ...nameSeg(segs[1]!));
  else out.push(0x2f, segs.length, ...segs.flatMap(nameSeg));
  return out;
}

export const amlName = (seg: string, value: Aml): Uint8Array => cat([0x08], nameSeg(seg), value);
export const amlPackage = (elements: Aml[]): Uint8Array => {
  const body = cat([elements.length], ...elements);
  return cat([0x12], amlPkgLength(body.length), body);
};
export const amlBuffer = (bytes: Aml): Uint8Array => {
  const body = cat(amlInteger(bytes.length), bytes);
  return cat([0x11], amlPkgLength(body.length), body);
};
export const amlScope = (path: string, ...body: Aml[]): Uint8Array => {
  const b = cat(amlPath(path), ...body);
  return cat([0x10], amlPkgLength(b.length), b);
};
export const amlDevice = (seg: string, ...body: Aml[]): Uint8Array => {
  const b = cat(nameSeg(seg), ...body);
  return cat([0x5b, 0x82], amlPkgLength(b.length), b);
};

/** Method(seg, args, serialized) { body } */
export const amlMethod = (seg: string, args: number, serialized: boolean, ...body: Aml[]): Uint8Array => {
  const b = cat(nameSeg(seg), [(args & 7) | (serialized ? 8 : 0)], ...body);
  return cat([0x14], amlPkgLength(b.length), b);
};

export const AML_SYSTEM_MEMORY = 0,
  AML_SYSTEM_IO = 1;
export const amlOperationRegion = (seg: string, space: number, offset: number, length: number): Uint8Array =>
  cat([0x5b, 0x80], nameSeg(seg), [space], amlInteger(offset), amlInteger(length));

/** Field(region, DWordAcc, NoLock, WriteAsZeros) { name, bits, ... } — `null` names a reserved gap. */
export function amlFieldDword(region: string, fields: [string | null, number][]): Uint8Array {
  const ACCESS_DWORD = 3,
    WRITE_AS_ZEROS = 2 << 5;
  const list = fields.flatMap(([n, bits]) =>
    n === null ? [0x00, ...fieldLength(bits)] : [...nameSeg(n), ...fieldLength(bits)],
  );
  const b = cat(amlPath(region), [ACCESS_DWORD | WRITE_AS_ZEROS], list);
  return cat([0x5b, 0x81], amlPkgLength(b.length), b);
}

export const amlLocal = (n: number): number[] => [0x60 + n];
export const amlArg = (n: number): number[] => [0x68 + n];
const NULL_TARGET = [0x00];
export const amlStore = (value: Aml, target: Aml): Uint8Array => cat([0x70], value, target);
export const amlAnd = (a: Aml, b: Aml): Uint8Array => cat([0x7b], a, b, NULL_TARGET);
export const amlShiftLeft = (a: Aml, b: Aml): Uint8Array => cat([0x79], a, b, NULL_TARGET);
export const amlNotify = (object: string, value: number): Uint8Array => cat([0x86], amlPath(object), amlInteger(value));
export const amlIf = (predicate: Aml, ...body: Aml[]): Uint8Array => {
  const b = cat(predicate, ...body);
  return cat([0xa0], amlPkgLength(b.length), b);
};
/** A call of a method (the arguments must match its declared count). */
export const amlCall = (path: string, ...args: Aml[]): Uint8Array => cat(amlPath(path), ...args);

/** EISA ID ("PNP0A03") as the 32-bit integer AML uses. */
export function eisaId(id: string): number {
  const c = (i: number) => id.charCodeAt(i) - 0x40;
  const be = ((c(0) << 26) | (c(1) << 21) | (c(2) << 16) | parseInt(id.slice(3), 16)) >>> 0;
  return (((be & 0xff) << 24) | (((be >>> 8) & 0xff) << 16) | (((be >>> 16) & 0xff) << 8) | (be >>> 24)) >>> 0;
}

// --- resource descriptors (ACPI 6.5 §6.4) ------------------------------------------------
export const le16 = (v: number): number[] => [v & 0xff, (v >> 8) & 0xff];
export const le32 = (v: number): number[] => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24];
/** Word address space: type 1 I/O, 2 bus number; a producer with fixed min and max. */
export const wordSpace = (type: number, typeFlags: number, min: number, max: number): number[] => [
  0x88,
  ...le16(13),
  type,
  0x0c,
  typeFlags,
  ...le16(0),
  ...le16(min),
  ...le16(max),
  ...le16(0),
  ...le16(max - min + 1),
];
export const dwordMemory = (min: number, max: number): number[] => [
  0x87,
  ...le16(23),
  0,
  0x0c,
  0x01 /* read-write, non-cacheable */,
  ...le32(0),
  ...le32(min),
  ...le32(max),
  ...le32(0),
  ...le32(max - min + 1),
];
/** I/O port descriptor, 16-bit decode, fixed. */
export const ioPort = (port: number, len: number): number[] => [0x47, 0x01, ...le16(port), ...le16(port), 1, len];
/** IRQ descriptor without flags: edge-triggered, active-high (an ISA interrupt). */
export const irqNoFlags = (irq: number): number[] => [0x22, ...le16(1 << irq)];
/** Extended interrupt descriptor: one GSI, consumer, exclusive; level/edge, active-high. */
export const extendedInterrupt = (gsi: number, edge: boolean): number[] => [
  0x89,
  ...le16(6),
  0x01 | (edge ? 0x02 : 0),
  1,
  ...le32(gsi),
];
export const endTag = (): number[] => [0x79, 0x00];
