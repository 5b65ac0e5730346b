// KVM state ioctls as opaque blobs (the struct's bytes), for snapshot and restore: the VMM takes
// the power-on state KVM gives a new vCPU/irqchip and puts it back on system_reset, and saves and
// restores a running VM's (machine/migration/). Plus the MSRs KVM lists as saveable, the TSC
// frequency, and the vCPU's signal mask for KVM_RUN.
#include "util.h"
#include <linux/kvm.h>
#include <errno.h>
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
    // The legacy 4 KiB layout: enough for every feature a guest may enable without asking the
    // host for permission (AMX's tile data needs arch_prctl and KVM_GET_XSAVE2; tsvmm asks for none).
    K("xsave", kvm_xsave, KVM_GET_XSAVE, KVM_SET_XSAVE),
    K("debugregs", kvm_debugregs, KVM_GET_DEBUGREGS, KVM_SET_DEBUGREGS),
    K("clock", kvm_clock_data, KVM_GET_CLOCK, KVM_SET_CLOCK),  // VM fd: kvmclock's base
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

// kvmGetMsrIndexList(kvmFd) → the MSRs KVM can save and restore (KVM_GET_MSR_INDEX_LIST on /dev/kvm).
static Napi::Value KvmGetMsrIndexList(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  kvm_msr_list probe = {};
  // The first call says how many (E2BIG); the second fills them in.
  if (ioctl(fd, KVM_GET_MSR_INDEX_LIST, &probe) < 0 && errno != E2BIG) ThrowErrno(env, "ioctl(KVM_GET_MSR_INDEX_LIST)", errno);
  std::vector<uint8_t> buf(sizeof(kvm_msr_list) + probe.nmsrs * sizeof(__u32), 0);
  auto *l = reinterpret_cast<kvm_msr_list *>(buf.data());
  l->nmsrs = probe.nmsrs;
  CheckedIoctl(env, fd, KVM_GET_MSR_INDEX_LIST, l, "KVM_GET_MSR_INDEX_LIST");
  Napi::Array out = Napi::Array::New(env, l->nmsrs);
  for (uint32_t i = 0; i < l->nmsrs; i++) out.Set(i, Napi::Number::New(env, l->indices[i]));
  return out;
}

// kvmGetMsrs(vcpuFd, indexes[]) → BigUint64Array of the values read: KVM stops at the first MSR
// it cannot read, so the array may be shorter than the list (the caller skips that one and goes on).
static Napi::Value KvmGetMsrs(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[1].IsArray()) throw Napi::TypeError::New(env, "kvmGetMsrs(vcpufd, indexes[])");
  Napi::Array a = info[1].As<Napi::Array>();
  uint32_t n = a.Length();
  std::vector<uint8_t> buf(sizeof(kvm_msrs) + n * sizeof(kvm_msr_entry), 0);
  auto *m = reinterpret_cast<kvm_msrs *>(buf.data());
  m->nmsrs = n;
  for (uint32_t i = 0; i < n; i++) m->entries[i].index = a.Get(i).As<Napi::Number>().Uint32Value();
  int r = ioctl(ArgInt(info, 0), KVM_GET_MSRS, m);
  if (r < 0) ThrowErrno(env, "ioctl(KVM_GET_MSRS)", errno);
  Napi::BigUint64Array out = Napi::BigUint64Array::New(env, r);
  for (int i = 0; i < r; i++) out[i] = m->entries[i].data;
  return out;
}

// kvmGetTscKhz(vcpuFd) → the vCPU's TSC frequency; kvmSetTscKhz(vcpuFd, khz) (needs TSC scaling
// on the host unless it is the host's own).
static Napi::Value KvmGetTscKhz(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int r = ioctl(ArgInt(info, 0), KVM_GET_TSC_KHZ, 0);
  if (r < 0) ThrowErrno(env, "ioctl(KVM_GET_TSC_KHZ)", errno);
  return Napi::Number::New(env, r);
}
static Napi::Value KvmSetTscKhz(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (ioctl(ArgInt(info, 0), KVM_SET_TSC_KHZ, (unsigned long)ArgU32(info, 1)) < 0) ThrowErrno(env, "ioctl(KVM_SET_TSC_KHZ)", errno);
  return env.Undefined();
}

