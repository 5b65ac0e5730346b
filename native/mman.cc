// mmap/munmap/memfd_create/madvise/fallocate. JS sees mapped memory through external
// ArrayBuffers, which V8 caps at 4 GiB (Node makes them Buffers; asking for a larger one
// aborts the process), so there are two kinds of mapping:
// - mmap(): one ArrayBuffer over the whole mapping (≤ 4 GiB; larger is a RangeError). munmap()
//   detaches it before unmapping; a mapping JS drops without munmap() is unmapped by the
//   buffer's finalizer.
// - mmapAddr(): any size; JS gets the address and asks for views (mapView(), each ≤ 4 GiB)
//   of the parts it touches. munmapAddr() detaches every live view, then unmaps. Such a mapping
//   lives until munmapAddr() (guest RAM: the machine unmaps it on close).
#include "util.h"
#include <sys/mman.h>
#include <fcntl.h>
#include <unistd.h>
#include <atomic>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <vector>

namespace tsvmm {

// The largest external ArrayBuffer Node can make (buffer.constants.MAX_LENGTH on 64-bit).
static constexpr uint64_t kMaxView = 1ull << 32;

struct View;
struct Mapping {
  void *addr;
  size_t len;
  std::atomic<bool> unmapped{false};
  bool whole = false;  // mmap(): owned by its one ArrayBuffer
  std::vector<View *> views;  // mmapAddr() mappings: live views (their finalizers remove them)
};
struct View {
  std::shared_ptr<Mapping> m;
  Napi::Reference<Napi::ArrayBuffer> ref;  // weak: detached by munmapAddr()
};

// Live mappings by start address. Finalizers run on the JS thread that made the buffer, but
// workers (vCPU threads) map too, so the table is locked; never held across a Detach().
static std::mutex g_lock;
static std::map<uintptr_t, std::shared_ptr<Mapping>> g_live;
// Held shared by the by-address reads (memZeroPages, memCopy: a worker thread reads guest RAM
// without a view of its own), exclusively by munmapAddr() around the munmap: a read never
// touches memory that is being unmapped, and one that comes after finds the mapping gone.
static std::shared_mutex g_use;

static void *DoMmap(const Napi::CallbackInfo &info, uint64_t *lenOut) {
  Napi::Env env = info.Env();
  uint64_t hint = ArgU64(info, 0);
  uint64_t len = ArgU64(info, 1);
  int prot = ArgInt(info, 2), flags = ArgInt(info, 3), fd = ArgInt(info, 4);
  uint64_t off = ArgU64(info, 5);
  if (len == 0) throw Napi::RangeError::New(env, "mmap length must be > 0");
  void *p = mmap(reinterpret_cast<void *>(hint), len, prot, flags, fd, static_cast<off_t>(off));
  if (p == MAP_FAILED) ThrowErrno(env, "mmap", errno);
  *lenOut = len;
  return p;
}

static std::shared_ptr<Mapping> Register(void *p, uint64_t len, bool whole) {
  auto m = std::make_shared<Mapping>();
  m->whole = whole;
  m->addr = p;
  m->len = static_cast<size_t>(len);
  std::lock_guard<std::mutex> g(g_lock);
  g_live[reinterpret_cast<uintptr_t>(p)] = m;
  return m;
}

static void FinalizeWhole(Napi::Env, void *, std::shared_ptr<Mapping> *hold) {
  {
    std::lock_guard<std::mutex> g(g_lock);
    Mapping *m = hold->get();
    if (!m->unmapped) {
      m->unmapped = true;
      munmap(m->addr, m->len);
      auto it = g_live.find(reinterpret_cast<uintptr_t>(m->addr));
      if (it != g_live.end() && it->second.get() == m) g_live.erase(it);
    }
  }
  delete hold;
}

// mmap(addrHint: bigint|0, length, prot, flags, fd, offset) → { addr: bigint, buffer: ArrayBuffer }
static Napi::Value Mmap(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() > 1 && ToU64(env, info[1], "length") > kMaxView)
    throw Napi::RangeError::New(env, "mmap: a mapping with one ArrayBuffer can be at most 4 GiB (V8's limit); use mmapAddr() and mapView()");
  uint64_t len;
  void *p = DoMmap(info, &len);
  auto m = Register(p, len, true);
  Napi::Object r = Napi::Object::New(env);
  r.Set("addr", U64ToJs(env, reinterpret_cast<uint64_t>(p)));
  r.Set("buffer", Napi::ArrayBuffer::New(env, p, len, FinalizeWhole, new std::shared_ptr<Mapping>(m)));
  return r;
}

