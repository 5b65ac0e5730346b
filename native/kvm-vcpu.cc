// KVM vCPU ioctls. KVM_RUN is the hot path: EINTR/EAGAIN come back as negative numbers
// (a kick is normal), every other failure throws. The kvm_run page itself is mmap'd by JS
// and decoded with the offsets exported in kvmRunLayout.
#include "util.h"
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <cstddef>
#include <vector>

namespace tsvmm {

static Napi::Value KvmRun(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int r = ioctl(ArgInt(info, 0), KVM_RUN, 0);
  if (r < 0) {
    if (errno == EINTR || errno == EAGAIN) return Napi::Number::New(env, -errno);
    ThrowErrno(env, "ioctl(KVM_RUN)", errno);
  }
  return Napi::Number::New(env, r);
}

#define REGS(X) X(rax) X(rbx) X(rcx) X(rdx) X(rsi) X(rdi) X(rsp) X(rbp) X(r8) X(r9) X(r10) X(r11) \
  X(r12) X(r13) X(r14) X(r15) X(rip) X(rflags)

static Napi::Value KvmGetRegs(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  struct kvm_regs r = {};
  CheckedIoctl(env, ArgInt(info, 0), KVM_GET_REGS, &r, "KVM_GET_REGS");
  Napi::Object o = Napi::Object::New(env);
#define GET(f) o.Set(#f, U64ToJs(env, r.f));
  REGS(GET)
#undef GET
  return o;
}

static Napi::Value KvmSetRegs(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Object o = ArgObject(info, 1);
  struct kvm_regs r = {};
#define SET(f) r.f = PropU64(o, #f);
  REGS(SET)
#undef SET
  CheckedIoctl(env, ArgInt(info, 0), KVM_SET_REGS, &r, "KVM_SET_REGS");
  return env.Undefined();
}

#define SEGFIELDS(X) X(selector) X(type) X(present) X(dpl) X(db) X(s) X(l) X(g) X(avl)
#define SEGS(X) X(cs) X(ds) X(es) X(fs) X(gs) X(ss) X(tr) X(ldt)
#define CRS(X) X(cr0) X(cr2) X(cr3) X(cr4) X(cr8) X(efer) X(apic_base)

static Napi::Object SegToJs(Napi::Env env, const kvm_segment &s) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("base", U64ToJs(env, s.base));
  o.Set("limit", s.limit);
#define GET(f) o.Set(#f, s.f);
  SEGFIELDS(GET)
#undef GET
  return o;
}

static void SegFromJs(Napi::Object o, kvm_segment &s) {
  s.base = PropU64(o, "base");
  s.limit = PropU32(o, "limit");
#define SET(f) s.f = PropU32(o, #f);
  SEGFIELDS(SET)
#undef SET
}

static Napi::Value KvmGetSregs(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  struct kvm_sregs r = {};
  CheckedIoctl(env, ArgInt(info, 0), KVM_GET_SREGS, &r, "KVM_GET_SREGS");
  Napi::Object o = Napi::Object::New(env);
#define GET(f) o.Set(#f, SegToJs(env, r.f));
  SEGS(GET)
#undef GET
#define GET(f) o.Set(#f, U64ToJs(env, r.f));
  CRS(GET)
#undef GET
  for (const char *t : {"gdt", "idt"}) {
    const kvm_dtable &d = std::string(t) == "gdt" ? r.gdt : r.idt;
    Napi::Object dt = Napi::Object::New(env);
    dt.Set("base", U64ToJs(env, d.base));
    dt.Set("limit", d.limit);
    o.Set(t, dt);
  }
  return o;
}

// Read-modify-write: fields absent from the object keep the vCPU's current values.
static Napi::Value KvmSetSregs(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  Napi::Object o = ArgObject(info, 1);
  struct kvm_sregs r = {};
  CheckedIoctl(env, fd, KVM_GET_SREGS, &r, "KVM_GET_SREGS");
#define SET(f) if (o.Has(#f)) SegFromJs(o.Get(#f).As<Napi::Object>(), r.f);
  SEGS(SET)
#undef SET
#define SET(f) if (o.Has(#f)) r.f = PropU64(o, #f);
  CRS(SET)
#undef SET
  if (o.Has("gdt")) { Napi::Object d = o.Get("gdt").As<Napi::Object>(); r.gdt.base = PropU64(d, "base"); r.gdt.limit = PropU32(d, "limit"); }
  if (o.Has("idt")) { Napi::Object d = o.Get("idt").As<Napi::Object>(); r.idt.base = PropU64(d, "base"); r.idt.limit = PropU32(d, "limit"); }
  CheckedIoctl(env, fd, KVM_SET_SREGS, &r, "KVM_SET_SREGS");
  return env.Undefined();
}

