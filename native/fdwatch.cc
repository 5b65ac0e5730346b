// Watching an fd from the Node event loop (libuv's uv_poll): the callback runs on the loop's
// thread when the fd becomes readable, and no thread of the pool sits blocked in poll(2) for an
// fd that may stay quiet for the VM's whole life (VFIO request/error notifier eventfds).
#include "util.h"
#include <cstdlib>
#include <unordered_map>

// libuv's ABI (stable across 1.x), declared here rather than built against a header: Node
// exports these symbols, and the addon builds from node-api-headers alone. A poll handle is
// opaque memory of uv_handle_size(UV_POLL) bytes, its user pointer set through the accessors.
extern "C" {
struct uv_loop_s;
struct uv_handle_s;
struct uv_poll_s;
typedef void (*uv_poll_cb)(uv_poll_s *, int status, int events);
typedef void (*uv_close_cb)(uv_handle_s *);
size_t uv_handle_size(int type);
int uv_poll_init(uv_loop_s *, uv_poll_s *, int fd);
int uv_poll_start(uv_poll_s *, int events, uv_poll_cb);
int uv_poll_stop(uv_poll_s *);
void uv_close(uv_handle_s *, uv_close_cb);
void uv_unref(uv_handle_s *);
void *uv_handle_get_data(const uv_handle_s *);
void uv_handle_set_data(uv_handle_s *, void *);
}
static constexpr int UV_POLL_TYPE = 8;   // uv_handle_type UV_POLL
static constexpr int UV_READABLE_EV = 1;  // uv_poll_event UV_READABLE

namespace tsvmm {

struct FdWatch {
  uv_poll_s *poll;
  napi_env env;
  Napi::FunctionReference callback;
};

static uv_handle_s *AsHandle(uv_poll_s *p) { return reinterpret_cast<uv_handle_s *>(p); }
static void FreeWatch(uv_handle_s *h) {
  FdWatch *w = static_cast<FdWatch *>(uv_handle_get_data(h));
  free(h);
  delete w;
}

static std::unordered_map<uint32_t, FdWatch *> watches;
static uint32_t nextWatchId = 1;

static void OnReadable(uv_poll_s *handle, int status, int events) {
  FdWatch *w = static_cast<FdWatch *>(uv_handle_get_data(AsHandle(handle)));
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
  struct uv_loop_s *loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr)
    throw Napi::Error::New(env, "no libuv loop");
  auto *w = new FdWatch();
  w->env = env;
  w->poll = static_cast<uv_poll_s *>(calloc(1, uv_handle_size(UV_POLL_TYPE)));
  int err = uv_poll_init(loop, w->poll, fd);
  if (err != 0) { free(w->poll); delete w; ThrowErrno(env, "uv_poll_init", -err); }
  uv_handle_set_data(AsHandle(w->poll), w);
  err = uv_poll_start(w->poll, UV_READABLE_EV, OnReadable);
  if (err != 0) {
    uv_close(AsHandle(w->poll), FreeWatch);
    ThrowErrno(env, "uv_poll_start", -err);
  }
  if (!ref) uv_unref(AsHandle(w->poll));
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
  uv_poll_stop(w->poll);
  w->callback.Reset();
  uv_close(AsHandle(w->poll), FreeWatch);
  return env.Undefined();
}

void InitFdWatch(Napi::Env env, Napi::Object exports) {
  TSVMM_EXPORT(exports, "fdWatch", FdWatchStart);
  TSVMM_EXPORT(exports, "fdUnwatch", FdWatchStop);
}

}  // namespace tsvmm
