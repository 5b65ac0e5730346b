// iommufd (/dev/iommu) ioctls: IOAS allocation, IOVA ranges, map/unmap, options. Every
// command struct starts with its own size (sizeof the struct as of the 6.12 uapi).
#include "util.h"
#include <linux/iommufd.h>
#include <sys/ioctl.h>
#include <vector>

namespace tsvmm {



// iommuIoasAlloc(iommufd) → ioasId
static Napi::Value IommuIoasAlloc(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  iommu_ioas_alloc a = {};
  a.size = sizeof(a);
  IOCTL(ArgInt(info, 0), IOMMU_IOAS_ALLOC, &a);
  return Napi::Number::New(env, a.out_ioas_id);
}

// iommuDestroy(iommufd, id)
static Napi::Value IommuDestroy(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  iommu_destroy d = {};
  d.size = sizeof(d);
  d.id = ArgU32(info, 1);
  IOCTL(fd, IOMMU_DESTROY, &d);
  return env.Undefined();
}

// iommuIoasIovaRanges(iommufd, ioasId) → { ranges: [{start, last}], outIovaAlignment }
// The kernel fills as many ranges as fit and fails with EMSGSIZE (after writing back the
// needed num_iovas) when the array was too small; retry with that count.
static Napi::Value IommuIoasIovaRanges(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  uint32_t ioas = ArgU32(info, 1);
  uint32_t n = 8;
  std::vector<iommu_iova_range> ranges;
  iommu_ioas_iova_ranges r = {};
  for (int attempt = 0;; attempt++) {
    ranges.assign(n, iommu_iova_range{});
    r = {};
    r.size = sizeof(r);
    r.ioas_id = ioas;
    r.num_iovas = n;
    r.allowed_iovas = reinterpret_cast<uint64_t>(ranges.data());
    if (IoctlRetry(fd, IOMMU_IOAS_IOVA_RANGES, &r) == 0) break;
    int err = errno;
    if (err == EMSGSIZE && attempt < 4 && r.num_iovas > n && r.num_iovas <= 65536) {
      n = r.num_iovas;
      continue;
    }
    ThrowErrno(env, "ioctl(IOMMU_IOAS_IOVA_RANGES)", err);
  }
  uint32_t count = r.num_iovas < n ? r.num_iovas : n;
  Napi::Array a = Napi::Array::New(env, count);
  for (uint32_t i = 0; i < count; i++) {
    Napi::Object e = Napi::Object::New(env);
    e.Set("start", U64ToJs(env, ranges[i].start));
    e.Set("last", U64ToJs(env, ranges[i].last));
    a.Set(i, e);
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("ranges", a);
  o.Set("outIovaAlignment", U64ToJs(env, r.out_iova_alignment));
  return o;
}

// iommuIoasMap(iommufd, {ioasId, flags, userVa, length, iova?}) → iova (bigint; chosen by the
// kernel unless IOMMU_IOAS_MAP_FIXED_IOVA)
static Napi::Value IommuIoasMap(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  Napi::Object o = ArgObject(info, 1);
  iommu_ioas_map m = {};
  m.size = sizeof(m);
  m.flags = PropU32(o, "flags");
  m.ioas_id = PropU32(o, "ioasId");
  m.user_va = ReqU64(o, "userVa");
  m.length = ReqU64(o, "length");
  m.iova = (m.flags & IOMMU_IOAS_MAP_FIXED_IOVA) ? ReqU64(o, "iova") : PropU64(o, "iova");
  IOCTL(fd, IOMMU_IOAS_MAP, &m);
  return U64ToJs(env, m.iova);
}

// iommuIoasUnmap(iommufd, {ioasId, iova, length}) → bytes unmapped (bigint).
// iova 0 with length 0xffffffffffffffffn unmaps everything.
static Napi::Value IommuIoasUnmap(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  Napi::Object o = ArgObject(info, 1);
  iommu_ioas_unmap u = {};
  u.size = sizeof(u);
  u.ioas_id = PropU32(o, "ioasId");
  u.iova = ReqU64(o, "iova");
  u.length = ReqU64(o, "length");
  IOCTL(fd, IOMMU_IOAS_UNMAP, &u);
  return U64ToJs(env, u.length);
}

// iommuIoasMapAt(iommufd, ioasId, iova, length, userVa, flags): IOMMU_IOAS_MAP at a fixed IOVA
// (IOMMU_IOAS_MAP_FIXED_IOVA is added), its fields as arguments (util.h's plain N-API): the call a
// guest MAP makes behind the vIOMMU.
static napi_value IommuIoasMapAt(napi_env env, napi_callback_info info) {
  napi_value a[6];
  int32_t fd;
  uint64_t ioas, iova, length, va, flags;
  if (!RawArgs(env, info, 6, a, "iommuIoasMapAt") || !RawI32(env, a[0], &fd, "iommufd") ||
      !RawU64(env, a[1], &ioas, "ioasId") || !RawU64(env, a[2], &iova, "iova") ||
      !RawU64(env, a[3], &length, "length") || !RawU64(env, a[4], &va, "userVa") ||
      !RawU64(env, a[5], &flags, "flags"))
    return nullptr;
  iommu_ioas_map m = {};
  m.size = sizeof(m);
  m.iova = iova;
  m.length = length;
  m.user_va = va;
  m.ioas_id = static_cast<uint32_t>(ioas);
  m.flags = static_cast<uint32_t>(flags) | IOMMU_IOAS_MAP_FIXED_IOVA;
  if (IoctlRetry(fd, IOMMU_IOAS_MAP, &m) < 0) return RawThrowErrno(env, "ioctl(IOMMU_IOAS_MAP)", errno);
  return nullptr;
}

// iommuIoasUnmapAt(iommufd, ioasId, iova, length) → bytes unmapped (a number).
static napi_value IommuIoasUnmapAt(napi_env env, napi_callback_info info) {
  napi_value a[4];
  int32_t fd;
  uint64_t ioas, iova, length;
  if (!RawArgs(env, info, 4, a, "iommuIoasUnmapAt") || !RawI32(env, a[0], &fd, "iommufd") ||
      !RawU64(env, a[1], &ioas, "ioasId") || !RawU64(env, a[2], &iova, "iova") ||
      !RawU64(env, a[3], &length, "length"))
    return nullptr;
  iommu_ioas_unmap u = {};
  u.size = sizeof(u);
  u.iova = iova;
  u.length = length;
  u.ioas_id = static_cast<uint32_t>(ioas);
  if (IoctlRetry(fd, IOMMU_IOAS_UNMAP, &u) < 0) return RawThrowErrno(env, "ioctl(IOMMU_IOAS_UNMAP)", errno);
  return RawNumber(env, static_cast<double>(u.length));
}

// iommuOption(iommufd, {option, op, objectId?, val64?}) → val64 (bigint; the value read for OP_GET)
static Napi::Value IommuOption(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  Napi::Object o = ArgObject(info, 1);
  iommu_option p = {};
  p.size = sizeof(p);
  if (!o.Get("option").IsNumber() || !o.Get("op").IsNumber())
    throw Napi::TypeError::New(env, "iommuOption: properties option and op are required numbers");
  p.option_id = PropU32(o, "option");
  uint32_t op = PropU32(o, "op");
  if (op > 0xffff) throw Napi::RangeError::New(env, "property op must fit in 16 bits");
  p.op = static_cast<uint16_t>(op);
  p.object_id = PropU32(o, "objectId");
  p.val64 = PropU64(o, "val64");
  IOCTL(fd, IOMMU_OPTION, &p);
  return U64ToJs(env, p.val64);
}

void InitIommufd(Napi::Env env, Napi::Object exports) {
  TSVMM_EXPORT(exports, "iommuIoasAlloc", IommuIoasAlloc);
  TSVMM_EXPORT(exports, "iommuDestroy", IommuDestroy);
  TSVMM_EXPORT(exports, "iommuIoasIovaRanges", IommuIoasIovaRanges);
  TSVMM_EXPORT(exports, "iommuIoasMap", IommuIoasMap);
  TSVMM_EXPORT(exports, "iommuIoasUnmap", IommuIoasUnmap);
  ExportRaw(env, exports, "iommuIoasMapAt", IommuIoasMapAt);
  ExportRaw(env, exports, "iommuIoasUnmapAt", IommuIoasUnmapAt);
  TSVMM_EXPORT(exports, "iommuOption", IommuOption);

  Napi::Object c = exports.Has("constants") ? exports.Get("constants").As<Napi::Object>() : Napi::Object::New(env);
#define C(x) c.Set(#x, Napi::Number::New(env, static_cast<uint32_t>(x)));
  C(IOMMU_IOAS_MAP_FIXED_IOVA) C(IOMMU_IOAS_MAP_WRITEABLE) C(IOMMU_IOAS_MAP_READABLE)
  C(IOMMU_OPTION_RLIMIT_MODE) C(IOMMU_OPTION_HUGE_PAGES) C(IOMMU_OPTION_OP_SET) C(IOMMU_OPTION_OP_GET)
#undef C
  exports.Set("constants", c);
}

}  // namespace tsvmm
