import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_VERSION_1,
  VIRTIO_STATUS_DEVICE_NEEDS_RESET,
} from '../../hw/virtio/device.js';
import {
  VirtioIommu,
  VIRTIO_IOMMU_F_BYPASS_CONFIG,
  VIRTIO_IOMMU_F_DOMAIN_RANGE,
  VIRTIO_IOMMU_F_INPUT_RANGE,
  VIRTIO_IOMMU_F_MAP_UNMAP,
  VIRTIO_IOMMU_F_PROBE,
  VIRTIO_IOMMU_T_PROBE,
} from '../../hw/virtio/iommu.js';
import {
  VIRTIO_IOMMU_S_DEVERR,
  VIRTIO_IOMMU_S_INVAL,
  VIRTIO_IOMMU_S_NOENT,
  VIRTIO_IOMMU_S_NOMEM,
  VIRTIO_IOMMU_S_OK,
  VIRTIO_IOMMU_S_RANGE,
  VIRTIO_IOMMU_S_UNSUPP,
} from '../../hw/virtio/iommu-host.js';
import { RecordingIommuHost } from '../helpers/recording-iommu-host.js';
import { guestEvents } from '../../hw/pci.js';
import { VirtioTestDriver } from '../helpers/virtio-driver.js';
import { req } from '../helpers/virtio-iommu-requests.js';

const EP = 0x08, // 00:01.0
  EP2 = 0x10, // 00:02.0
  EP3 = 0x11; // 00:02.1
/** What Linux's virtio_iommu accepts. */
const FEATURES =
  VIRTIO_F_VERSION_1 |
  VIRTIO_F_EVENT_IDX |
  VIRTIO_F_INDIRECT_DESC |
  VIRTIO_IOMMU_F_INPUT_RANGE |
  VIRTIO_IOMMU_F_DOMAIN_RANGE |
  VIRTIO_IOMMU_F_MAP_UNMAP |
  VIRTIO_IOMMU_F_BYPASS_CONFIG |
  VIRTIO_IOMMU_F_PROBE;
const PAGE = 0x1000;

function setup(opts: { reserved?: { start: number; end: number }[]; features?: bigint; maxMappings?: number } = {}) {
  guestEvents.counts.clear();
  const logged: string[] = [];
  guestEvents.sink = (l) => void logged.push(l);
  const host = new RecordingIommuHost(opts.reserved ?? []);
  const iommu = new VirtioIommu({
    host,
    endpoints: [EP, EP2, EP3],
    ...(opts.maxMappings ? { maxMappings: opts.maxMappings } : {}),
  });
  const d = new VirtioTestDriver(iommu);
  assert.ok(d.init(opts.features ?? FEATURES, 2));
  /** Sends one request; returns the status (and the writable bytes). */
  const send = (r: Uint8Array, writeLen = 4) => {
    const { addrs } = d.submit(0, [{ data: r }, { writeLen }]);
    const used = d.takeUsed(0);
    assert.equal(used.length, 1, 'one request, one used element');
    const out = new Uint8Array(writeLen);
    d.mem.read(addrs[1]!, out);
    const tailAt = r[0] === VIRTIO_IOMMU_T_PROBE && writeLen >= iommu.probeSize + 4 ? iommu.probeSize : 0;
    return {
      status: out[writeLen < 4 ? 0 : r[0] === VIRTIO_IOMMU_T_PROBE && !tailAt ? writeLen - 4 : tailAt]!,
      out,
      len: used[0]!.len,
    };
  };
  const st = (r: Uint8Array) => send(r).status;
  return { host, iommu, d, send, st, logged };
}

