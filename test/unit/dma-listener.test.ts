// The DMA listener's error path (pure logic: a listener whose map/unmap calls fail on demand, in
// place of the VFIO ioctls): a map or unmap that fails after attach throws from the memory change
// that caused it, as a TsvmmError with the kernel's error as cause, and leaves the listener usable.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AddressSpace, MemoryRegion, memoryTransaction } from '../../core/memory/index.js';
import { DmaListener, explainMapError, type DmaMapping } from '../../core/vfio/dma.js';
import { TsvmmError } from '../../core/errors.js';
import { VfioSetupError } from '../../core/vfio/sysfs.js';

const MiB = 2 ** 20;

class FailingDma extends DmaListener {
  readonly name = 'test-dma';
  failMap: string | undefined;
  failUnmap = false;
  readonly kernel = new Map<number, number>(); // iova → size, as the IOMMU would have them
  protected mapRange(m: DmaMapping): void {
    if (m.region === this.failMap) {
      const e = Object.assign(new Error('VFIO_IOMMU_MAP_DMA: Cannot allocate memory'), {
        code: 'ENOMEM',
        syscall: 'x',
      });
      throw explainMapError('VFIO_IOMMU_MAP_DMA', e, m);
    }
    this.kernel.set(m.iova, m.size);
  }
  protected unmapRange(m: DmaMapping): void {
    if (this.failUnmap) throw new Error('VFIO_IOMMU_UNMAP_DMA: Invalid argument');
    this.kernel.delete(m.iova);
  }
  protected unmapEverything(): boolean {
    return false;
  }
}

function ram(name: string, size: number): MemoryRegion {
  return MemoryRegion.ram(name, size, { hostAddr: 0x7f0000000000n, bytes: new Uint8Array(size) });
}

test('DMA listener: a map that fails after attach throws from the change that caused it', () => {
  const root = MemoryRegion.container('system', 2 ** 40);
  root.addSubregion(0, ram('low', 2 * MiB));
  const space = new AddressSpace('memory', root);
  const dma = new FailingDma();
  dma.attach(space);
  assert.deepEqual([...dma.kernel], [[0, 2 * MiB]]);

  dma.failMap = 'high';
  const high = ram('high', MiB);
  assert.throws(
    () => memoryTransaction(() => root.addSubregion(2 ** 32, high)),
    (e: unknown) =>
      e instanceof VfioSetupError &&
      e instanceof TsvmmError &&
      e.code === 'ERR_VFIO_SETUP' &&
      /VFIO_IOMMU_MAP_DMA of high \(IOVA 0x100000000, 1M\) failed with ENOMEM/.test(e.message) &&
      (e.cause as Error).message.includes('Cannot allocate memory'),
  );
  assert.equal(dma.kernel.size, 1, 'nothing was mapped for it');
  assert.ok(!dma.covers(2 ** 32, MiB));

  // The listener goes on: the region leaves, and comes back once the kernel accepts it.
  root.removeSubregion(high);
  dma.failMap = undefined;
  root.addSubregion(2 ** 32, high);
  assert.ok(dma.covers(2 ** 32, MiB));
  assert.equal(dma.kernel.size, 2);
});

test('DMA listener: an unmap that fails throws from the removal, with the cause', () => {
  const root = MemoryRegion.container('system', 2 ** 40);
  const low = ram('low', 2 * MiB);
  root.addSubregion(0, low);
  const space = new AddressSpace('memory', root);
  const dma = new FailingDma();
  dma.attach(space);
  dma.failUnmap = true;
  assert.throws(
    () => root.removeSubregion(low),
    (e: unknown) =>
      e instanceof VfioSetupError &&
      /test-dma: DMA unmap of low \(IOVA 0x0\) failed: VFIO_IOMMU_UNMAP_DMA: Invalid argument/.test(e.message) &&
      e.cause instanceof Error,
  );
  assert.equal(dma.mappings.size, 0, 'the listener no longer counts it as mapped');
});

test('DMA listener: errors of the initial replay throw from attach', () => {
  const root = MemoryRegion.container('system', 2 ** 40);
  root.addSubregion(0, ram('low', 2 * MiB));
  const space = new AddressSpace('memory', root);
  const dma = new FailingDma();
  dma.failMap = 'low';
  assert.throws(() => dma.attach(space), /VFIO_IOMMU_MAP_DMA of low .* failed with ENOMEM/);
  dma.detach();
  assert.equal(dma.attached, false);
});
