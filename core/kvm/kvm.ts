// /dev/kvm: the system fd. Opening it is where "no KVM here" or "no permission" is explained.
import { TsvmmError, type TsvmmErrorOptions } from '../errors.js';
import { openSync, closeSync, existsSync } from 'node:fs';
import { native, type CpuidEntry } from '../native.js';
import type { NativeConstants } from '../native-constants.js';
import { KvmVm, type VmOptions } from './vm.js';

export class KvmError extends TsvmmError {
  constructor(message: string, opts?: TsvmmErrorOptions) {
    super('ERR_KVM', message, opts);
  }
}

export class Kvm {
  private constructor(
    readonly fd: number,
    readonly path: string,
  ) {}

  static open(path = '/dev/kvm'): Kvm {
    if (!existsSync(path)) {
      throw new KvmError(`${path} does not exist: this machine has no KVM`, {
        fix:
          `run on a Linux host with hardware virtualization and the kvm module loaded ` +
          `(modprobe kvm_intel or kvm_amd), or run tsvmm inside its test host: 'tsvmm testhost run -- tsvmm run ...'`,
      });
    }
    let fd: number;
    try {
      fd = openSync(path, 'r+');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EACCES' || code === 'EPERM') {
        throw new KvmError(`no permission to open ${path} (${code})`, {
          cause: e,
          fix: `add your user to the 'kvm' group (sudo usermod -aG kvm $USER, then log in again) or run as root`,
        });
      }
      throw new KvmError(`cannot open ${path}: ${(e as Error).message}`, { cause: e });
    }
    return Kvm.adopt(fd, path);
  }

  /** Takes over a /dev/kvm fd passed by a manager (see core/fdpass.ts). */
  static fromFd(fd: number): Kvm {
    return Kvm.adopt(fd, `/dev/kvm (passed fd ${fd})`);
  }

  private static adopt(fd: number, path: string): Kvm {
    const kvm = new Kvm(fd, path);
    const n = native();
    const version = n.kvmGetApiVersion(fd);
    if (version !== n.constants.KVM_API_VERSION) {
      kvm.close();
      throw new KvmError(`${path} speaks KVM API ${version}, tsvmm needs ${n.constants.KVM_API_VERSION}`);
    }
    return kvm;
  }

  checkExtension(cap: number): number {
    return native().kvmCheckExtension(this.fd, cap);
  }

  /** Fails with a clear message when a capability tsvmm relies on is missing. */
  requireExtensions(caps: (keyof NativeConstants & `KVM_CAP_${string}`)[]): void {
    const c = native().constants;
    const missing = caps.filter((name) => this.checkExtension(c[name]) <= 0);
    if (missing.length) throw new KvmError(`${this.path} lacks required capabilities: ${missing.join(', ')}`);
  }

  vcpuMmapSize(): number {
    return native().kvmGetVcpuMmapSize(this.fd);
  }

  supportedCpuid(): CpuidEntry[] {
    return native().kvmGetSupportedCpuid(this.fd);
  }

  /** A new VM on this KVM (the VM class stays inside core/kvm/: machines get one from here). */
  createVm(opts?: VmOptions): KvmVm {
    return new KvmVm(this, opts);
  }

  close(): void {
    closeSync(this.fd);
  }
}