test('virtio-iommu: config space and features', () => {
  const { d, iommu } = setup();
  assert.equal(d.dev.configRead(2, 2), 0x1057);
  const f = d.deviceFeatures();
  for (const b of [0n, 1n, 2n, 4n, 6n]) assert.ok(f & (1n << b), `feature bit ${b}`);
  assert.equal(f & (1n << 3n), 0n, 'the legacy F_BYPASS is not offered');
  assert.equal(f & (1n << 5n), 0n, 'F_MMIO is not offered');
  const lo = d.readConfig(0, 4),
    hi = d.readConfig(4, 4);
  assert.equal(BigInt(hi) * 2n ** 32n + BigInt(lo), 0xfffffffffffff000n, 'page_size_mask: 4 KiB and up');
  assert.equal(d.readConfig(8, 4), 0);
  assert.equal(d.readConfig(16, 4), 0xffffffff);
  assert.equal(d.readConfig(20, 4), 0xffff, 'input range end 2^48-1');
  assert.equal(d.readConfig(24, 4), 0);
  assert.equal(d.readConfig(28, 4), 0xffffffff);
  assert.equal(d.readConfig(32, 4), iommu.probeSize);
  assert.equal(d.readConfig(36, 1), 1, 'bypass at reset');
});

test('virtio-iommu: attach, map, unmap, detach reach the host side in order', () => {
  const { st, host, iommu } = setup();
  assert.equal(st(req.attach(1, EP)), VIRTIO_IOMMU_S_OK);
  assert.equal(st(req.map(1, 0x10000, 0x1ffff, 0x200000)), VIRTIO_IOMMU_S_OK);
  assert.equal(st(req.map(1, 0x20000, 0x20fff, 0x300000, 1)), VIRTIO_IOMMU_S_OK);
  assert.equal(iommu.mappings, 2);
  assert.equal(st(req.unmap(1, 0x10000, 0x20fff)), VIRTIO_IOMMU_S_OK, 'one UNMAP covering both');
  assert.equal(iommu.mappings, 0);
  assert.equal(st(req.detach(1, EP)), VIRTIO_IOMMU_S_OK);
  assert.deepEqual(host.calls, [
    'create 1',
    'attach 8 1',
    'map 1 0x10000+0x10000 -> 0x200000',
    'map 1 0x20000+0x1000 -> 0x300000',
    'unmap 1 0x10000+0x11000', // both in one host call: the range the guest unmapped
    'attach 8 bypass',
    'destroy 1',
  ]);
  assert.deepEqual(host.violations, []);
  assert.equal(host.domains.size, 0);
});

test('virtio-iommu: moving an endpoint between domains; the empty domain goes with its mappings', () => {
  const { st, host, iommu } = setup();
  st(req.attach(1, EP));
  st(req.map(1, 0, PAGE - 1, 0x100000));
  st(req.attach(2, EP2));
  assert.equal(st(req.attach(2, EP)), VIRTIO_IOMMU_S_OK);
  assert.deepEqual(host.calls.slice(-2), ['attach 8 2', 'destroy 1']);
  assert.equal(host.mappingCount, 0);
  assert.equal(iommu.mappings, 0);
  assert.equal(st(req.attach(2, EP)), VIRTIO_IOMMU_S_OK, 'attaching again where it is changes nothing');
  assert.deepEqual(iommu.inspect().domains, [{ id: 2, bypass: false, endpoints: [EP2, EP], mappings: 0 }]);
  assert.deepEqual(host.violations, []);
});