// kvmSetCpuid2(vcpufd, entries[]) with entries as from kvmGetSupportedCpuid
static Napi::Value KvmSetCpuid2(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[1].IsArray()) throw Napi::TypeError::New(env, "kvmSetCpuid2(vcpufd, entries[])");
  Napi::Array a = info[1].As<Napi::Array>();
  uint32_t n = a.Length();
  std::vector<uint8_t> buf(sizeof(kvm_cpuid2) + n * sizeof(kvm_cpuid_entry2), 0);
  auto *c = reinterpret_cast<kvm_cpuid2 *>(buf.data());
  c->nent = n;
  for (uint32_t i = 0; i < n; i++) {
    Napi::Object o = a.Get(i).As<Napi::Object>();
    kvm_cpuid_entry2 &e = c->entries[i];
    e.function = PropU32(o, "function");
    e.index = PropU32(o, "index");
    e.flags = PropU32(o, "flags");
    e.eax = PropU32(o, "eax");
    e.ebx = PropU32(o, "ebx");
    e.ecx = PropU32(o, "ecx");
    e.edx = PropU32(o, "edx");
  }
  CheckedIoctl(env, ArgInt(info, 0), KVM_SET_CPUID2, c, "KVM_SET_CPUID2");
  return env.Undefined();
}

// kvmSetMsrs(vcpufd, [{index, data}]) → number of MSRs set
static Napi::Value KvmSetMsrs(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[1].IsArray()) throw Napi::TypeError::New(env, "kvmSetMsrs(vcpufd, entries[])");
  Napi::Array a = info[1].As<Napi::Array>();
  uint32_t n = a.Length();
  std::vector<uint8_t> buf(sizeof(kvm_msrs) + n * sizeof(kvm_msr_entry), 0);
  auto *m = reinterpret_cast<kvm_msrs *>(buf.data());
  m->nmsrs = n;
  for (uint32_t i = 0; i < n; i++) {
    Napi::Object o = a.Get(i).As<Napi::Object>();
    m->entries[i].index = PropU32(o, "index");
    m->entries[i].data = PropU64(o, "data");
  }
  int r = IoctlRetry(ArgInt(info, 0), KVM_SET_MSRS, m);
  if (r < 0) ThrowErrno(env, "ioctl(KVM_SET_MSRS)", errno);
  return Napi::Number::New(env, r);
}

// FPU state: only the fields a boot needs (fcw, mxcsr); the rest stays zero.
static Napi::Value KvmSetFpu(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Object o = ArgObject(info, 1);
  struct kvm_fpu f = {};
  f.fcw = PropU32(o, "fcw");
  f.mxcsr = PropU32(o, "mxcsr");
  CheckedIoctl(env, ArgInt(info, 0), KVM_SET_FPU, &f, "KVM_SET_FPU");
  return env.Undefined();
}

