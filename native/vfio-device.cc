// VFIO device ioctls: device, region and IRQ info, interrupts (SET_IRQS), resets, and the
// cdev/iommufd device-side binding. Region reads/writes go through node:fs on the device fd.
#include "util.h"
#include "vfio-info.h"
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <cstddef>
#include <vector>

namespace tsvmm {

// ---- device ----

// vfioDeviceGetInfo(deviceFd) → { flags, numRegions, numIrqs }  (device caps not decoded)
static Napi::Value VfioDeviceGetInfo(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  vfio_device_info d = {};
  d.argsz = sizeof(d);
  IOCTL(ArgInt(info, 0), VFIO_DEVICE_GET_INFO, &d);
  Napi::Object o = Napi::Object::New(env);
  o.Set("flags", d.flags);
  o.Set("numRegions", d.num_regions);
  o.Set("numIrqs", d.num_irqs);
  return o;
}

// vfioDeviceGetRegionInfo(deviceFd, index) →
//   { index, flags, size, offset, caps: { sparseMmap?, type?, msixMappable } }
static Napi::Value VfioDeviceGetRegionInfo(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  uint32_t index = ArgU32(info, 1);
  std::vector<uint8_t> buf = InfoWithCaps(env, fd, VFIO_DEVICE_GET_REGION_INFO, "VFIO_DEVICE_GET_REGION_INFO",
                                          sizeof(vfio_region_info), [index](uint8_t *p) {
                                            memcpy(p + offsetof(vfio_region_info, index), &index, sizeof(index));
                                          });
  vfio_region_info ri = Load<vfio_region_info>(buf, 0);
  Napi::Object o = Napi::Object::New(env);
  o.Set("index", ri.index);
  o.Set("flags", ri.flags);
  o.Set("size", U64ToJs(env, ri.size));
  o.Set("offset", U64ToJs(env, ri.offset));
  Napi::Object caps = Napi::Object::New(env);
  bool msixMappable = false;
  if (ri.flags & VFIO_REGION_INFO_FLAG_CAPS) {
    WalkCaps(buf, sizeof(vfio_region_info), ri.cap_offset, [&](const vfio_info_cap_header &h, size_t off) {
      if (h.id == VFIO_REGION_INFO_CAP_SPARSE_MMAP) {
        if (off + sizeof(vfio_region_info_cap_sparse_mmap) > buf.size()) return;
        uint32_t n = Load<uint32_t>(buf, off + offsetof(vfio_region_info_cap_sparse_mmap, nr_areas));
        const size_t base = off + offsetof(vfio_region_info_cap_sparse_mmap, areas);
        if (base + static_cast<size_t>(n) * sizeof(vfio_region_sparse_mmap_area) > buf.size()) return;
        Napi::Array a = Napi::Array::New(env, n);
        for (uint32_t i = 0; i < n; i++) {
          vfio_region_sparse_mmap_area r = Load<vfio_region_sparse_mmap_area>(buf, base + i * sizeof(vfio_region_sparse_mmap_area));
          Napi::Object e = Napi::Object::New(env);
          e.Set("offset", U64ToJs(env, r.offset));
          e.Set("size", U64ToJs(env, r.size));
          a.Set(i, e);
        }
        caps.Set("sparseMmap", a);
      } else if (h.id == VFIO_REGION_INFO_CAP_TYPE) {
        if (off + sizeof(vfio_region_info_cap_type) > buf.size()) return;
        vfio_region_info_cap_type t = Load<vfio_region_info_cap_type>(buf, off);
        Napi::Object e = Napi::Object::New(env);
        e.Set("type", t.type);
        e.Set("subtype", t.subtype);
        caps.Set("type", e);
      } else if (h.id == VFIO_REGION_INFO_CAP_MSIX_MAPPABLE) {
        msixMappable = true;
      }
    });
  }
  caps.Set("msixMappable", msixMappable);
  o.Set("caps", caps);
  return o;
}

// vfioDeviceGetIrqInfo(deviceFd, index) → { index, flags, count }
static Napi::Value VfioDeviceGetIrqInfo(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  vfio_irq_info q = {};
  q.argsz = sizeof(q);
  q.index = ArgU32(info, 1);
  IOCTL(fd, VFIO_DEVICE_GET_IRQ_INFO, &q);
  Napi::Object o = Napi::Object::New(env);
  o.Set("index", q.index);
  o.Set("flags", q.flags);
  o.Set("count", q.count);
  return o;
}

// vfioDeviceSetIrqs(deviceFd, {index, start, flags, fds?, bools?, count?})
//   DATA_EVENTFD: payload = fds (int32 each, -1 = de-assign/skip), count = fds.length
//   DATA_BOOL:    payload = bools (u8 each), count = bools.length
//   DATA_NONE:    no payload, count required (0 with ACTION_TRIGGER disables the index)
static Napi::Value VfioDeviceSetIrqs(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  Napi::Object o = ArgObject(info, 1);
  uint32_t flags = PropU32(o, "flags");
  uint32_t dataType = flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
  Napi::Value countV = o.Get("count");
  if (!countV.IsUndefined() && !countV.IsNumber()) throw Napi::TypeError::New(env, "property count must be a number");

  std::vector<uint8_t> payload;
  uint32_t count = 0;
  auto arrayProp = [&](const char *key) {
    Napi::Value v = o.Get(key);
    if (!v.IsArray()) throw Napi::TypeError::New(env, std::string("vfioDeviceSetIrqs: property ") + key + " must be an array for this data type");
    Napi::Array a = v.As<Napi::Array>();
    if (!countV.IsUndefined() && countV.As<Napi::Number>().Uint32Value() != a.Length())
      throw Napi::RangeError::New(env, std::string("vfioDeviceSetIrqs: count differs from ") + key + ".length");
    return a;
  };
  if (dataType == VFIO_IRQ_SET_DATA_EVENTFD) {
    Napi::Array a = arrayProp("fds");
    count = a.Length();
    payload.resize(static_cast<size_t>(count) * sizeof(int32_t));
    for (uint32_t i = 0; i < count; i++) {
      Napi::Value v = a.Get(i);
      if (!v.IsNumber()) throw Napi::TypeError::New(env, "vfioDeviceSetIrqs: fds must be numbers (-1 to de-assign)");
      int32_t e = v.As<Napi::Number>().Int32Value();
      memcpy(payload.data() + i * sizeof(int32_t), &e, sizeof(e));
    }
  } else if (dataType == VFIO_IRQ_SET_DATA_BOOL) {
    Napi::Array a = arrayProp("bools");
    count = a.Length();
    payload.resize(count);
    for (uint32_t i = 0; i < count; i++) {
      Napi::Value v = a.Get(i);
      if (!v.IsBoolean() && !v.IsNumber()) throw Napi::TypeError::New(env, "vfioDeviceSetIrqs: bools must be booleans");
      payload[i] = v.ToBoolean().Value() ? 1 : 0;
    }
  } else if (dataType == VFIO_IRQ_SET_DATA_NONE) {
    if (countV.IsUndefined()) throw Napi::TypeError::New(env, "vfioDeviceSetIrqs: count is required with VFIO_IRQ_SET_DATA_NONE");
    count = countV.As<Napi::Number>().Uint32Value();
  } else {
    throw Napi::RangeError::New(env, "vfioDeviceSetIrqs: flags must contain exactly one of VFIO_IRQ_SET_DATA_NONE/BOOL/EVENTFD");
  }

  std::vector<uint8_t> buf(sizeof(vfio_irq_set) + payload.size(), 0);
  auto *s = reinterpret_cast<vfio_irq_set *>(buf.data());
  s->argsz = static_cast<uint32_t>(buf.size());
  s->flags = flags;
  s->index = PropU32(o, "index");
  s->start = PropU32(o, "start");
  s->count = count;
  if (!payload.empty()) memcpy(buf.data() + offsetof(vfio_irq_set, data), payload.data(), payload.size());
  IOCTL(fd, VFIO_DEVICE_SET_IRQS, s);
  return env.Undefined();
}

// vfioDeviceReset(deviceFd)
static Napi::Value VfioDeviceReset(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  IOCTL(ArgInt(info, 0), VFIO_DEVICE_RESET, nullptr);
  return env.Undefined();
}

// vfioDeviceGetPciHotResetInfo(deviceFd) → { flags, devices: [{groupId | devid, segment, bus, devfn}] }
// Entries carry devid (signed: 0 = owned, -1 = not owned) when flags has
// VFIO_PCI_HOT_RESET_FLAG_DEV_ID (cdev-opened device), groupId otherwise.
static Napi::Value VfioDeviceGetPciHotResetInfo(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  uint32_t n = 8;
  std::vector<uint8_t> buf;
  for (int attempt = 0;; attempt++) {
    buf.assign(sizeof(vfio_pci_hot_reset_info) + static_cast<size_t>(n) * sizeof(vfio_pci_dependent_device), 0);
    auto *h = reinterpret_cast<vfio_pci_hot_reset_info *>(buf.data());
    h->argsz = static_cast<uint32_t>(buf.size());
    if (IoctlRetry(fd, VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, h) == 0) break;
    int err = errno;
    // ENOSPC: the kernel reports the needed count in h->count.
    if (err == ENOSPC && attempt < 4 && h->count > n && h->count <= 4096) {
      n = h->count;
      continue;
    }
    ThrowErrno(env, "ioctl(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO)", err);
  }
  vfio_pci_hot_reset_info h = Load<vfio_pci_hot_reset_info>(buf, 0);
  uint32_t count = h.count < n ? h.count : n;
  bool devid = (h.flags & VFIO_PCI_HOT_RESET_FLAG_DEV_ID) != 0;
  Napi::Array a = Napi::Array::New(env, count);
  for (uint32_t i = 0; i < count; i++) {
    vfio_pci_dependent_device d = Load<vfio_pci_dependent_device>(
        buf, offsetof(vfio_pci_hot_reset_info, devices) + i * sizeof(vfio_pci_dependent_device));
    Napi::Object e = Napi::Object::New(env);
    if (devid) e.Set("devid", static_cast<int32_t>(d.devid));
    else e.Set("groupId", d.group_id);
    e.Set("segment", d.segment);
    e.Set("bus", d.bus);
    e.Set("devfn", d.devfn);
    a.Set(i, e);
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("flags", h.flags);
  o.Set("devices", a);
  return o;
}

// vfioDevicePciHotReset(deviceFd, groupFds: number[]) — group fds prove ownership of every
// affected device (empty for a cdev-opened device whose iommufd owns them all).
static Napi::Value VfioDevicePciHotReset(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  if (info.Length() < 2 || !info[1].IsArray()) throw Napi::TypeError::New(env, "vfioDevicePciHotReset(deviceFd, groupFds[])");
  Napi::Array a = info[1].As<Napi::Array>();
  uint32_t n = a.Length();
  std::vector<uint8_t> buf(sizeof(vfio_pci_hot_reset) + static_cast<size_t>(n) * sizeof(int32_t), 0);
  auto *r = reinterpret_cast<vfio_pci_hot_reset *>(buf.data());
  r->argsz = static_cast<uint32_t>(buf.size());
  r->count = n;
  for (uint32_t i = 0; i < n; i++) {
    Napi::Value v = a.Get(i);
    if (!v.IsNumber()) throw Napi::TypeError::New(env, "vfioDevicePciHotReset: groupFds must be numbers");
    int32_t g = v.As<Napi::Number>().Int32Value();
    memcpy(buf.data() + offsetof(vfio_pci_hot_reset, group_fds) + i * sizeof(int32_t), &g, sizeof(g));
  }
  IOCTL(fd, VFIO_DEVICE_PCI_HOT_RESET, r);
  return env.Undefined();
}

// ---- cdev device fd (/dev/vfio/devices/vfioN) with iommufd ----

// vfioDeviceBindIommufd(deviceFd, iommufd) → devid
static Napi::Value VfioDeviceBindIommufd(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  vfio_device_bind_iommufd b = {};
  b.argsz = sizeof(b);
  b.flags = 0;
  b.iommufd = ArgInt(info, 1);
  IOCTL(fd, VFIO_DEVICE_BIND_IOMMUFD, &b);
  return Napi::Number::New(env, b.out_devid);
}

// vfioDeviceAttachIommufdPt(deviceFd, ptId) → the id actually attached (IOAS id or hwpt id)
static Napi::Value VfioDeviceAttachIommufdPt(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  vfio_device_attach_iommufd_pt a = {};
  a.argsz = sizeof(a);
  a.flags = 0;
  a.pt_id = ArgU32(info, 1);
  IOCTL(fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &a);
  return Napi::Number::New(env, a.pt_id);
}

// vfioDeviceDetachIommufdPt(deviceFd)
static Napi::Value VfioDeviceDetachIommufdPt(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  vfio_device_detach_iommufd_pt d = {};
  d.argsz = sizeof(d);
  d.flags = 0;
  IOCTL(ArgInt(info, 0), VFIO_DEVICE_DETACH_IOMMUFD_PT, &d);
  return env.Undefined();
}
void InitVfioDevice(Napi::Env env, Napi::Object exports) {
  TSVMM_EXPORT(exports, "vfioDeviceGetInfo", VfioDeviceGetInfo);
  TSVMM_EXPORT(exports, "vfioDeviceGetRegionInfo", VfioDeviceGetRegionInfo);
  TSVMM_EXPORT(exports, "vfioDeviceGetIrqInfo", VfioDeviceGetIrqInfo);
  TSVMM_EXPORT(exports, "vfioDeviceSetIrqs", VfioDeviceSetIrqs);
  TSVMM_EXPORT(exports, "vfioDeviceReset", VfioDeviceReset);
  TSVMM_EXPORT(exports, "vfioDeviceGetPciHotResetInfo", VfioDeviceGetPciHotResetInfo);
  TSVMM_EXPORT(exports, "vfioDevicePciHotReset", VfioDevicePciHotReset);
  TSVMM_EXPORT(exports, "vfioDeviceBindIommufd", VfioDeviceBindIommufd);
  TSVMM_EXPORT(exports, "vfioDeviceAttachIommufdPt", VfioDeviceAttachIommufdPt);
  TSVMM_EXPORT(exports, "vfioDeviceDetachIommufdPt", VfioDeviceDetachIommufdPt);

  Napi::Object c = exports.Has("constants") ? exports.Get("constants").As<Napi::Object>() : Napi::Object::New(env);
#define C(x) c.Set(#x, Napi::Number::New(env, static_cast<uint32_t>(x)));
  C(VFIO_DEVICE_FLAGS_RESET) C(VFIO_DEVICE_FLAGS_PCI) C(VFIO_DEVICE_FLAGS_CAPS)
  C(VFIO_REGION_INFO_FLAG_READ) C(VFIO_REGION_INFO_FLAG_WRITE) C(VFIO_REGION_INFO_FLAG_MMAP) C(VFIO_REGION_INFO_FLAG_CAPS)
  C(VFIO_REGION_INFO_CAP_SPARSE_MMAP) C(VFIO_REGION_INFO_CAP_TYPE) C(VFIO_REGION_INFO_CAP_MSIX_MAPPABLE)
  C(VFIO_REGION_TYPE_PCI_VENDOR_TYPE) C(VFIO_REGION_TYPE_PCI_VENDOR_MASK) C(VFIO_REGION_TYPE_GFX)
  C(VFIO_REGION_SUBTYPE_INTEL_IGD_OPREGION) C(VFIO_REGION_SUBTYPE_INTEL_IGD_HOST_CFG) C(VFIO_REGION_SUBTYPE_INTEL_IGD_LPC_CFG)
  C(VFIO_PCI_BAR0_REGION_INDEX) C(VFIO_PCI_BAR1_REGION_INDEX) C(VFIO_PCI_BAR2_REGION_INDEX) C(VFIO_PCI_BAR3_REGION_INDEX)
  C(VFIO_PCI_BAR4_REGION_INDEX) C(VFIO_PCI_BAR5_REGION_INDEX) C(VFIO_PCI_ROM_REGION_INDEX) C(VFIO_PCI_CONFIG_REGION_INDEX)
  C(VFIO_PCI_VGA_REGION_INDEX) C(VFIO_PCI_NUM_REGIONS)
  C(VFIO_PCI_INTX_IRQ_INDEX) C(VFIO_PCI_MSI_IRQ_INDEX) C(VFIO_PCI_MSIX_IRQ_INDEX) C(VFIO_PCI_ERR_IRQ_INDEX)
  C(VFIO_PCI_REQ_IRQ_INDEX) C(VFIO_PCI_NUM_IRQS)
  C(VFIO_IRQ_INFO_EVENTFD) C(VFIO_IRQ_INFO_MASKABLE) C(VFIO_IRQ_INFO_AUTOMASKED) C(VFIO_IRQ_INFO_NORESIZE)
  C(VFIO_IRQ_SET_DATA_NONE) C(VFIO_IRQ_SET_DATA_BOOL) C(VFIO_IRQ_SET_DATA_EVENTFD)
  C(VFIO_IRQ_SET_ACTION_MASK) C(VFIO_IRQ_SET_ACTION_UNMASK) C(VFIO_IRQ_SET_ACTION_TRIGGER)
  C(VFIO_PCI_HOT_RESET_FLAG_DEV_ID) C(VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED)
#undef C
  exports.Set("constants", c);
}

}  // namespace tsvmm