test('virtio-iommu: request statuses per spec', () => {
  const { st, send, host, iommu } = setup();
  // Unknown endpoint, domain out of range, unknown flags.
  assert.equal(st(req.attach(1, 0x99)), VIRTIO_IOMMU_S_NOENT);
  assert.equal(st(req.attach(1, EP, 2)), VIRTIO_IOMMU_S_INVAL);
  st(req.attach(1, EP));
  assert.equal(st(req.attach(5, EP2, 1)), VIRTIO_IOMMU_S_OK, 'a bypass domain');
  assert.equal(st(req.attach(5, EP3)), VIRTIO_IOMMU_S_INVAL, 'a bypass domain cannot take a translated attach');
  assert.equal(st(req.attach(1, EP3, 1)), VIRTIO_IOMMU_S_INVAL, 'nor the other way');
  // DETACH.
  assert.equal(st(req.detach(1, 0x99)), VIRTIO_IOMMU_S_NOENT);
  assert.equal(st(req.detach(7, EP)), VIRTIO_IOMMU_S_NOENT, 'no domain 7');
  assert.equal(st(req.detach(1, EP2)), VIRTIO_IOMMU_S_INVAL, 'EP2 is not in domain 1');
  // MAP.
  assert.equal(st(req.map(9, 0, PAGE - 1, 0)), VIRTIO_IOMMU_S_NOENT);
  assert.equal(st(req.map(1, 0x2000, 0x1fff, 0)), VIRTIO_IOMMU_S_INVAL, 'start > end');
  assert.equal(st(req.map(1, 0, PAGE - 1, 0, 8)), VIRTIO_IOMMU_S_INVAL, 'unknown flag');
  assert.equal(st(req.map(1, 0, PAGE - 1, 0, 4)), VIRTIO_IOMMU_S_INVAL, 'MMIO flag without F_MMIO');
  assert.equal(st(req.map(1, 2n ** 48n, 2n ** 48n + 0xfffn, 0)), VIRTIO_IOMMU_S_RANGE, 'beyond the input range');
  assert.equal(st(req.map(1, 0xffff_ffff_ffff_f000n, 0xffff_ffff_ffff_ffffn, 0)), VIRTIO_IOMMU_S_RANGE);
  assert.equal(st(req.map(1, 0x800, 0x17ff, 0)), VIRTIO_IOMMU_S_RANGE, 'misaligned IOVA');
  assert.equal(st(req.map(1, 0x1000, 0x1fff, 0x800)), VIRTIO_IOMMU_S_RANGE, 'misaligned phys');
  assert.equal(st(req.map(1, 0x1000, 0x1ffe, 0)), VIRTIO_IOMMU_S_RANGE, 'size not a page multiple');
  assert.equal(st(req.map(1, 0, PAGE - 1, 0xffff_ffff_ffff_f000n)), VIRTIO_IOMMU_S_RANGE, 'phys beyond 2^53');
  assert.equal(st(req.map(5, 0, PAGE - 1, 0)), VIRTIO_IOMMU_S_INVAL, 'a bypass domain has no mappings');
  assert.equal(st(req.map(1, 0x10000, 0x13fff, 0)), VIRTIO_IOMMU_S_OK);
  assert.equal(st(req.map(1, 0x13000, 0x13fff, 0)), VIRTIO_IOMMU_S_INVAL, 'overlap');
  assert.equal(st(req.map(1, 0xf000, 0x10fff, 0)), VIRTIO_IOMMU_S_INVAL, 'overlap at the start');
  // UNMAP.
  assert.equal(st(req.unmap(9, 0, 0xfff)), VIRTIO_IOMMU_S_NOENT);
  assert.equal(st(req.unmap(1, 0x2000, 0x1fff)), VIRTIO_IOMMU_S_INVAL);
  assert.equal(st(req.unmap(1, 0x11000, 0x11fff)), VIRTIO_IOMMU_S_RANGE, 'would split a mapping');
  assert.equal(st(req.unmap(1, 0, 0x10fff)), VIRTIO_IOMMU_S_RANGE, 'covers only its start');
  assert.equal(host.mappingCount, 1, 'a refused UNMAP removes nothing');
  assert.equal(st(req.unmap(1, 0x100000, 0x1fffff)), VIRTIO_IOMMU_S_OK, 'nothing there: fine');
  assert.equal(st(req.unmap(1, 0, 0xffff_ffff_ffff_ffffn)), VIRTIO_IOMMU_S_OK, 'everything');
  assert.equal(host.mappingCount, 0);
  // Unknown type, short requests.
  assert.equal(st(Uint8Array.of(9, 0, 0, 0)), VIRTIO_IOMMU_S_UNSUPP);
  assert.equal(st(req.map(1, 0, 0xfff, 0).subarray(0, 30)), VIRTIO_IOMMU_S_INVAL, 'a MAP cut short');
  assert.equal(send(req.probe(EP).subarray(0, 8), 516).out[512], VIRTIO_IOMMU_S_INVAL, 'a PROBE cut short');
  assert.deepEqual(host.violations, []);
  // What inspect() counts: every request by its type, refused or not.
  assert.deepEqual(iommu.inspect().requests, { attach: 6, detach: 3, map: 15, unmap: 6, probe: 1, unknown: 1 });
});

