// Local reads: a vCPU thread answers a port read of a register a device model published
// (core/kvm/register-file.ts) in native code and enters KVM_RUN again, with no trip to
// JavaScript: nested KVM pays for every page an exit's path touches, and JS's path touches
// hundreds. Mechanism only: which registers are published, and their values, are TS's; this
// reads the file with the same seqlock and rules as readPublished, and anything else returns.
#include "local-reads.h"
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <cstddef>

namespace tsvmm {

struct LocalReads {
  uint8_t *run = nullptr;   // the vCPU's kvm_run mapping
  size_t runBytes = 0;
  int32_t *words = nullptr;  // [0] sequence count; slot s: [2 + 2s] size (| neutral-write flag), [3 + 2s] value
  size_t nWords = 0;
  uint8_t *portSlot = nullptr;  // 65536 bytes: port → slot (0: none)
  int32_t *counts = nullptr;    // local answers per slot
  size_t nCounts = 0;
  int32_t *channel = nullptr;   // the vCPU's channel header (exit-channel.ts)
  uint32_t exitsSlot = 0, headSlot = 0, tailSlot = 0;
  Napi::Reference<Napi::ArrayBuffer> page;
  Napi::Reference<Napi::Object> keep;  // the typed arrays (their memory stays while referenced)
};

namespace {

// The typed array's memory (napi_get_typedarray_info, not TypedArray::ArrayBuffer(): the register
// file lives in SharedArrayBuffers, which napi_get_arraybuffer_info refuses).
template <typename T>
T *TypedData(const Napi::CallbackInfo &info, size_t i, napi_typedarray_type type, size_t *len, const char *what) {
  Napi::Env env = info.Env();
  napi_typedarray_type t;
  void *data = nullptr;
  if (i >= info.Length() || !info[i].IsTypedArray() ||
      napi_get_typedarray_info(env, info[i], &t, len, &data, nullptr, nullptr) != napi_ok || t != type || !data)
    throw Napi::TypeError::New(env, std::string("argument ") + std::to_string(i) + " must be " + what);
  return static_cast<T *>(data);
}

LocalReads *Get(const Napi::CallbackInfo &info, size_t i) {
  if (i >= info.Length() || !info[i].IsExternal()) throw Napi::TypeError::New(info.Env(), "argument must be a local-reads handle");
  return info[i].As<Napi::External<LocalReads>>().Data();
}

inline int32_t Load(const int32_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
// Single writer (this vCPU's thread); readers use Atomics.load.
inline void Bump(int32_t *p) { __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED); }

}  // namespace

LocalReads *OptLocalReads(const Napi::CallbackInfo &info, size_t i) {
  if (i >= info.Length() || info[i].IsUndefined()) return nullptr;
  return Get(info, i);
}

bool AnswerLocalRead(LocalReads *lr) {
  auto *run = reinterpret_cast<kvm_run *>(lr->run);
  if (run->exit_reason != KVM_EXIT_IO || run->io.direction != KVM_EXIT_IO_IN || run->io.count != 1) return false;
  uint32_t size = run->io.size;
  uint64_t off = run->io.data_offset;
  if (size == 0 || size > 4 || off + size > lr->runBytes) return false;
  uint32_t s = lr->portSlot[run->io.port];
  if (s == 0 || 3 + 2 * s >= lr->nWords || s >= lr->nCounts) return false;
  // Behind a posted request still unanswered the read waits (JS decides whether it may pass).
  if (Load(lr->channel + lr->headSlot) != Load(lr->channel + lr->tailSlot)) return false;
  int32_t seq = Load(lr->words);
  if (seq & 1) return false;  // a change in flight
  int32_t sz = Load(lr->words + 2 + 2 * s);
  int32_t v = Load(lr->words + 3 + 2 * s);
  if (Load(lr->words) != seq || static_cast<uint32_t>(sz & 0xff) != size) return false;
  uint32_t u = static_cast<uint32_t>(v);
  memcpy(lr->run + off, &u, size);  // little-endian, as the guest reads it
  Bump(lr->counts + s);
  Bump(lr->channel + lr->exitsSlot);
  return true;
}

// localReadsCreate(runPage: ArrayBuffer, words: Int32Array, portSlot: Uint8Array, counts: Int32Array,
//   channel: Int32Array, exitsSlot, headSlot, tailSlot) → handle.
static Napi::Value LocalReadsCreate(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) throw Napi::TypeError::New(env, "argument 0 must be the kvm_run ArrayBuffer");
  auto page = info[0].As<Napi::ArrayBuffer>();
  if (page.ByteLength() < sizeof(kvm_run)) throw Napi::RangeError::New(env, "the kvm_run ArrayBuffer is smaller than struct kvm_run");
  auto *lr = new LocalReads();
  try {
    size_t nPorts = 0, nChannel = 0;
    lr->run = static_cast<uint8_t *>(page.Data());
    lr->runBytes = page.ByteLength();
    lr->words = TypedData<int32_t>(info, 1, napi_int32_array, &lr->nWords, "an Int32Array (the register words)");
    lr->portSlot = TypedData<uint8_t>(info, 2, napi_uint8_array, &nPorts, "a Uint8Array (port → slot)");
    lr->counts = TypedData<int32_t>(info, 3, napi_int32_array, &lr->nCounts, "an Int32Array (counts per slot)");
    lr->channel = TypedData<int32_t>(info, 4, napi_int32_array, &nChannel, "an Int32Array (the vCPU's channel)");
    lr->exitsSlot = ArgU32(info, 5);
    lr->headSlot = ArgU32(info, 6);
    lr->tailSlot = ArgU32(info, 7);
    if (nPorts != 0x10000) throw Napi::RangeError::New(env, "the port → slot map must have 65536 entries");
    if (lr->nWords < 2 || lr->exitsSlot >= nChannel || lr->headSlot >= nChannel || lr->tailSlot >= nChannel)
      throw Napi::RangeError::New(env, "register words or channel slots out of range");
    lr->page = Napi::Persistent(page);
    Napi::Object keep = Napi::Object::New(env);
    for (size_t i = 1; i <= 4; i++) keep.Set(static_cast<uint32_t>(i), info[i]);
    lr->keep = Napi::Persistent(keep);
  } catch (...) {
    delete lr;
    throw;
  }
  return Napi::External<LocalReads>::New(env, lr, [](Napi::Env, LocalReads *lr) { delete lr; });
}

