// The exits that end a run loop, decoded from the kvm_run page the same way on every thread.
import { native } from '../native.js';
import type { VcpuStop } from './exit-channel.js';

/** A non-I/O exit: the stop it means, or undefined to run on (KVM_EXIT_INTR). */
export function stopForExit(reason: number, page: DataView): VcpuStop | undefined {
  const n = native();
  const c = n.constants;
  const L = n.kvmRunLayout;
  switch (reason) {
    case c.KVM_EXIT_INTR:
      return undefined;
    case c.KVM_EXIT_HLT:
      return { reason: 'hlt' };
    case c.KVM_EXIT_SHUTDOWN:
      return { reason: 'shutdown' };
    case c.KVM_EXIT_SYSTEM_EVENT:
      return { reason: 'system-event', type: page.getUint32(L.systemEventType, true) };
    case c.KVM_EXIT_INTERNAL_ERROR: {
      const nd = Math.min(page.getUint32(L.internalNdata, true), 16);
      const data: string[] = [];
      for (let i = 0; i < nd; i++) data.push('0x' + page.getBigUint64(L.internalData + 8 * i, true).toString(16));
      return { reason: 'internal-error', suberror: page.getUint32(L.internalSuberror, true), data };
    }
    case c.KVM_EXIT_FAIL_ENTRY:
      return { reason: 'fail-entry', hwReason: '0x' + page.getBigUint64(L.failEntryReason, true).toString(16) };
    default:
      return { reason: 'unhandled-exit', exitReason: reason };
  }
}

export const EINTR = 4,
  EAGAIN = 11;
