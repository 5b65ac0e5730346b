// Watching an fd from the Node event loop (libuv's uv_poll): the callback runs on the loop's
// thread when the fd becomes readable, and no thread of the pool sits blocked in poll(2) for an
// fd that may stay quiet for the VM's whole life (VFIO request/error notifier eventfds).
#include "util.h"
#include <uv.h>
#include <unordered_map>

namespace tsvmm {

struct FdWatch {
  uv_poll_t poll;
  napi_env env;
  Napi::FunctionReference callback;
};

static std::unordered_map<uint32_t, FdWatch *> watches;
static uint32_t nextWatchId = 1;

static void OnReadable(uv_poll_t *handle, int status, int events) {
  FdWatch *w = static_cast<FdWatch *>(handle->data);
  Napi::Env env(w->env);
  Napi::HandleScope scope(env);
  try {
    w->callback.MakeCallback(env.Global(), {Napi::Number::New(env, status), Napi::Number::New(env, events)});
  } catch (const Napi::Error &e) {
    napi_fatal_exception(w->env, e.Value());  // as an uncaught exception of a JS callback
  }
}

// fdWatch(fd, callback(status, events), ref = true) → id: calls back whenever fd is readable
// (level-triggered: the callback must consume what made it readable). An unref'd watch does not
// keep the process alive.
static Napi::Value FdWatchStart(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  if (info.Length() < 2 || !info[1].IsFunction()) throw Napi::TypeError::New(env, "argument 1 must be a function");
  bool ref = info.Length() < 3 || info[2].ToBoolean().Value();
  uv_loop_t *loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) throw Napi::Error::New(env, "no libuv loop");
  auto *w = new FdWatch();
  w->env = env;
  int err = uv_poll_init(loop, &w->poll, fd);
  if (err != 0) { delete w; ThrowErrno(env, "uv_poll_init", -err); }
  w->poll.data = w;
  err = uv_poll_start(&w->poll, UV_READABLE, OnReadable);
  if (err != 0) {
    uv_close(reinterpret_cast<uv_handle_t *>(&w->poll), [](uv_handle_t *h) { delete static_cast<FdWatch *>(h->data); });
    ThrowErrno(env, "uv_poll_start", -err);
  }
  if (!ref) uv_unref(reinterpret_cast<uv_handle_t *>(&w->poll));
  w->callback = Napi::Persistent(info[1].As<Napi::Function>());
  uint32_t id = nextWatchId++;
  watches[id] = w;
  return Napi::Number::New(env, id);
}

// fdUnwatch(id): stops the watch (before the fd is closed); unknown ids are ignored.
static Napi::Value FdWatchStop(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  auto it = watches.find(ArgU32(info, 0));
  if (it == watches.end()) return env.Undefined();
  FdWatch *w = it->second;
  watches.erase(it);
  uv_poll_stop(&w->poll);
  w->callback.Reset();
  uv_close(reinterpret_cast<uv_handle_t *>(&w->poll), [](uv_handle_t *h) { delete static_cast<FdWatch *>(h->data); });
  return env.Undefined();
}

void InitFdWatch(Napi::Env env, Napi::Object exports) {
  TSVMM_EXPORT(exports, "fdWatch", FdWatchStart);
  TSVMM_EXPORT(exports, "fdUnwatch", FdWatchStop);
}

}  // namespace tsvmm