test('virtio-iommu: PROBE reports the MSI window and the host reserved regions', () => {
  const { send, iommu } = setup({ reserved: [{ start: 0xfed00000, end: 0xfed00fff }] });
  const { out, status, len } = send(req.probe(EP), iommu.probeSize + 4);
  assert.equal(status, VIRTIO_IOMMU_S_OK);
  assert.equal(len, iommu.probeSize + 4);
  const v = new DataView(out.buffer);
  const props: { type: number; len: number; subtype: number; start: bigint; end: bigint }[] = [];
  for (let at = 0; v.getUint16(at, true) !== 0; at += 4 + v.getUint16(at + 2, true))
    props.push({
      type: v.getUint16(at, true),
      len: v.getUint16(at + 2, true),
      subtype: out[at + 4]!,
      start: v.getBigUint64(at + 8, true),
      end: v.getBigUint64(at + 16, true),
    });
  assert.deepEqual(props, [
    { type: 1, len: 20, subtype: 1, start: 0xfee00000n, end: 0xfeefffffn },
    { type: 1, len: 20, subtype: 0, start: 0xfed00000n, end: 0xfed00fffn },
  ]);
  assert.equal(send(req.probe(0x99), iommu.probeSize + 4).status, VIRTIO_IOMMU_S_NOENT);
  const short = send(req.probe(EP), 64);
  assert.equal(short.out[60], VIRTIO_IOMMU_S_INVAL, 'no room for probe_size: S_INVAL in the last 4 bytes');
});

test('virtio-iommu: a host refusal is the status, one log line, and no change', () => {
  const { st, host, iommu, logged } = setup();
  host.refuse = (c) =>
    c === 'attach 17 1'
      ? { status: VIRTIO_IOMMU_S_INVAL, reason: 'group 7 (0000:01:00.0, 0000:01:00.1) must share a domain' }
      : undefined;
  st(req.attach(1, EP2));
  assert.equal(st(req.attach(1, EP3)), VIRTIO_IOMMU_S_INVAL);
  assert.equal(st(req.attach(1, EP3)), VIRTIO_IOMMU_S_INVAL);
  assert.equal(logged.length, 1, 'logged once');
  assert.match(logged[0]!, /attaching endpoint 17 to domain 1 refused: group 7 \(0000:01:00.0, 0000:01:00.1\)/);
  assert.deepEqual(iommu.inspect().domains[0]!.endpoints, [EP2]);
  assert.equal(iommu.inspect().refused, 2);
  // A refused attach to a new domain leaves no domain behind.
  host.refuse = (c) => (c.startsWith('attach') ? { status: VIRTIO_IOMMU_S_INVAL, reason: 'no' } : undefined);
  assert.equal(st(req.attach(3, EP)), VIRTIO_IOMMU_S_INVAL);
  assert.equal(host.domains.has(3), false);
  assert.equal(iommu.inspect().domains.length, 1);
  // The DMA-entry limit: S_NOMEM, the limit named.
  host.refuse = undefined;
  host.maxMappings = 2;
  assert.equal(st(req.map(1, 0, 0xfff, 0)), VIRTIO_IOMMU_S_OK);
  assert.equal(st(req.map(1, 0x1000, 0x1fff, 0)), VIRTIO_IOMMU_S_OK);
  assert.equal(st(req.map(1, 0x2000, 0x2fff, 0)), VIRTIO_IOMMU_S_NOMEM);
  assert.match(logged.at(-1)!, /limit of 2 DMA mappings/);
  assert.equal(iommu.mappings, 2);
  // A host side that throws: S_DEVERR, logged, no crash.
  host.map = () => {
    throw new Error('VFIO_IOMMU_MAP_DMA: Cannot allocate memory');
  };
  assert.equal(st(req.map(1, 0x5000, 0x5fff, 0)), VIRTIO_IOMMU_S_DEVERR);
  assert.match(logged.at(-1)!, /host side failed map request: VFIO_IOMMU_MAP_DMA/);
  // An attach that throws after its domain was made: the domain is destroyed again.
  const attach = host.attach.bind(host);
  host.attach = (ep, t) => {
    if (ep === EP) throw new Error('IOMMU_HWPT_ALLOC failed');
    return attach(ep, t);
  };
  assert.equal(st(req.attach(9, EP)), VIRTIO_IOMMU_S_DEVERR);
  assert.equal(host.domains.has(9), false, 'no domain left half-made');
  assert.deepEqual(host.violations, []);
});

