// Debug-exit port (QEMU's isa-debug-exit at 0xf4, 4 bytes wide): a guest ends the VM with a
// status. tsvmm exits with the value written (QEMU would give (value << 1) | 1).
import { MemoryRegion } from '../core/memory/index.js';

export const DEBUG_EXIT_PORT = 0xf4;

export class DebugExit {
  readonly region: MemoryRegion;
  constructor(onExit: (status: number) => void) {
    this.region = MemoryRegion.io('debug-exit', 4, {
      read: () => 0,
      write: (_off, _size, v) => onExit(Number(BigInt.asUintN(32, BigInt(v)))),
    });
  }
}
