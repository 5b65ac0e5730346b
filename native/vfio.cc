// VFIO container (/dev/vfio/vfio) and group (/dev/vfio/N) ioctls: the IOMMU and its DMA
// mappings, group viability and binding, and the device fds a group hands out. The device-side
// ioctls are in vfio-device.cc.
#include "util.h"
#include "vfio-info.h"
#include <linux/vfio.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <cstddef>
#include <vector>

namespace tsvmm {

// ---- container ----

// vfioGetApiVersion(containerFd) → VFIO_API_VERSION
static Napi::Value VfioGetApiVersion(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  return Napi::Number::New(env, IOCTL(ArgInt(info, 0), VFIO_GET_API_VERSION, nullptr));
}

// vfioCheckExtension(containerFd, ext) → >0 when supported
static Napi::Value VfioCheckExtension(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  unsigned long ext = ArgU32(info, 1);
  return Napi::Number::New(env, IOCTL(fd, VFIO_CHECK_EXTENSION, reinterpret_cast<void *>(ext)));
}

// vfioSetIommu(containerFd, type)
static Napi::Value VfioSetIommu(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  unsigned long type = ArgU32(info, 1);
  IOCTL(fd, VFIO_SET_IOMMU, reinterpret_cast<void *>(type));
  return env.Undefined();
}

// vfioIommuGetInfo(containerFd) → { flags, iovaPgsizes, capOffset, iovaRanges?, dmaAvail? }
static Napi::Value VfioIommuGetInfo(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  std::vector<uint8_t> buf = InfoWithCaps(env, fd, VFIO_IOMMU_GET_INFO, "VFIO_IOMMU_GET_INFO",
                                          sizeof(vfio_iommu_type1_info), [](uint8_t *) {});
  vfio_iommu_type1_info ii = Load<vfio_iommu_type1_info>(buf, 0);
  Napi::Object o = Napi::Object::New(env);
  o.Set("flags", ii.flags);
  o.Set("iovaPgsizes", U64ToJs(env, (ii.flags & VFIO_IOMMU_INFO_PGSIZES) ? ii.iova_pgsizes : 0));
  if (!(ii.flags & VFIO_IOMMU_INFO_CAPS)) return o;
  WalkCaps(buf, sizeof(vfio_iommu_type1_info), ii.cap_offset, [&](const vfio_info_cap_header &h, size_t off) {
    if (h.id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) {
      const size_t base = off + offsetof(vfio_iommu_type1_info_cap_iova_range, iova_ranges);
      if (off + sizeof(vfio_iommu_type1_info_cap_iova_range) > buf.size()) return;
      uint32_t n = Load<uint32_t>(buf, off + offsetof(vfio_iommu_type1_info_cap_iova_range, nr_iovas));
      if (base + static_cast<size_t>(n) * sizeof(vfio_iova_range) > buf.size()) return;
      Napi::Array a = Napi::Array::New(env, n);
      for (uint32_t i = 0; i < n; i++) {
        vfio_iova_range r = Load<vfio_iova_range>(buf, base + i * sizeof(vfio_iova_range));
        Napi::Object e = Napi::Object::New(env);
        e.Set("start", U64ToJs(env, r.start));
        e.Set("end", U64ToJs(env, r.end));
        a.Set(i, e);
      }
      o.Set("iovaRanges", a);
    } else if (h.id == VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL) {
      if (off + sizeof(vfio_iommu_type1_info_dma_avail) > buf.size()) return;
      o.Set("dmaAvail", Load<uint32_t>(buf, off + offsetof(vfio_iommu_type1_info_dma_avail, avail)));
    }
  });
  return o;
}

// vfioIommuMapDma(containerFd, {vaddr, iova, size, flags})
static Napi::Value VfioIommuMapDma(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  Napi::Object o = ArgObject(info, 1);
  vfio_iommu_type1_dma_map m = {};
  m.argsz = sizeof(m);
  m.flags = PropU32(o, "flags");
  m.vaddr = ReqU64(o, "vaddr");
  m.iova = ReqU64(o, "iova");
  m.size = ReqU64(o, "size");
  IOCTL(fd, VFIO_IOMMU_MAP_DMA, &m);
  return env.Undefined();
}

// vfioIommuUnmapDma(containerFd, {iova, size, flags}) → bytes unmapped (bigint)
static Napi::Value VfioIommuUnmapDma(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  Napi::Object o = ArgObject(info, 1);
  vfio_iommu_type1_dma_unmap u = {};
  u.argsz = sizeof(u);  // no dirty bitmap: data[] stays empty
  u.flags = PropU32(o, "flags");
  u.iova = PropU64(o, "iova");
  u.size = PropU64(o, "size");
  IOCTL(fd, VFIO_IOMMU_UNMAP_DMA, &u);
  return U64ToJs(env, u.size);
}

// vfioIommuMapDmaAt(containerFd, iova, size, vaddr, flags): VFIO_IOMMU_MAP_DMA with its fields as
// arguments (util.h's plain N-API): the call a guest MAP makes behind the vIOMMU.
static napi_value VfioIommuMapDmaAt(napi_env env, napi_callback_info info) {
  napi_value a[5];
  int32_t fd;
  uint64_t iova, size, vaddr, flags;
  if (!RawArgs(env, info, 5, a, "vfioIommuMapDmaAt") || !RawI32(env, a[0], &fd, "containerFd") ||
      !RawU64(env, a[1], &iova, "iova") || !RawU64(env, a[2], &size, "size") ||
      !RawU64(env, a[3], &vaddr, "vaddr") || !RawU64(env, a[4], &flags, "flags"))
    return nullptr;
  vfio_iommu_type1_dma_map m = {};
  m.argsz = sizeof(m);
  m.iova = iova;
  m.size = size;
  m.vaddr = vaddr;
  m.flags = static_cast<uint32_t>(flags);
  if (IoctlRetry(fd, VFIO_IOMMU_MAP_DMA, &m) < 0) return RawThrowErrno(env, "ioctl(VFIO_IOMMU_MAP_DMA)", errno);
  return nullptr;
}

// vfioIommuUnmapDmaAt(containerFd, iova, size) → bytes unmapped (a number): VFIO_IOMMU_UNMAP_DMA of
// every mapping wholly inside the range, no flags.
static napi_value VfioIommuUnmapDmaAt(napi_env env, napi_callback_info info) {
  napi_value a[3];
  int32_t fd;
  uint64_t iova, size;
  if (!RawArgs(env, info, 3, a, "vfioIommuUnmapDmaAt") || !RawI32(env, a[0], &fd, "containerFd") ||
      !RawU64(env, a[1], &iova, "iova") || !RawU64(env, a[2], &size, "size"))
    return nullptr;
  vfio_iommu_type1_dma_unmap u = {};
  u.argsz = sizeof(u);
  u.iova = iova;
  u.size = size;
  if (IoctlRetry(fd, VFIO_IOMMU_UNMAP_DMA, &u) < 0) return RawThrowErrno(env, "ioctl(VFIO_IOMMU_UNMAP_DMA)", errno);
  return RawNumber(env, static_cast<double>(u.size));
}

// ---- group ----

// vfioGroupGetStatus(groupFd) → { flags }
static Napi::Value VfioGroupGetStatus(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  vfio_group_status s = {};
  s.argsz = sizeof(s);
  IOCTL(ArgInt(info, 0), VFIO_GROUP_GET_STATUS, &s);
  Napi::Object o = Napi::Object::New(env);
  o.Set("flags", s.flags);
  return o;
}

// vfioGroupSetContainer(groupFd, containerFd)
static Napi::Value VfioGroupSetContainer(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  int32_t container = ArgInt(info, 1);
  IOCTL(fd, VFIO_GROUP_SET_CONTAINER, &container);
  return env.Undefined();
}

// vfioGroupUnsetContainer(groupFd)
static Napi::Value VfioGroupUnsetContainer(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  IOCTL(ArgInt(info, 0), VFIO_GROUP_UNSET_CONTAINER, nullptr);
  return env.Undefined();
}

// vfioGroupGetDeviceFd(groupFd, name) → device fd (O_CLOEXEC, set by the kernel)
static Napi::Value VfioGroupGetDeviceFd(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  if (info.Length() < 2 || !info[1].IsString()) throw Napi::TypeError::New(env, "vfioGroupGetDeviceFd(groupFd, name: string)");
  std::string name = info[1].As<Napi::String>().Utf8Value();
  return Napi::Number::New(env, IOCTL(fd, VFIO_GROUP_GET_DEVICE_FD, const_cast<char *>(name.c_str())));
}
void InitVfio(Napi::Env env, Napi::Object exports) {
  TSVMM_EXPORT(exports, "vfioGetApiVersion", VfioGetApiVersion);
  TSVMM_EXPORT(exports, "vfioCheckExtension", VfioCheckExtension);
  TSVMM_EXPORT(exports, "vfioSetIommu", VfioSetIommu);
  TSVMM_EXPORT(exports, "vfioIommuGetInfo", VfioIommuGetInfo);
  TSVMM_EXPORT(exports, "vfioIommuMapDma", VfioIommuMapDma);
  TSVMM_EXPORT(exports, "vfioIommuUnmapDma", VfioIommuUnmapDma);
  ExportRaw(env, exports, "vfioIommuMapDmaAt", VfioIommuMapDmaAt);
  ExportRaw(env, exports, "vfioIommuUnmapDmaAt", VfioIommuUnmapDmaAt);
  TSVMM_EXPORT(exports, "vfioGroupGetStatus", VfioGroupGetStatus);
  TSVMM_EXPORT(exports, "vfioGroupSetContainer", VfioGroupSetContainer);
  TSVMM_EXPORT(exports, "vfioGroupUnsetContainer", VfioGroupUnsetContainer);
  TSVMM_EXPORT(exports, "vfioGroupGetDeviceFd", VfioGroupGetDeviceFd);

  Napi::Object c = exports.Has("constants") ? exports.Get("constants").As<Napi::Object>() : Napi::Object::New(env);
#define C(x) c.Set(#x, Napi::Number::New(env, static_cast<uint32_t>(x)));
  C(VFIO_API_VERSION) C(VFIO_TYPE1_IOMMU) C(VFIO_TYPE1v2_IOMMU) C(VFIO_NOIOMMU_IOMMU) C(VFIO_UNMAP_ALL) C(VFIO_UPDATE_VADDR)
  C(VFIO_GROUP_FLAGS_VIABLE) C(VFIO_GROUP_FLAGS_CONTAINER_SET)
  C(VFIO_IOMMU_INFO_PGSIZES) C(VFIO_IOMMU_INFO_CAPS)
  C(VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) C(VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION) C(VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL)
  C(VFIO_DMA_MAP_FLAG_READ) C(VFIO_DMA_MAP_FLAG_WRITE) C(VFIO_DMA_MAP_FLAG_VADDR)
  C(VFIO_DMA_UNMAP_FLAG_ALL) C(VFIO_DMA_UNMAP_FLAG_VADDR)
  C(KVM_DEV_VFIO_FILE) C(KVM_DEV_VFIO_FILE_ADD) C(KVM_DEV_VFIO_FILE_DEL)
#undef C
  exports.Set("constants", c);
}

}  // namespace tsvmm