test("virtio-iommu: the device's own mapping limit", () => {
  const { st } = setup({ maxMappings: 1 });
  st(req.attach(1, EP));
  assert.equal(st(req.map(1, 0, 0xfff, 0)), VIRTIO_IOMMU_S_OK);
  assert.equal(st(req.map(1, 0x1000, 0x1fff, 0)), VIRTIO_IOMMU_S_NOMEM);
});

test('virtio-iommu: config.bypass moves unattached endpoints; reset tears every domain down', () => {
  const { st, d, host, iommu } = setup();
  st(req.attach(1, EP));
  st(req.map(1, 0, 0xfff, 0));
  d.writeConfig(36, 1, 0);
  assert.equal(d.readConfig(36, 1), 0);
  assert.deepEqual(host.calls.slice(-2), ['attach 16 blocked', 'attach 17 blocked']);
  assert.equal(st(req.detach(1, EP)), VIRTIO_IOMMU_S_OK);
  assert.equal(host.endpoints.get(EP), 'blocked', 'detached with bypass 0: no DMA');
  st(req.attach(2, EP2));
  st(req.map(2, 0, 0xfff, 0));
  d.status(0); // virtio reset
  assert.equal(host.domains.size, 0);
  assert.equal(host.mappingCount, 0);
  assert.equal(iommu.mappings, 0);
  for (const ep of [EP, EP2, EP3]) assert.equal(host.endpoints.get(ep), 'bypass');
  assert.equal(d.readConfig(36, 1), 1);
  assert.deepEqual(host.violations, []);
  // Without BYPASS_CONFIG the driver cannot change bypass, nor ask for bypass domains.
  const s2 = setup({ features: FEATURES & ~VIRTIO_IOMMU_F_BYPASS_CONFIG });
  s2.d.writeConfig(36, 1, 0);
  assert.equal(s2.d.readConfig(36, 1), 1);
  assert.equal(s2.st(req.attach(1, EP, 1)), VIRTIO_IOMMU_S_INVAL);
});

test('virtio-iommu: endpoints come and go (hot-plug) without leaking domains', () => {
  const { st, host, iommu } = setup();
  iommu.addEndpoint(0x20);
  assert.equal(st(req.attach(4, 0x20)), VIRTIO_IOMMU_S_OK);
  st(req.map(4, 0, 0xfff, 0));
  iommu.removeEndpoint(0x20);
  assert.equal(host.domains.size, 0);
  assert.equal(iommu.mappings, 0);
  assert.equal(st(req.attach(4, 0x20)), VIRTIO_IOMMU_S_NOENT);
  assert.deepEqual(host.violations, []);
});

test('virtio-iommu: a request without room for its status breaks the device (NEEDS_RESET), never the VMM', () => {
  const { d } = setup();
  d.submit(0, [{ data: req.attach(1, EP) }]);
  assert.ok(d.status() & VIRTIO_STATUS_DEVICE_NEEDS_RESET);
});

test('virtio-iommu: a batch of requests in one notify, with an indirect chain', () => {
  const { d, host } = setup();
  d.submit(0, [{ data: req.attach(1, EP) }, { writeLen: 4 }], { kick: false });
  d.submit(0, [{ data: req.map(1, 0, 0xfff, 0x1000) }, { writeLen: 4 }], { kick: false, indirect: true });
  d.kick(0);
  assert.equal(d.takeUsed(0).length, 2);
  assert.equal(host.mappingCount, 1);
});