// kvmGetDirtyLog(vmFd, slot, bitmap): KVM_GET_DIRTY_LOG into `bitmap` (a bit per page of the
// slot, 64-bit words): the pages written since the last call, which it clears and write-protects again.
static Napi::Value KvmGetDirtyLog(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[2].IsTypedArray()) throw Napi::TypeError::New(env, "kvmGetDirtyLog(vmfd, slot, bitmap)");
  Napi::Uint8Array b = info[2].As<Napi::Uint8Array>();
  if (b.ByteLength() % 8) throw Napi::RangeError::New(env, "the dirty bitmap is whole 64-bit words");
  kvm_dirty_log log = {};
  log.slot = ArgU32(info, 1);
  log.dirty_bitmap = b.Data();
  CheckedIoctl(env, ArgInt(info, 0), KVM_GET_DIRTY_LOG, &log, "KVM_GET_DIRTY_LOG");
  return env.Undefined();
}

// kvmClearDirtyLog(vmFd, slot, firstPage, numPages, bitmap): KVM_CLEAR_DIRTY_LOG (with manual
// dirty-log protection): clears the bits set in `bitmap` (a bit per page from firstPage, a
// multiple of 64) and write-protects those pages again, so their next write is logged.
static Napi::Value KvmClearDirtyLog(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 5 || !info[4].IsTypedArray())
    throw Napi::TypeError::New(env, "kvmClearDirtyLog(vmfd, slot, firstPage, numPages, bitmap)");
  Napi::TypedArray t = info[4].As<Napi::TypedArray>();
  uint64_t first = static_cast<uint64_t>(info[2].As<Napi::Number>().Int64Value());
  uint32_t num = ArgU32(info, 3);
  if (t.ByteLength() * 8 < num) throw Napi::RangeError::New(env, "the bitmap is shorter than numPages bits");
  kvm_clear_dirty_log c = {};
  c.slot = ArgU32(info, 1);
  c.first_page = first;
  c.num_pages = num;
  c.dirty_bitmap = static_cast<uint8_t *>(t.ArrayBuffer().Data()) + t.ByteOffset();
  CheckedIoctl(env, ArgInt(info, 0), KVM_CLEAR_DIRTY_LOG, &c, "KVM_CLEAR_DIRTY_LOG");
  return env.Undefined();
}

// kvmEnableCap(fd, cap, arg0): KVM_ENABLE_CAP on a VM fd with args[0] = arg0.
static Napi::Value KvmEnableCap(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  kvm_enable_cap c = {};
  c.cap = ArgU32(info, 1);
  c.args[0] = static_cast<uint64_t>(info[2].As<Napi::Number>().Int64Value());
  CheckedIoctl(env, ArgInt(info, 0), KVM_ENABLE_CAP, &c, "KVM_ENABLE_CAP");
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
  TSVMM_EXPORT(exports, "kvmGetMsrIndexList", KvmGetMsrIndexList);
  TSVMM_EXPORT(exports, "kvmGetMsrs", KvmGetMsrs);
  TSVMM_EXPORT(exports, "kvmGetDirtyLog", KvmGetDirtyLog);
  TSVMM_EXPORT(exports, "kvmClearDirtyLog", KvmClearDirtyLog);
  TSVMM_EXPORT(exports, "kvmEnableCap", KvmEnableCap);
  TSVMM_EXPORT(exports, "kvmGetTscKhz", KvmGetTscKhz);
  TSVMM_EXPORT(exports, "kvmSetTscKhz", KvmSetTscKhz);
  Napi::Object c = exports.Has("constants") ? exports.Get("constants").As<Napi::Object>() : Napi::Object::New(env);
#define C(x) c.Set(#x, Napi::Number::New(env, x));
  C(KVM_MP_STATE_RUNNABLE) C(KVM_MP_STATE_UNINITIALIZED) C(KVM_MP_STATE_INIT_RECEIVED) C(KVM_MP_STATE_HALTED)
  C(KVM_MP_STATE_SIPI_RECEIVED)
  C(KVM_CAP_MP_STATE) C(KVM_CAP_VCPU_EVENTS) C(KVM_CAP_XCRS) C(KVM_CAP_XSAVE) C(KVM_CAP_DEBUGREGS)
  C(KVM_CAP_ADJUST_CLOCK) C(KVM_CAP_GET_TSC_KHZ) C(KVM_CAP_TSC_CONTROL)
  C(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) C(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) C(KVM_DIRTY_LOG_INITIALLY_SET)
#undef C
  exports.Set("constants", c);
}

}  // namespace tsvmm
