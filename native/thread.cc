// Kicking a vCPU thread out of KVM_RUN: a no-op real-time signal handler installed without
// SA_RESTART makes the blocked ioctl return EINTR. Never SIGUSR1 (Node's inspector uses it).
#include "util.h"
#include <pthread.h>
#include <signal.h>

namespace tsvmm {

static void NoopHandler(int) {}

// threadPrepareKick(signo, block = false): install the handler (process-wide) and unblock signo
// in the calling thread, or, with block, block it there: a thread that also runs the event loop
// takes the kick only inside KVM_RUN (kvmSetSignalMask) and eats it after (threadEatSignal), so
// no other syscall of that thread ever sees EINTR. Returns this thread's handle for threadKick().
static Napi::Value ThreadPrepareKick(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int signo = ArgInt(info, 0);
  bool block = info.Length() > 1 && info[1].ToBoolean().Value();
  struct sigaction sa = {};
  sa.sa_handler = NoopHandler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  if (sigaction(signo, &sa, nullptr) != 0) ThrowErrno(env, "sigaction", errno);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, signo);
  int err = pthread_sigmask(block ? SIG_BLOCK : SIG_UNBLOCK, &set, nullptr);
  if (err != 0) ThrowErrno(env, "pthread_sigmask", err);
  return U64ToJs(env, static_cast<uint64_t>(pthread_self()));
}

static Napi::Value ThreadKick(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  pthread_t t = static_cast<pthread_t>(ArgU64(info, 0));
  int err = pthread_kill(t, ArgInt(info, 1));
  if (err != 0) ThrowErrno(env, "pthread_kill", err);
  return env.Undefined();
}

// threadEatSignal(signo) → how many pending instances of a blocked signo were taken (sigtimedwait
// with a zero timeout): after KVM_RUN returned EINTR for it, as QEMU's kvm_eat_signals did.
static Napi::Value ThreadEatSignal(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, ArgInt(info, 0));
  struct timespec zero = {0, 0};
  int n = 0;
  for (;;) {
    int r = sigtimedwait(&set, nullptr, &zero);
    if (r > 0) { n++; continue; }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) break;
    ThrowErrno(env, "sigtimedwait", errno);
  }
  return Napi::Number::New(env, n);
}

void InitThread(Napi::Env env, Napi::Object exports) {
  TSVMM_EXPORT(exports, "threadPrepareKick", ThreadPrepareKick);
  TSVMM_EXPORT(exports, "threadKick", ThreadKick);
  TSVMM_EXPORT(exports, "threadEatSignal", ThreadEatSignal);
  Napi::Object c = exports.Has("constants") ? exports.Get("constants").As<Napi::Object>() : Napi::Object::New(env);
  c.Set("SIGRTMIN", Napi::Number::New(env, SIGRTMIN));
  exports.Set("constants", c);
}

}  // namespace tsvmm
