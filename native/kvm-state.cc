// KVM state ioctls as opaque blobs (the struct's bytes), for snapshot and restore: the VMM takes
// the power-on state KVM gives a new vCPU/irqchip and puts it back on system_reset. Plus the
// vCPU's signal mask for KVM_RUN and the multiprocessing state.
#include "util.h"
#include <linux/kvm.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <vector>

namespace tsvmm {

namespace {

struct StateKind {
  const char *name;
  unsigned long get, set;
  size_t size;
  const char *getName, *setName;
};

#define K(n, t, g, s) {n, g, s, sizeof(t), #g, #s}
const StateKind kKinds[] = {
    K("regs", kvm_regs, KVM_GET_REGS, KVM_SET_REGS),
    K("sregs", kvm_sregs, KVM_GET_SREGS, KVM_SET_SREGS),
    K("fpu", kvm_fpu, KVM_GET_FPU, KVM_SET_FPU),
    K("lapic", kvm_lapic_state, KVM_GET_LAPIC, KVM_SET_LAPIC),
    K("mpState", kvm_mp_state, KVM_GET_MP_STATE, KVM_SET_MP_STATE),
    K("vcpuEvents", kvm_vcpu_events, KVM_GET_VCPU_EVENTS, KVM_SET_VCPU_EVENTS),
    K("xcrs", kvm_xcrs, KVM_GET_XCRS, KVM_SET_XCRS),
    K("irqchip", kvm_irqchip, KVM_GET_IRQCHIP, KVM_SET_IRQCHIP),  // VM fd; chip id first
    K("pit2", kvm_pit_state2, KVM_GET_PIT2, KVM_SET_PIT2),        // VM fd
};
#undef K

const StateKind &Kind(const Napi::CallbackInfo &info, size_t i) {
  if (i >= info.Length() || !info[i].IsString()) throw Napi::TypeError::New(info.Env(), "argument 1 must be a state name");
  std::string n = info[i].As<Napi::String>().Utf8Value();
  for (const auto &k : kKinds)
    if (n == k.name) return k;
  throw Napi::TypeError::New(info.Env(), "unknown KVM state '" + n + "'");
}

}  // namespace

// kvmGetState(fd, name, chipId?) → Uint8Array with the struct (irqchip: chipId selects the chip).
static Napi::Value KvmGetState(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  const StateKind &k = Kind(info, 1);
  Napi::Uint8Array out = Napi::Uint8Array::New(env, k.size);
  memset(out.Data(), 0, k.size);
  if (k.get == KVM_GET_IRQCHIP) reinterpret_cast<kvm_irqchip *>(out.Data())->chip_id = ArgU32(info, 2);
  CheckedIoctl(env, ArgInt(info, 0), k.get, out.Data(), k.getName);
  return out;
}

// kvmSetState(fd, name, bytes): bytes as kvmGetState returned them.
static Napi::Value KvmSetState(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  const StateKind &k = Kind(info, 1);
  if (info.Length() < 3 || !info[2].IsTypedArray()) throw Napi::TypeError::New(env, "argument 2 must be a Uint8Array");
  Napi::Uint8Array in = info[2].As<Napi::Uint8Array>();
  if (in.ByteLength() != k.size) throw Napi::RangeError::New(env, std::string(k.name) + " state must be " + std::to_string(k.size) + " bytes");
  std::vector<uint8_t> buf(in.Data(), in.Data() + k.size);
  CheckedIoctl(env, ArgInt(info, 0), k.set, buf.data(), k.setName);
  return env.Undefined();
}

// kvmSetSignalMask(vcpuFd, unblock[]): KVM_RUN runs with the calling thread's mask minus these
// signals (a thread that blocks its kick signal takes it only while in the guest).
static Napi::Value KvmSetSignalMask(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[1].IsArray()) throw Napi::TypeError::New(env, "kvmSetSignalMask(vcpufd, signals[])");
  sigset_t set;
  pthread_sigmask(SIG_SETMASK, nullptr, &set);
  Napi::Array a = info[1].As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); i++) sigdelset(&set, a.Get(i).As<Napi::Number>().Int32Value());
  // The kernel's sigset is 8 bytes on x86-64 (glibc's sigset_t is larger).
  std::vector<uint8_t> buf(sizeof(kvm_signal_mask) + 8, 0);
  auto *m = reinterpret_cast<kvm_signal_mask *>(buf.data());
  m->len = 8;
  memcpy(m->sigset, &set, 8);
  CheckedIoctl(env, ArgInt(info, 0), KVM_SET_SIGNAL_MASK, m, "KVM_SET_SIGNAL_MASK");
  return env.Undefined();
}

void InitKvmState(Napi::Env env, Napi::Object exports) {
  TSVMM_EXPORT(exports, "kvmGetState", KvmGetState);
  TSVMM_EXPORT(exports, "kvmSetState", KvmSetState);
  TSVMM_EXPORT(exports, "kvmSetSignalMask", KvmSetSignalMask);
  Napi::Object c = exports.Has("constants") ? exports.Get("constants").As<Napi::Object>() : Napi::Object::New(env);
#define C(x) c.Set(#x, Napi::Number::New(env, x));
  C(KVM_MP_STATE_RUNNABLE) C(KVM_MP_STATE_UNINITIALIZED) C(KVM_MP_STATE_INIT_RECEIVED) C(KVM_MP_STATE_HALTED)
  C(KVM_MP_STATE_SIPI_RECEIVED)
  C(KVM_CAP_MP_STATE) C(KVM_CAP_VCPU_EVENTS) C(KVM_CAP_XCRS)
#undef C
  exports.Set("constants", c);
}

}  // namespace tsvmm
