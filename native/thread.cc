// Kicking a vCPU thread out of KVM_RUN: a no-op real-time signal handler installed without
// SA_RESTART makes the blocked ioctl return EINTR. Never SIGUSR1 (Node's inspector uses it).
#include "util.h"
#include <pthread.h>
#include <signal.h>

namespace tsvmm {

static void NoopHandler(int) {}

// threadPrepareKick(signo): install the handler (process-wide) and unblock signo in the
// calling thread; returns this thread's handle for threadKick().
static Napi::Value ThreadPrepareKick(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int signo = ArgInt(info, 0);
  struct sigaction sa = {};
  sa.sa_handler = NoopHandler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  if (sigaction(signo, &sa, nullptr) != 0) ThrowErrno(env, "sigaction", errno);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, signo);
  int err = pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
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

void InitThread(Napi::Env env, Napi::Object exports) {
  TSVMM_EXPORT(exports, "threadPrepareKick", ThreadPrepareKick);
  TSVMM_EXPORT(exports, "threadKick", ThreadKick);
  Napi::Object c = exports.Has("constants") ? exports.Get("constants").As<Napi::Object>() : Napi::Object::New(env);
  c.Set("SIGRTMIN", Napi::Number::New(env, SIGRTMIN));
  exports.Set("constants", c);
}

}  // namespace tsvmm
