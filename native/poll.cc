// poll(2) in the libuv thread pool, for fds Node's own I/O cannot serve: a QMP client socket
// whose messages carry SCM_RIGHTS fds (read with recvFds once readable).
#include "util.h"
#include <poll.h>

namespace tsvmm {

class PollWorker : public Napi::AsyncWorker {
 public:
  PollWorker(Napi::Env env, int fd, short events, int timeoutMs)
      : Napi::AsyncWorker(env, "tsvmm.poll"), deferred_(Napi::Promise::Deferred::New(env)), fd_(fd), events_(events), timeout_(timeoutMs) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    struct pollfd p = {fd_, events_, 0};
    int r;
    do {
      r = poll(&p, 1, timeout_);
    } while (r < 0 && errno == EINTR);
    if (r < 0) err_ = errno;
    else revents_ = r == 0 ? 0 : p.revents;
  }
  void OnOK() override {
    Napi::Env env = Env();
    if (err_) {
      Napi::Error e = Napi::Error::New(env, std::string("poll: ") + strerror(err_));
      e.Set("code", Napi::String::New(env, ErrnoName(err_)));
      e.Set("errno", Napi::Number::New(env, err_));
      e.Set("syscall", Napi::String::New(env, "poll"));
      deferred_.Reject(e.Value());
    } else {
      deferred_.Resolve(Napi::Number::New(env, revents_));
    }
  }
  void OnError(const Napi::Error &e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  int fd_;
  short events_;
  int timeout_;
  int err_ = 0;
  int revents_ = 0;
};

// pollFd(fd, events, timeoutMs) → Promise<revents> (0 on timeout). Runs in the thread pool.
static Napi::Value PollFd(const Napi::CallbackInfo &info) {
  auto *w = new PollWorker(info.Env(), ArgInt(info, 0), static_cast<short>(ArgInt(info, 1)), ArgInt(info, 2));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

void InitPoll(Napi::Env env, Napi::Object exports) {
  TSVMM_EXPORT(exports, "pollFd", PollFd);
  Napi::Object c = exports.Has("constants") ? exports.Get("constants").As<Napi::Object>() : Napi::Object::New(env);
  c.Set("POLLIN", Napi::Number::New(env, POLLIN));
  c.Set("POLLHUP", Napi::Number::New(env, POLLHUP));
  c.Set("POLLERR", Napi::Number::New(env, POLLERR));
  exports.Set("constants", c);
}

}  // namespace tsvmm
