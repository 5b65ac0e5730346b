// VFIO migration uAPI v2 (Linux 5.18+): VFIO_DEVICE_FEATURE on the device fd (migration flags,
// the migration state, the stop-copy size, the device's DMA dirty log) and
// VFIO_MIG_GET_PRECOPY_INFO on the data fd a state change returns. The data itself is read and
// written with read(2)/write(2) (node:fs) on that fd. No policy here: core/vfio/migration.ts
// walks the state machine.
#include "util.h"
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <cstddef>
#include <vector>

namespace tsvmm {

// struct vfio_device_feature followed by `payload` bytes of feature data.
static std::vector<uint8_t> FeatureBuf(uint32_t flags, size_t payload) {
  std::vector<uint8_t> buf(sizeof(vfio_device_feature) + payload, 0);
  auto *f = reinterpret_cast<vfio_device_feature *>(buf.data());
  f->argsz = static_cast<uint32_t>(buf.size());
  f->flags = flags;
  return buf;
}

// vfioDeviceFeatureProbe(deviceFd, feature, access) — VFIO_DEVICE_FEATURE_PROBE | access
// (VFIO_DEVICE_FEATURE_GET and/or _SET); returns undefined when the device offers the feature
// with that access, throws the errno (ENOTTY: not offered) otherwise.
static Napi::Value VfioDeviceFeatureProbe(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  uint32_t feature = ArgU32(info, 1), access = ArgU32(info, 2);
  if (feature > VFIO_DEVICE_FEATURE_MASK || (access & ~(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET)))
    throw Napi::RangeError::New(env, "vfioDeviceFeatureProbe: feature is 16 bits, access is GET and/or SET");
  std::vector<uint8_t> buf = FeatureBuf(VFIO_DEVICE_FEATURE_PROBE | access | feature, 0);
  CheckedIoctl(env, ArgInt(info, 0), VFIO_DEVICE_FEATURE, buf.data(), "VFIO_DEVICE_FEATURE(PROBE)");
  return env.Undefined();
}

// vfioDeviceMigrationFlags(deviceFd) → VFIO_MIGRATION_* flags (GET VFIO_DEVICE_FEATURE_MIGRATION).
static Napi::Value VfioDeviceMigrationFlags(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::vector<uint8_t> buf =
      FeatureBuf(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION, sizeof(vfio_device_feature_migration));
  CheckedIoctl(env, ArgInt(info, 0), VFIO_DEVICE_FEATURE, buf.data(), "VFIO_DEVICE_FEATURE(MIGRATION)");
  vfio_device_feature_migration m;
  memcpy(&m, buf.data() + sizeof(vfio_device_feature), sizeof(m));
  return Napi::Number::New(env, static_cast<double>(m.flags & 0xffffffffu));
}

// vfioDeviceMigGetState(deviceFd) → the device's VFIO_DEVICE_STATE_*.
static Napi::Value VfioDeviceMigGetState(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::vector<uint8_t> buf = FeatureBuf(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
                                        sizeof(vfio_device_feature_mig_state));
  CheckedIoctl(env, ArgInt(info, 0), VFIO_DEVICE_FEATURE, buf.data(), "VFIO_DEVICE_FEATURE(GET MIG_DEVICE_STATE)");
  vfio_device_feature_mig_state s;
  memcpy(&s, buf.data() + sizeof(vfio_device_feature), sizeof(s));
  return Napi::Number::New(env, s.device_state);
}

// vfioDeviceMigSetState(deviceFd, state) → the data fd the arc opened (close-on-exec, owned by
// the caller), or -1 when it opened none.
static Napi::Value VfioDeviceMigSetState(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::vector<uint8_t> buf = FeatureBuf(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
                                        sizeof(vfio_device_feature_mig_state));
  vfio_device_feature_mig_state s = {};
  s.device_state = ArgU32(info, 1);
  s.data_fd = -1;
  memcpy(buf.data() + sizeof(vfio_device_feature), &s, sizeof(s));
  CheckedIoctl(env, ArgInt(info, 0), VFIO_DEVICE_FEATURE, buf.data(), "VFIO_DEVICE_FEATURE(SET MIG_DEVICE_STATE)");
  memcpy(&s, buf.data() + sizeof(vfio_device_feature), sizeof(s));
  return Napi::Number::New(env, s.data_fd);
}

// vfioDeviceMigDataSize(deviceFd) → the estimated stop-copy length in bytes (bigint).
static Napi::Value VfioDeviceMigDataSize(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::vector<uint8_t> buf = FeatureBuf(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
                                        sizeof(vfio_device_feature_mig_data_size));
  CheckedIoctl(env, ArgInt(info, 0), VFIO_DEVICE_FEATURE, buf.data(), "VFIO_DEVICE_FEATURE(MIG_DATA_SIZE)");
  vfio_device_feature_mig_data_size d;
  memcpy(&d, buf.data() + sizeof(vfio_device_feature), sizeof(d));
  return U64ToJs(env, d.stop_copy_length);
}

// vfioMigPrecopyInfo(dataFd) → { initialBytes, dirtyBytes } (bigints); valid in PRE_COPY states.
static Napi::Value VfioMigPrecopyInfo(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  vfio_precopy_info p = {};
  p.argsz = sizeof(p);
  IOCTL(ArgInt(info, 0), VFIO_MIG_GET_PRECOPY_INFO, &p);
  Napi::Object o = Napi::Object::New(env);
  o.Set("initialBytes", U64ToJs(env, p.initial_bytes));
  o.Set("dirtyBytes", U64ToJs(env, p.dirty_bytes));
  return o;
}

// vfioDeviceDmaLoggingStart(deviceFd, pageSize, ranges: [{iova, length}]) → the page size the
// device tracks with (bigint). Ranges page-aligned, not overlapping (the kernel checks).
static Napi::Value VfioDeviceDmaLoggingStart(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  uint64_t pageSize = ArgU64(info, 1);
  if (info.Length() < 3 || !info[2].IsArray())
    throw Napi::TypeError::New(env, "vfioDeviceDmaLoggingStart(deviceFd, pageSize, ranges[])");
  Napi::Array a = info[2].As<Napi::Array>();
  std::vector<vfio_device_feature_dma_logging_range> ranges(a.Length());
  for (uint32_t i = 0; i < a.Length(); i++) {
    Napi::Value v = a.Get(i);
    if (!v.IsObject()) throw Napi::TypeError::New(env, "vfioDeviceDmaLoggingStart: ranges are {iova, length}");
    ranges[i].iova = ReqU64(v.As<Napi::Object>(), "iova");
    ranges[i].length = ReqU64(v.As<Napi::Object>(), "length");
  }
  std::vector<uint8_t> buf = FeatureBuf(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
                                        sizeof(vfio_device_feature_dma_logging_control));
  vfio_device_feature_dma_logging_control c = {};
  c.page_size = pageSize;
  c.num_ranges = static_cast<uint32_t>(ranges.size());
  c.ranges = reinterpret_cast<uintptr_t>(ranges.data());
  memcpy(buf.data() + sizeof(vfio_device_feature), &c, sizeof(c));
  CheckedIoctl(env, fd, VFIO_DEVICE_FEATURE, buf.data(), "VFIO_DEVICE_FEATURE(DMA_LOGGING_START)");
  memcpy(&c, buf.data() + sizeof(vfio_device_feature), sizeof(c));
  return U64ToJs(env, c.page_size);
}

// vfioDeviceDmaLoggingStop(deviceFd)
static Napi::Value VfioDeviceDmaLoggingStop(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::vector<uint8_t> buf = FeatureBuf(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, 0);
  CheckedIoctl(env, ArgInt(info, 0), VFIO_DEVICE_FEATURE, buf.data(), "VFIO_DEVICE_FEATURE(DMA_LOGGING_STOP)");
  return env.Undefined();
}

// vfioDeviceDmaLoggingReport(deviceFd, iova, length, pageSize) → Uint8Array bitmap (bit i, LSB first
// in u64 words: the page at iova + i * pageSize was written by the device); the device's log is
// cleared for the range.
static Napi::Value VfioDeviceDmaLoggingReport(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  uint64_t iova = ArgU64(info, 1), length = ArgU64(info, 2), pageSize = ArgU64(info, 3);
  if (pageSize < 4096 || (pageSize & (pageSize - 1)) || length == 0 || length / pageSize > (uint64_t(1) << 32))
    throw Napi::RangeError::New(env, "vfioDeviceDmaLoggingReport: page size a power of two >= 4096, 0 < length <= 2^32 pages");
  std::vector<uint64_t> bitmap((length / pageSize + 63) / 64 + 1, 0);
  std::vector<uint8_t> buf = FeatureBuf(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
                                        sizeof(vfio_device_feature_dma_logging_report));
  vfio_device_feature_dma_logging_report r = {};
  r.iova = iova;
  r.length = length;
  r.page_size = pageSize;
  r.bitmap = reinterpret_cast<uintptr_t>(bitmap.data());
  memcpy(buf.data() + sizeof(vfio_device_feature), &r, sizeof(r));
  CheckedIoctl(env, fd, VFIO_DEVICE_FEATURE, buf.data(), "VFIO_DEVICE_FEATURE(DMA_LOGGING_REPORT)");
  size_t bytes = (length / pageSize + 7) / 8;
  Napi::Uint8Array out = Napi::Uint8Array::New(env, bytes);
  memcpy(out.Data(), bitmap.data(), bytes);
  return out;
}

void InitVfioMigration(Napi::Env env, Napi::Object exports) {
  TSVMM_EXPORT(exports, "vfioDeviceFeatureProbe", VfioDeviceFeatureProbe);
  TSVMM_EXPORT(exports, "vfioDeviceMigrationFlags", VfioDeviceMigrationFlags);
  TSVMM_EXPORT(exports, "vfioDeviceMigGetState", VfioDeviceMigGetState);
  TSVMM_EXPORT(exports, "vfioDeviceMigSetState", VfioDeviceMigSetState);
  TSVMM_EXPORT(exports, "vfioDeviceMigDataSize", VfioDeviceMigDataSize);
  TSVMM_EXPORT(exports, "vfioMigPrecopyInfo", VfioMigPrecopyInfo);
  TSVMM_EXPORT(exports, "vfioDeviceDmaLoggingStart", VfioDeviceDmaLoggingStart);
  TSVMM_EXPORT(exports, "vfioDeviceDmaLoggingStop", VfioDeviceDmaLoggingStop);
  TSVMM_EXPORT(exports, "vfioDeviceDmaLoggingReport", VfioDeviceDmaLoggingReport);

  Napi::Object c = exports.Has("constants") ? exports.Get("constants").As<Napi::Object>() : Napi::Object::New(env);
#define C(x) c.Set(#x, Napi::Number::New(env, static_cast<uint32_t>(x)));
  C(VFIO_DEVICE_FEATURE_GET) C(VFIO_DEVICE_FEATURE_SET)
  C(VFIO_DEVICE_FEATURE_MIGRATION) C(VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE) C(VFIO_DEVICE_FEATURE_MIG_DATA_SIZE)
  C(VFIO_DEVICE_FEATURE_DMA_LOGGING_START) C(VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP)
  C(VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT)
  C(VFIO_MIGRATION_STOP_COPY) C(VFIO_MIGRATION_P2P) C(VFIO_MIGRATION_PRE_COPY)
  C(VFIO_DEVICE_STATE_ERROR) C(VFIO_DEVICE_STATE_STOP) C(VFIO_DEVICE_STATE_RUNNING) C(VFIO_DEVICE_STATE_STOP_COPY)
  C(VFIO_DEVICE_STATE_RESUMING) C(VFIO_DEVICE_STATE_RUNNING_P2P) C(VFIO_DEVICE_STATE_PRE_COPY)
  C(VFIO_DEVICE_STATE_PRE_COPY_P2P)
#undef C
  exports.Set("constants", c);
}

}  // namespace tsvmm