// munmap(buffer): detach then unmap the whole mapping the buffer came from.
static Napi::Value Munmap(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) throw Napi::TypeError::New(env, "munmap takes the ArrayBuffer from mmap()");
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  if (ab.IsDetached()) return env.Undefined();  // already unmapped: idempotent
  void *addr = ab.Data();
  size_t len = ab.ByteLength();
  {
    std::lock_guard<std::mutex> g(g_lock);
    auto it = g_live.find(reinterpret_cast<uintptr_t>(addr));
    if (it == g_live.end() || !it->second->whole || it->second->len != len)
      throw Napi::Error::New(env, "munmap: buffer is not a live mapping from mmap()");
    it->second->unmapped = true;
    g_live.erase(it);
  }
  ab.Detach();
  if (munmap(addr, len) != 0) ThrowErrno(env, "munmap", errno);
  return env.Undefined();
}

// mmapAddr(addrHint, length, prot, flags, fd, offset) → addr: bigint (any length).
static Napi::Value MmapAddr(const Napi::CallbackInfo &info) {
  uint64_t len;
  void *p = DoMmap(info, &len);
  Register(p, len, false);
  return U64ToJs(info.Env(), reinterpret_cast<uint64_t>(p));
}

static void FinalizeView(Napi::Env, void *, View *v) {
  {
    std::lock_guard<std::mutex> g(g_lock);
    auto &vs = v->m->views;
    for (auto it = vs.begin(); it != vs.end(); ++it)
      if (*it == v) { vs.erase(it); break; }
  }
  delete v;
}

// mapView(addr, length) → ArrayBuffer over [addr, addr+length) of a live mmapAddr() mapping.
static Napi::Value MapView(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  uint64_t addr = ArgU64(info, 0), len = ArgU64(info, 1);
  if (len == 0 || len > kMaxView) throw Napi::RangeError::New(env, "mapView: length must be 1 byte to 4 GiB (V8's limit for one ArrayBuffer)");
  std::shared_ptr<Mapping> m;
  {
    std::lock_guard<std::mutex> g(g_lock);
    auto it = g_live.upper_bound(static_cast<uintptr_t>(addr));
    if (it != g_live.begin()) {
      --it;
      uintptr_t start = it->first;
      if (addr >= start && addr + len <= start + it->second->len && !it->second->unmapped && !it->second->whole) m = it->second;
    }
  }
  if (!m) throw Napi::RangeError::New(env, "mapView: the range is not inside a live mapping from mmapAddr()");
  auto *v = new View{m, {}};
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, reinterpret_cast<void *>(addr), len, FinalizeView, v);
  v->ref = Napi::Reference<Napi::ArrayBuffer>::New(ab, 0);
  std::lock_guard<std::mutex> g(g_lock);
  m->views.push_back(v);
  return ab;
}

// munmapAddr(addr): detaches every live view of the mapping that starts at addr, then unmaps it.
static Napi::Value MunmapAddr(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  uint64_t addr = ArgU64(info, 0);
  std::shared_ptr<Mapping> m;
  std::vector<View *> views;
  {
    std::lock_guard<std::mutex> g(g_lock);
    auto it = g_live.find(static_cast<uintptr_t>(addr));
    if (it == g_live.end() || it->second->whole) throw Napi::Error::New(env, "munmapAddr: no live mapping from mmapAddr() starts at this address");
    m = it->second;
    m->unmapped = true;
    g_live.erase(it);
    views = m->views;
  }
  for (View *v : views) {
    Napi::ArrayBuffer ab = v->ref.Value();  // empty once collected
    if (!ab.IsEmpty() && !ab.IsDetached()) ab.Detach();
  }
  int r;
  {
    std::unique_lock<std::shared_mutex> u(g_use);
    r = munmap(m->addr, m->len);
  }
  if (r != 0) ThrowErrno(env, "munmap", errno);
  return env.Undefined();
}

// The live mmapAddr() mapping that holds [addr, addr+len), or null. Call with g_use held.
static Mapping *LiveRange(uint64_t addr, uint64_t len) {
  std::lock_guard<std::mutex> g(g_lock);
  auto it = g_live.upper_bound(static_cast<uintptr_t>(addr));
  if (it == g_live.begin()) return nullptr;
  --it;
  Mapping *m = it->second.get();
  uintptr_t start = it->first;
  if (addr < start || addr + len > start + m->len || m->unmapped || m->whole) return nullptr;
  return m;
}

static uint8_t *TypedData(const Napi::TypedArray &t) {
  return static_cast<uint8_t *>(t.ArrayBuffer().Data()) + t.ByteOffset();
}

