// How a device model lets a vCPU thread answer reads of its side-effect-free registers itself
// (core/kvm/register-file.ts; the machine wires a window at the model's ports). The model
// publishes the value of every such register whenever it may have changed — before it raises an
// interrupt that tells the guest to look, and inside the access that changed it — and -1 for a
// register whose read must reach the model (a FIFO pop, a read that clears a status).

export interface RegisterWindow {
  /** Byte registers at offsets 0..size-1 of the model's ports. */
  readonly size: number;
  /**
   * values[k]: what a byte read at offset k returns now (0..255), or -1. Bit k of neutralWrites: a
   * byte write at offset k, in the state these values describe, changes none of them (a vCPU may
   * then answer its reads while such a write of its own is still in flight). Changed values become
   * visible together.
   */
  publish(values: ArrayLike<number>, neutralWrites?: number): void;
}
