// Shared helpers for the thin syscall wrappers: argument extraction and errno → JS Error.
#pragma once
#include <napi.h>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

namespace tsvmm {

const char *ErrnoName(int err);

// Throws a JS Error carrying code ('EBUSY'), errno (number) and syscall ('ioctl(VFIO_SET_IOMMU)').
[[noreturn]] void ThrowErrno(Napi::Env env, const std::string &syscall, int err);

inline int ArgInt(const Napi::CallbackInfo &info, size_t i) {
  if (i >= info.Length() || !info[i].IsNumber())
    throw Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a number");
  return info[i].As<Napi::Number>().Int32Value();
}

inline uint32_t ArgU32(const Napi::CallbackInfo &info, size_t i) {
  if (i >= info.Length() || !info[i].IsNumber())
    throw Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a number");
  return info[i].As<Napi::Number>().Uint32Value();
}

// Accepts a number (must be a safe integer) or a bigint; returns the 64-bit value.
uint64_t ToU64(Napi::Env env, Napi::Value v, const char *what);
inline uint64_t ArgU64(const Napi::CallbackInfo &info, size_t i) {
  if (i >= info.Length()) throw Napi::TypeError::New(info.Env(), "missing argument " + std::to_string(i));
  return ToU64(info.Env(), info[i], "argument");
}
inline uint64_t PropU64(Napi::Object o, const char *key) {
  return ToU64(o.Env(), o.Get(key), key);
}
inline uint32_t PropU32(Napi::Object o, const char *key) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return 0;
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string("property ") + key + " must be a number");
  return v.As<Napi::Number>().Uint32Value();
}
inline int32_t PropI32(Napi::Object o, const char *key, int32_t dflt) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return dflt;
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string("property ") + key + " must be a number");
  return v.As<Napi::Number>().Int32Value();
}
inline Napi::Object ArgObject(const Napi::CallbackInfo &info, size_t i) {
  if (i >= info.Length() || !info[i].IsObject())
    throw Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be an object");
  return info[i].As<Napi::Object>();
}
inline Napi::Value U64ToJs(Napi::Env env, uint64_t v) { return Napi::BigInt::New(env, v); }

// ioctl() that retries on EINTR except where the caller wants to see it (KVM_RUN).
int IoctlRetry(int fd, unsigned long req, void *arg);

// IoctlRetry that throws the errno as a JS Error naming the ioctl ("ioctl(VFIO_SET_IOMMU)").
int CheckedIoctl(Napi::Env env, int fd, unsigned long req, void *arg, const char *name);
#define IOCTL(fd, req, arg) CheckedIoctl(env, fd, req, arg, #req)

// A required 64-bit property (number or bigint): a missing one is a TypeError, not 0.
uint64_t ReqU64(Napi::Object o, const char *key);

// Plain N-API (no node-addon-api wrapper) for the few calls a guest request makes, where the
// wrapper and reading an object's properties by name cost more than the syscall's own user time.
// Each returns false after throwing (a TypeError or RangeError naming `what`).
bool RawArgs(napi_env env, napi_callback_info info, size_t n, napi_value *argv, const char *fn);
bool RawI32(napi_env env, napi_value v, int32_t *out, const char *what);
// A non-negative safe-integer number or a bigint that fits in 64 bits (ToU64's rules; required).
bool RawU64(napi_env env, napi_value v, uint64_t *out, const char *what);
// Throws ThrowErrno's Error (code, errno, syscall) from a plain N-API function; returns nullptr.
napi_value RawThrowErrno(napi_env env, const std::string &syscall, int err);
// A number for the JS side (a 64-bit count the kernel returns, below 2^53 here).
napi_value RawNumber(napi_env env, double v);

// Each family file registers its exports here.
void InitMman(Napi::Env env, Napi::Object exports);
void InitEventfd(Napi::Env env, Napi::Object exports);
void InitKvm(Napi::Env env, Napi::Object exports);
void InitKvmVcpu(Napi::Env env, Napi::Object exports);
void InitThread(Napi::Env env, Napi::Object exports);
void InitVfio(Napi::Env env, Napi::Object exports);
void InitVfioDevice(Napi::Env env, Napi::Object exports);
void InitVfioMigration(Napi::Env env, Napi::Object exports);
void InitIommufd(Napi::Env env, Napi::Object exports);
void InitSocket(Napi::Env env, Napi::Object exports);
void InitPoll(Napi::Env env, Napi::Object exports);
void InitLoopWatcher(Napi::Env env, Napi::Object exports);
void InitKvmState(Napi::Env env, Napi::Object exports);
void InitFdWatch(Napi::Env env, Napi::Object exports);
void InitSeccomp(Napi::Env env, Napi::Object exports);
void InitLocalReads(Napi::Env env, Napi::Object exports);

#define TSVMM_EXPORT(exports, name, fn) exports.Set(name, Napi::Function::New(env, fn, name))
// Registers a plain N-API function (napi_callback).
void ExportRaw(Napi::Env env, Napi::Object exports, const char *name, napi_callback fn);

}  // namespace tsvmm