void InitKvmVcpu(Napi::Env env, Napi::Object exports) {
  TSVMM_EXPORT(exports, "kvmRun", KvmRun);
  TSVMM_EXPORT(exports, "kvmGetRegs", KvmGetRegs);
  TSVMM_EXPORT(exports, "kvmSetRegs", KvmSetRegs);
  TSVMM_EXPORT(exports, "kvmGetSregs", KvmGetSregs);
  TSVMM_EXPORT(exports, "kvmSetSregs", KvmSetSregs);
  TSVMM_EXPORT(exports, "kvmSetCpuid2", KvmSetCpuid2);
  TSVMM_EXPORT(exports, "kvmSetMsrs", KvmSetMsrs);
  TSVMM_EXPORT(exports, "kvmSetFpu", KvmSetFpu);

  // Offsets into struct kvm_run, so JS decodes exits from the mmap'd page with a DataView.
  Napi::Object L = Napi::Object::New(env);
  L.Set("immediateExit", offsetof(kvm_run, immediate_exit));
  L.Set("exitReason", offsetof(kvm_run, exit_reason));
  L.Set("ioDirection", offsetof(kvm_run, io.direction));
  L.Set("ioSize", offsetof(kvm_run, io.size));
  L.Set("ioPort", offsetof(kvm_run, io.port));
  L.Set("ioCount", offsetof(kvm_run, io.count));
  L.Set("ioDataOffset", offsetof(kvm_run, io.data_offset));
  L.Set("mmioPhysAddr", offsetof(kvm_run, mmio.phys_addr));
  L.Set("mmioData", offsetof(kvm_run, mmio.data));
  L.Set("mmioLen", offsetof(kvm_run, mmio.len));
  L.Set("mmioIsWrite", offsetof(kvm_run, mmio.is_write));
  L.Set("failEntryReason", offsetof(kvm_run, fail_entry.hardware_entry_failure_reason));
  L.Set("internalSuberror", offsetof(kvm_run, internal.suberror));
  L.Set("internalNdata", offsetof(kvm_run, internal.ndata));
  L.Set("internalData", offsetof(kvm_run, internal.data));
  L.Set("systemEventType", offsetof(kvm_run, system_event.type));
  exports.Set("kvmRunLayout", L);

  Napi::Object c = exports.Has("constants") ? exports.Get("constants").As<Napi::Object>() : Napi::Object::New(env);
#define C(x) c.Set(#x, Napi::Number::New(env, x));
  C(KVM_API_VERSION) C(KVM_EXIT_UNKNOWN) C(KVM_EXIT_EXCEPTION) C(KVM_EXIT_IO) C(KVM_EXIT_HLT) C(KVM_EXIT_MMIO)
  C(KVM_EXIT_SHUTDOWN) C(KVM_EXIT_FAIL_ENTRY) C(KVM_EXIT_INTR) C(KVM_EXIT_INTERNAL_ERROR) C(KVM_EXIT_SYSTEM_EVENT)
  C(KVM_EXIT_IRQ_WINDOW_OPEN) C(KVM_EXIT_DEBUG) C(KVM_EXIT_SET_TPR) C(KVM_EXIT_TPR_ACCESS) C(KVM_EXIT_NMI)
  C(KVM_EXIT_IO_IN) C(KVM_EXIT_IO_OUT)
  C(KVM_SYSTEM_EVENT_SHUTDOWN) C(KVM_SYSTEM_EVENT_RESET) C(KVM_SYSTEM_EVENT_CRASH)
  C(KVM_CAP_IRQCHIP) C(KVM_CAP_USER_MEMORY) C(KVM_CAP_SET_TSS_ADDR) C(KVM_CAP_EXT_CPUID) C(KVM_CAP_NR_VCPUS)
  C(KVM_CAP_MAX_VCPUS) C(KVM_CAP_NR_MEMSLOTS) C(KVM_CAP_PIT2) C(KVM_CAP_IRQFD) C(KVM_CAP_IRQFD_RESAMPLE)
  C(KVM_CAP_IOEVENTFD) C(KVM_CAP_IRQ_ROUTING) C(KVM_CAP_SIGNAL_MSI) C(KVM_CAP_DEVICE_CTRL) C(KVM_CAP_IMMEDIATE_EXIT)
  C(KVM_CAP_SET_IDENTITY_MAP_ADDR) C(KVM_CAP_READONLY_MEM) C(KVM_CAP_X86_ROBUST_SINGLESTEP)
  C(KVM_MEM_READONLY) C(KVM_MEM_LOG_DIRTY_PAGES)
  C(KVM_IRQFD_FLAG_DEASSIGN) C(KVM_IRQFD_FLAG_RESAMPLE)
  C(KVM_IOEVENTFD_FLAG_DATAMATCH) C(KVM_IOEVENTFD_FLAG_PIO) C(KVM_IOEVENTFD_FLAG_DEASSIGN)
  C(KVM_IRQCHIP_PIC_MASTER) C(KVM_IRQCHIP_PIC_SLAVE) C(KVM_IRQCHIP_IOAPIC)
  C(KVM_DEV_TYPE_VFIO) C(KVM_DEV_VFIO_GROUP) C(KVM_DEV_VFIO_GROUP_ADD) C(KVM_DEV_VFIO_GROUP_DEL)
  C(KVM_PIT_SPEAKER_DUMMY)
#undef C
  exports.Set("constants", c);
}

}  // namespace tsvmm
