// eventfd(2). Reads and writes of the 8-byte counter go through node:fs on the fd.
#include "util.h"
#include <sys/eventfd.h>

namespace tsvmm {

static Napi::Value Eventfd(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  unsigned init = info.Length() > 0 ? ArgU32(info, 0) : 0;
  int flags = info.Length() > 1 ? ArgInt(info, 1) : 0;
  int fd = eventfd(init, flags | EFD_CLOEXEC);
  if (fd < 0) ThrowErrno(env, "eventfd", errno);
  return Napi::Number::New(env, fd);
}

void InitEventfd(Napi::Env env, Napi::Object exports) {
  TSVMM_EXPORT(exports, "eventfd", Eventfd);
}

}  // namespace tsvmm