// memZeroPages(addr, length, zeroBits): for each 4 KiB page of [addr, addr+length) (inside a live
// mmapAddr() mapping, page aligned), sets its bit in zeroBits (a Uint32Array: bit p % 32 of word
// p / 32) when the page is all zero; returns how many were. A mechanism only (what a zero page
// means to the migration stream is JS's), native because a JS scan is several times slower.
static Napi::Value MemZeroPages(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  uint64_t addr = ArgU64(info, 0), len = ArgU64(info, 1);
  if (info.Length() < 3 || !info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array)
    throw Napi::TypeError::New(env, "memZeroPages(addr, length, zeroBits: Uint32Array)");
  Napi::TypedArray z = info[2].As<Napi::TypedArray>();
  if (addr % 4096 || len % 4096) throw Napi::RangeError::New(env, "memZeroPages: whole pages only");
  size_t pages = len / 4096;
  if (z.ByteLength() * 8 < pages) throw Napi::RangeError::New(env, "memZeroPages: zeroBits is shorter than a bit per page");
  uint32_t *bits = reinterpret_cast<uint32_t *>(TypedData(z));
  std::shared_lock<std::shared_mutex> u(g_use);
  if (!LiveRange(addr, len)) throw Napi::RangeError::New(env, "memZeroPages: the range is not inside a live mapping from mmapAddr()");
  uint32_t zero = 0;
  for (size_t i = 0; i < pages; i++) {
    const uint64_t *w = reinterpret_cast<const uint64_t *>(addr + i * 4096);
    uint64_t acc = 0;
    // 64 bytes OR-ed at a time (vectorised); the first non-zero block ends the page.
    for (size_t j = 0; j < 512 && !acc; j += 8)
      acc = w[j] | w[j + 1] | w[j + 2] | w[j + 3] | w[j + 4] | w[j + 5] | w[j + 6] | w[j + 7];
    if (!acc) {
      bits[i >> 5] |= 1u << (i & 31);
      zero++;
    }
  }
  return Napi::Number::New(env, zero);
}

// memCopy(addr, length, dst, dstOffset): copies [addr, addr+length) of a live mmapAddr() mapping
// into dst (a TypedArray) at byte dstOffset.
static Napi::Value MemCopy(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  uint64_t addr = ArgU64(info, 0), len = ArgU64(info, 1);
  if (info.Length() < 4 || !info[2].IsTypedArray()) throw Napi::TypeError::New(env, "memCopy(addr, length, dst, dstOffset)");
  Napi::TypedArray d = info[2].As<Napi::TypedArray>();
  uint64_t at = ArgU64(info, 3);
  if (at + len > d.ByteLength()) throw Napi::RangeError::New(env, "memCopy: beyond the end of dst");
  std::shared_lock<std::shared_mutex> u(g_use);
  if (!LiveRange(addr, len)) throw Napi::RangeError::New(env, "memCopy: the range is not inside a live mapping from mmapAddr()");
  memcpy(TypedData(d) + at, reinterpret_cast<const void *>(addr), len);
  return env.Undefined();
}

static Napi::Value MemfdCreate(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "memfdCreate(name, flags)");
  std::string name = info[0].As<Napi::String>().Utf8Value();
  unsigned flags = info.Length() > 1 ? ArgU32(info, 1) : 0;
  int fd = memfd_create(name.c_str(), flags);
  if (fd < 0) ThrowErrno(env, "memfd_create", errno);
  return Napi::Number::New(env, fd);
}

// madvise(addr, length, advice): by address, so worker threads can prefault parts of a mapping.
static Napi::Value Madvise(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  uint64_t addr = ArgU64(info, 0), len = ArgU64(info, 1);
  int advice = ArgInt(info, 2);
  int r;
  do r = madvise(reinterpret_cast<void *>(addr), len, advice);
  while (r != 0 && errno == EINTR);
  if (r != 0) ThrowErrno(env, "madvise", errno);
  return env.Undefined();
}

// fallocate(fd, mode, offset, length): reserves a memfd's / hugetlbfs file's pages up front.
static Napi::Value Fallocate(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0), mode = ArgInt(info, 1);
  uint64_t off = ArgU64(info, 2), len = ArgU64(info, 3);
  int r;
  do r = fallocate(fd, mode, static_cast<off_t>(off), static_cast<off_t>(len));
  while (r != 0 && errno == EINTR);
  if (r != 0) ThrowErrno(env, "fallocate", errno);
  return env.Undefined();
}

void InitMman(Napi::Env env, Napi::Object exports) {
  TSVMM_EXPORT(exports, "mmap", Mmap);
  TSVMM_EXPORT(exports, "munmap", Munmap);
  TSVMM_EXPORT(exports, "mmapAddr", MmapAddr);
  TSVMM_EXPORT(exports, "mapView", MapView);
  TSVMM_EXPORT(exports, "munmapAddr", MunmapAddr);
  TSVMM_EXPORT(exports, "memZeroPages", MemZeroPages);
  TSVMM_EXPORT(exports, "memCopy", MemCopy);
  TSVMM_EXPORT(exports, "memfdCreate", MemfdCreate);
  TSVMM_EXPORT(exports, "madvise", Madvise);
  TSVMM_EXPORT(exports, "fallocate", Fallocate);
}

}  // namespace tsvmm