// localReadsKvmRun(h, vcpuFd) → as kvmRun: KVM_RUN until an exit that is not a read answered here.
static Napi::Value LocalReadsKvmRun(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  LocalReads *lr = Get(info, 0);
  int fd = ArgInt(info, 1);
  for (;;) {
    int r = ioctl(fd, KVM_RUN, 0);
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) return Napi::Number::New(env, -errno);
      ThrowErrno(env, "ioctl(KVM_RUN)", errno);
    }
    if (!AnswerLocalRead(lr)) return Napi::Number::New(env, r);
  }
}

// localReadsAnswer(h) → whether the exit now in the page was answered (the same step as in the run
// loops, without KVM: lets a test check the protocol on a page it wrote).
static Napi::Value LocalReadsAnswer(const Napi::CallbackInfo &info) {
  return Napi::Boolean::New(info.Env(), AnswerLocalRead(Get(info, 0)));
}

void InitLocalReads(Napi::Env env, Napi::Object exports) {
  TSVMM_EXPORT(exports, "localReadsCreate", LocalReadsCreate);
  TSVMM_EXPORT(exports, "localReadsKvmRun", LocalReadsKvmRun);
  TSVMM_EXPORT(exports, "localReadsAnswer", LocalReadsAnswer);
}

}  // namespace tsvmm
