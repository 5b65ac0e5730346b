// KVM system and VM ioctls (fds of /dev/kvm and of KVM_CREATE_VM), plus KVM device fds.
#include "util.h"
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <vector>

namespace tsvmm {


// Ioctls whose argument is a plain integer.
static Napi::Value IoctlInt(const Napi::CallbackInfo &info, unsigned long req, const char *name) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  unsigned long arg = info.Length() > 1 ? static_cast<unsigned long>(ArgU64(info, 1)) : 0;
  int r = IoctlRetry(fd, req, reinterpret_cast<void *>(arg));
  if (r < 0) ThrowErrno(env, std::string("ioctl(") + name + ")", errno);
  return Napi::Number::New(env, r);
}
#define INT_IOCTL(jsname, req) \
  static Napi::Value jsname(const Napi::CallbackInfo &info) { return IoctlInt(info, req, #req); }

INT_IOCTL(KvmGetApiVersion, KVM_GET_API_VERSION)
INT_IOCTL(KvmCreateVm, KVM_CREATE_VM)
INT_IOCTL(KvmCheckExtension, KVM_CHECK_EXTENSION)
INT_IOCTL(KvmGetVcpuMmapSize, KVM_GET_VCPU_MMAP_SIZE)
INT_IOCTL(KvmCreateVcpu, KVM_CREATE_VCPU)
INT_IOCTL(KvmSetTssAddr, KVM_SET_TSS_ADDR)
INT_IOCTL(KvmCreateIrqchip, KVM_CREATE_IRQCHIP)

static Napi::Value KvmSetIdentityMapAddr(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  __u64 addr = ArgU64(info, 1);
  IOCTL(ArgInt(info, 0), KVM_SET_IDENTITY_MAP_ADDR, &addr);
  return env.Undefined();
}

static Napi::Value KvmCreatePit2(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  struct kvm_pit_config pit = {};
  pit.flags = info.Length() > 1 ? ArgU32(info, 1) : 0;
  IOCTL(ArgInt(info, 0), KVM_CREATE_PIT2, &pit);
  return env.Undefined();
}

// kvmSetUserMemoryRegion(vmfd, {slot, flags, guestPhysAddr, memorySize, userspaceAddr})
static Napi::Value KvmSetUserMemoryRegion(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Object o = ArgObject(info, 1);
  struct kvm_userspace_memory_region r = {};
  r.slot = PropU32(o, "slot");
  r.flags = PropU32(o, "flags");
  r.guest_phys_addr = PropU64(o, "guestPhysAddr");
  r.memory_size = PropU64(o, "memorySize");
  r.userspace_addr = PropU64(o, "userspaceAddr");
  IOCTL(ArgInt(info, 0), KVM_SET_USER_MEMORY_REGION, &r);
  return env.Undefined();
}

// kvmIrqfd(vmfd, {fd, gsi, flags, resamplefd})
static Napi::Value KvmIrqfd(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Object o = ArgObject(info, 1);
  struct kvm_irqfd r = {};
  r.fd = PropU32(o, "fd");
  r.gsi = PropU32(o, "gsi");
  r.flags = PropU32(o, "flags");
  r.resamplefd = PropU32(o, "resamplefd");
  IOCTL(ArgInt(info, 0), KVM_IRQFD, &r);
  return env.Undefined();
}

// kvmIoeventfd(vmfd, {datamatch, addr, len, fd, flags})
static Napi::Value KvmIoeventfd(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Object o = ArgObject(info, 1);
  struct kvm_ioeventfd r = {};
  r.datamatch = PropU64(o, "datamatch");
  r.addr = PropU64(o, "addr");
  r.len = PropU32(o, "len");
  r.fd = PropI32(o, "fd", -1);
  r.flags = PropU32(o, "flags");
  IOCTL(ArgInt(info, 0), KVM_IOEVENTFD, &r);
  return env.Undefined();
}

// kvmSetGsiRouting(vmfd, [{gsi, type:'msi', addressLo, addressHi, data} | {gsi, type:'irqchip', irqchip, pin}])
static Napi::Value KvmSetGsiRouting(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[1].IsArray()) throw Napi::TypeError::New(env, "kvmSetGsiRouting(vmfd, entries[])");
  Napi::Array a = info[1].As<Napi::Array>();
  uint32_t n = a.Length();
  std::vector<uint8_t> buf(sizeof(kvm_irq_routing) + n * sizeof(kvm_irq_routing_entry), 0);
  auto *rt = reinterpret_cast<kvm_irq_routing *>(buf.data());
  rt->nr = n;
  for (uint32_t i = 0; i < n; i++) {
    Napi::Object e = a.Get(i).As<Napi::Object>();
    kvm_irq_routing_entry &k = rt->entries[i];
    k.gsi = PropU32(e, "gsi");
    std::string type = e.Get("type").ToString().Utf8Value();
    if (type == "msi") {
      k.type = KVM_IRQ_ROUTING_MSI;
      k.u.msi.address_lo = PropU32(e, "addressLo");
      k.u.msi.address_hi = PropU32(e, "addressHi");
      k.u.msi.data = PropU32(e, "data");
    } else if (type == "irqchip") {
      k.type = KVM_IRQ_ROUTING_IRQCHIP;
      k.u.irqchip.irqchip = PropU32(e, "irqchip");
      k.u.irqchip.pin = PropU32(e, "pin");
    } else {
      throw Napi::TypeError::New(env, "routing entry type must be 'msi' or 'irqchip'");
    }
  }
  IOCTL(ArgInt(info, 0), KVM_SET_GSI_ROUTING, rt);
  return env.Undefined();
}

// kvmSignalMsi(vmfd, {addressLo, addressHi, data}) → 1 delivered, 0 blocked by the guest
static Napi::Value KvmSignalMsi(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Object o = ArgObject(info, 1);
  struct kvm_msi m = {};
  m.address_lo = PropU32(o, "addressLo");
  m.address_hi = PropU32(o, "addressHi");
  m.data = PropU32(o, "data");
  return Napi::Number::New(env, IOCTL(ArgInt(info, 0), KVM_SIGNAL_MSI, &m));
}

// kvmIrqLine(vmfd, irq, level)
static Napi::Value KvmIrqLine(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  struct kvm_irq_level l = {};
  l.irq = ArgU32(info, 1);
  l.level = ArgU32(info, 2);
  IOCTL(ArgInt(info, 0), KVM_IRQ_LINE, &l);
  return env.Undefined();
}

// kvmCreateDevice(vmfd, type) → device fd
static Napi::Value KvmCreateDevice(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  struct kvm_create_device d = {};
  d.type = ArgU32(info, 1);
  IOCTL(ArgInt(info, 0), KVM_CREATE_DEVICE, &d);
  return Napi::Number::New(env, d.fd);
}

// kvmSetDeviceAttr(devfd, group, attr, value:int) — the attribute's payload is an int
// (the only kind the KVM-VFIO device takes: a VFIO group or device fd).
static Napi::Value KvmSetDeviceAttr(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int32_t value = ArgInt(info, 3);
  struct kvm_device_attr a = {};
  a.group = ArgU32(info, 1);
  a.attr = ArgU64(info, 2);
  a.addr = reinterpret_cast<uint64_t>(&value);
  IOCTL(ArgInt(info, 0), KVM_SET_DEVICE_ATTR, &a);
  return env.Undefined();
}

// kvmGetSupportedCpuid(kvmfd) → [{function, index, flags, eax, ebx, ecx, edx}]
static Napi::Value KvmGetSupportedCpuid(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  for (uint32_t n = 64;; n *= 2) {
    std::vector<uint8_t> buf(sizeof(kvm_cpuid2) + n * sizeof(kvm_cpuid_entry2), 0);
    auto *c = reinterpret_cast<kvm_cpuid2 *>(buf.data());
    c->nent = n;
    if (IoctlRetry(fd, KVM_GET_SUPPORTED_CPUID, c) < 0) {
      if (errno == E2BIG && n < 4096) continue;
      ThrowErrno(env, "ioctl(KVM_GET_SUPPORTED_CPUID)", errno);
    }
    Napi::Array a = Napi::Array::New(env, c->nent);
    for (uint32_t i = 0; i < c->nent; i++) {
      const kvm_cpuid_entry2 &e = c->entries[i];
      Napi::Object o = Napi::Object::New(env);
      o.Set("function", e.function);
      o.Set("index", e.index);
      o.Set("flags", e.flags);
      o.Set("eax", e.eax);
      o.Set("ebx", e.ebx);
      o.Set("ecx", e.ecx);
      o.Set("edx", e.edx);
      a.Set(i, o);
    }
    return a;
  }
}

void InitKvm(Napi::Env env, Napi::Object exports) {
  TSVMM_EXPORT(exports, "kvmGetApiVersion", KvmGetApiVersion);
  TSVMM_EXPORT(exports, "kvmCreateVm", KvmCreateVm);
  TSVMM_EXPORT(exports, "kvmCheckExtension", KvmCheckExtension);
  TSVMM_EXPORT(exports, "kvmGetVcpuMmapSize", KvmGetVcpuMmapSize);
  TSVMM_EXPORT(exports, "kvmCreateVcpu", KvmCreateVcpu);
  TSVMM_EXPORT(exports, "kvmSetTssAddr", KvmSetTssAddr);
  TSVMM_EXPORT(exports, "kvmSetIdentityMapAddr", KvmSetIdentityMapAddr);
  TSVMM_EXPORT(exports, "kvmCreateIrqchip", KvmCreateIrqchip);
  TSVMM_EXPORT(exports, "kvmCreatePit2", KvmCreatePit2);
  TSVMM_EXPORT(exports, "kvmSetUserMemoryRegion", KvmSetUserMemoryRegion);
  TSVMM_EXPORT(exports, "kvmIrqfd", KvmIrqfd);
  TSVMM_EXPORT(exports, "kvmIoeventfd", KvmIoeventfd);
  TSVMM_EXPORT(exports, "kvmSetGsiRouting", KvmSetGsiRouting);
  TSVMM_EXPORT(exports, "kvmSignalMsi", KvmSignalMsi);
  TSVMM_EXPORT(exports, "kvmIrqLine", KvmIrqLine);
  TSVMM_EXPORT(exports, "kvmCreateDevice", KvmCreateDevice);
  TSVMM_EXPORT(exports, "kvmSetDeviceAttr", KvmSetDeviceAttr);
  TSVMM_EXPORT(exports, "kvmGetSupportedCpuid", KvmGetSupportedCpuid);
}

}  // namespace tsvmm
