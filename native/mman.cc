// mmap/munmap/memfd_create. Mapped memory is handed to JS as an external ArrayBuffer:
// munmap() detaches the buffer before unmapping (no use after munmap from JS), and a
// mapping that JS drops without munmap() is unmapped by the buffer's finalizer.
#include "util.h"
#include <sys/mman.h>
#include <unistd.h>
#include <mutex>
#include <unordered_map>

namespace tsvmm {

struct Mapping {
  void *addr;
  size_t len;
  bool unmapped;
};

// Live mappings by address, so munmap() can mark a mapping done and its finalizer then
// leaves the (possibly reused) address range alone. Finalizers may run in worker threads.
static std::mutex g_lock;
static std::unordered_map<void *, Mapping *> g_live;

static void FinalizeMapping(Napi::Env, void *, Mapping *m) {
  std::lock_guard<std::mutex> g(g_lock);
  if (!m->unmapped) {
    munmap(m->addr, m->len);
    auto it = g_live.find(m->addr);
    if (it != g_live.end() && it->second == m) g_live.erase(it);
  }
  delete m;
}

// mmap(addrHint: bigint|0, length, prot, flags, fd, offset) → { addr: bigint, buffer: ArrayBuffer }
static Napi::Value Mmap(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  uint64_t hint = ArgU64(info, 0);
  uint64_t len = ArgU64(info, 1);
  int prot = ArgInt(info, 2), flags = ArgInt(info, 3), fd = ArgInt(info, 4);
  uint64_t off = ArgU64(info, 5);
  if (len == 0) throw Napi::RangeError::New(env, "mmap length must be > 0");
  void *p = mmap(reinterpret_cast<void *>(hint), len, prot, flags, fd, static_cast<off_t>(off));
  if (p == MAP_FAILED) ThrowErrno(env, "mmap", errno);
  auto *m = new Mapping{p, static_cast<size_t>(len), false};
  {
    std::lock_guard<std::mutex> g(g_lock);
    g_live[p] = m;
  }
  Napi::Object r = Napi::Object::New(env);
  r.Set("addr", U64ToJs(env, reinterpret_cast<uint64_t>(p)));
  r.Set("buffer", Napi::ArrayBuffer::New(env, p, len, FinalizeMapping, m));
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
    auto it = g_live.find(addr);
    if (it == g_live.end()) throw Napi::Error::New(env, "munmap: buffer is not a live mapping from mmap()");
    it->second->unmapped = true;
    g_live.erase(it);
  }
  ab.Detach();
  if (munmap(addr, len) != 0) ThrowErrno(env, "munmap", errno);
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

static Napi::Value Madvise(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  uint64_t addr = ArgU64(info, 0), len = ArgU64(info, 1);
  int advice = ArgInt(info, 2);
  if (madvise(reinterpret_cast<void *>(addr), len, advice) != 0) ThrowErrno(env, "madvise", errno);
  return env.Undefined();
}

void InitMman(Napi::Env env, Napi::Object exports) {
  TSVMM_EXPORT(exports, "mmap", Mmap);
  TSVMM_EXPORT(exports, "munmap", Munmap);
  TSVMM_EXPORT(exports, "memfdCreate", MemfdCreate);
  TSVMM_EXPORT(exports, "madvise", Madvise);
}

}  // namespace tsvmm
