// tsvmm native addon: thin wrappers over Linux syscalls and ioctls. No policy lives here.
#include "util.h"

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  tsvmm::InitMman(env, exports);
  tsvmm::InitEventfd(env, exports);
  tsvmm::InitKvm(env, exports);
  tsvmm::InitKvmVcpu(env, exports);
  tsvmm::InitThread(env, exports);
  tsvmm::InitVfio(env, exports);
  tsvmm::InitVfioDevice(env, exports);
  tsvmm::InitVfioMigration(env, exports);
  tsvmm::InitIommufd(env, exports);
  tsvmm::InitSocket(env, exports);
  tsvmm::InitPoll(env, exports);
  tsvmm::InitLoopWatcher(env, exports);
  tsvmm::InitKvmState(env, exports);
  tsvmm::InitFdWatch(env, exports);
  tsvmm::InitSeccomp(env, exports);
  tsvmm::InitLocalReads(env, exports);
  return exports;
}

NODE_API_MODULE(tsvmm_native, Init)
