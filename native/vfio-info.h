// Argsz-prefixed VFIO info ioctls with capability chains (VFIO_IOMMU_GET_INFO,
// VFIO_DEVICE_GET_REGION_INFO), shared by vfio.cc and vfio-device.cc.
//
// They are called with argsz = sizeof(struct); when the kernel reports a larger argsz the buffer
// grows and the call is repeated. Capability offsets (cap_offset and each header's next) count
// from the start of the info struct; 0 ends the chain.
#pragma once
#include "util.h"
#include <linux/vfio.h>
#include <cstddef>
#include <cstring>
#include <vector>

namespace tsvmm {

// Upper bound for a kernel-reported argsz (guards against allocating for a bogus value).
static constexpr uint32_t kMaxInfoSize = 1u << 20;
// Bound on capability chain length (the chain is also required to move forward).
static constexpr int kMaxCaps = 64;

template <typename T>
static T Load(const std::vector<uint8_t> &buf, size_t off) {
  T v;
  memcpy(&v, buf.data() + off, sizeof(T));
  return v;
}

// Calls an argsz-prefixed info ioctl, growing the buffer while the kernel asks for more.
// `init` fills the input fields (after the buffer is zeroed and argsz set).
template <typename Init>
static std::vector<uint8_t> InfoWithCaps(Napi::Env env, int fd, unsigned long req, const char *name, size_t minSize, Init init) {
  std::vector<uint8_t> buf(minSize, 0);
  for (int attempt = 0; attempt < 4; attempt++) {
    std::fill(buf.begin(), buf.end(), 0);
    uint32_t argsz = static_cast<uint32_t>(buf.size());
    memcpy(buf.data(), &argsz, sizeof(argsz));
    init(buf.data());
    CheckedIoctl(env, fd, req, buf.data(), name);
    uint32_t want = Load<uint32_t>(buf, 0);
    if (want <= buf.size() || want > kMaxInfoSize) break;
    buf.assign(want, 0);
  }
  return buf;
}

// Walks the capability chain starting at `first`; calls fn(header, offset) for each cap that
// lies fully within the buffer. Stops at a malformed link (out of range or not moving forward).
template <typename Fn>
static void WalkCaps(const std::vector<uint8_t> &buf, size_t infoSize, uint32_t first, Fn fn) {
  uint32_t off = first;
  for (int n = 0; off != 0 && n < kMaxCaps; n++) {
    if (off < infoSize || static_cast<size_t>(off) + sizeof(vfio_info_cap_header) > buf.size()) break;
    vfio_info_cap_header h = Load<vfio_info_cap_header>(buf, off);
    fn(h, static_cast<size_t>(off));
    if (h.next != 0 && h.next <= off) break;
    off = h.next;
  }
}

}  // namespace tsvmm
