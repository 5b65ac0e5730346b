#include "util.h"
#include <sys/ioctl.h>

namespace tsvmm {

const char *ErrnoName(int err) {
  switch (err) {
#define E(x) case x: return #x;
    E(EPERM) E(ENOENT) E(ESRCH) E(EINTR) E(EIO) E(ENXIO) E(E2BIG) E(EBADF) E(EAGAIN) E(ENOMEM) E(EACCES)
    E(EFAULT) E(EBUSY) E(EEXIST) E(ENODEV) E(ENOTDIR) E(EISDIR) E(EINVAL) E(ENFILE) E(EMFILE) E(ENOTTY)
    E(EFBIG) E(ENOSPC) E(ESPIPE) E(EROFS) E(EPIPE) E(ERANGE) E(ENOSYS) E(EOPNOTSUPP) E(ENOTSOCK)
    E(ECONNREFUSED) E(ECONNRESET) E(ETIMEDOUT) E(EOVERFLOW)
    E(EADDRINUSE) E(ENOBUFS) E(EMSGSIZE) E(ENOTCONN) E(EDEADLK) E(ENOLCK)
#undef E
    default: return "EUNKNOWN";
  }
}

void ThrowErrno(Napi::Env env, const std::string &syscall, int err) {
  std::string code = ErrnoName(err);
  Napi::Error e = Napi::Error::New(env, code + ": " + strerror(err) + ", " + syscall);
  e.Set("code", Napi::String::New(env, code));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  throw e;
}

uint64_t ToU64(Napi::Env env, Napi::Value v, const char *what) {
  if (v.IsUndefined()) return 0;
  uint64_t r;
  if (!RawU64(env, v, &r, what)) throw Napi::Error::New(env);  // the TypeError/RangeError RawU64 threw
  return r;
}

int IoctlRetry(int fd, unsigned long req, void *arg) {
  int r;
  do {
    r = ioctl(fd, req, arg);
  } while (r < 0 && errno == EINTR);
  return r;
}

int CheckedIoctl(Napi::Env env, int fd, unsigned long req, void *arg, const char *name) {
  int r = IoctlRetry(fd, req, arg);
  if (r < 0) ThrowErrno(env, std::string("ioctl(") + name + ")", errno);
  return r;
}

uint64_t ReqU64(Napi::Object o, const char *key) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) throw Napi::TypeError::New(o.Env(), std::string("property ") + key + " is required");
  return ToU64(o.Env(), v, key);
}

bool RawArgs(napi_env env, napi_callback_info info, size_t n, napi_value *argv, const char *fn) {
  size_t argc = n;
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok) return false;
  if (argc < n) {
    napi_throw_type_error(env, nullptr, (std::string(fn) + " takes " + std::to_string(n) + " arguments").c_str());
    return false;
  }
  return true;
}

bool RawI32(napi_env env, napi_value v, int32_t *out, const char *what) {
  if (napi_get_value_int32(env, v, out) == napi_ok) return true;
  napi_throw_type_error(env, nullptr, (std::string(what) + " must be a number").c_str());
  return false;
}

bool RawU64(napi_env env, napi_value v, uint64_t *out, const char *what) {
  double d;
  if (napi_get_value_double(env, v, &d) == napi_ok) {
    if (d < 0 || d > 9007199254740991.0 || d != (double)(uint64_t)d) {
      napi_throw_range_error(env, nullptr, (std::string(what) + " must be a non-negative safe integer or a bigint").c_str());
      return false;
    }
    *out = (uint64_t)d;
    return true;
  }
  bool lossless = true;
  if (napi_get_value_bigint_uint64(env, v, out, &lossless) == napi_ok) {
    if (lossless) return true;
    napi_throw_range_error(env, nullptr, (std::string(what) + " does not fit in 64 bits").c_str());
    return false;
  }
  napi_throw_type_error(env, nullptr, (std::string(what) + " must be a number or bigint").c_str());
  return false;
}

napi_value RawThrowErrno(napi_env env, const std::string &syscall, int err) {
  try {
    ThrowErrno(Napi::Env(env), syscall, err);
  } catch (const Napi::Error &e) {
    e.ThrowAsJavaScriptException();
  }
  return nullptr;
}

napi_value RawNumber(napi_env env, double v) {
  napi_value out = nullptr;
  napi_create_double(env, v, &out);
  return out;
}

void ExportRaw(Napi::Env env, Napi::Object exports, const char *name, napi_callback fn) {
  napi_value f;
  if (napi_create_function(env, name, NAPI_AUTO_LENGTH, fn, nullptr, &f) != napi_ok)
    throw Napi::Error::New(env, std::string("napi_create_function(") + name + ") failed");
  exports.Set(name, Napi::Value(env, f));
}

}  // namespace tsvmm
