// poll(2) in the libuv thread pool, for fds Node's own I/O cannot serve: a QMP client socket
// whose messages carry SCM_RIGHTS fds (read with recvFds once readable).
#include "util.h"
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

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

// writeFully(fd, data, stop, index): writes all of `data` (a TypedArray) to fd, blocking the
// calling thread (a worker's: a migration's RAM thread writes its sections itself, as QEMU's
// migration thread does), waiting in poll(2) while a non-blocking fd is full; every 100 ms of
// waiting it looks at stop[index] (an Int32Array over shared memory) and gives up when it is set
// (a cancelled migration whose peer reads nothing). Throws the errno of a failed write.
static Napi::Value WriteFully(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[1].IsTypedArray() || !info[2].IsTypedArray() ||
      info[2].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw Napi::TypeError::New(env, "writeFully(fd, data, stop: Int32Array, index)");
  int fd = ArgInt(info, 0);
  Napi::TypedArray d = info[1].As<Napi::TypedArray>();
  // TypedArrayOf's data pointer (not ArrayBuffer().Data()): `stop` lives in a SharedArrayBuffer.
  Napi::Int32Array st = info[2].As<Napi::Int32Array>();
  uint32_t index = ArgU32(info, 3);
  if (index >= st.ElementLength()) throw Napi::RangeError::New(env, "writeFully: stop index out of range");
  const uint8_t *p = static_cast<const uint8_t *>(d.ArrayBuffer().Data()) + d.ByteOffset();
  int32_t *stop = st.Data() + index;
  size_t left = d.ByteLength();
  while (left) {
    ssize_t n = write(fd, p, left);
    if (n > 0) {
      p += n;
      left -= static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN) ThrowErrno(env, "write", errno);
    struct pollfd q = {fd, POLLOUT, 0};
    while (!__atomic_load_n(stop, __ATOMIC_SEQ_CST)) {
      int r = poll(&q, 1, 100);
      if (r > 0 || (r < 0 && errno != EINTR)) break;
    }
    if (__atomic_load_n(stop, __ATOMIC_SEQ_CST)) {
      Napi::Error e = Napi::Error::New(env, "writeFully: stopped");
      e.Set("code", Napi::String::New(env, "ESTOPPED"));
      throw e;
    }
  }
  return env.Undefined();
}

// dupFd(fd) → a new fd (close-on-exec) for the same open file.
static Napi::Value DupFd(const Napi::CallbackInfo &info) {
  int r = fcntl(ArgInt(info, 0), F_DUPFD_CLOEXEC, 0);
  if (r < 0) ThrowErrno(info.Env(), "fcntl(F_DUPFD_CLOEXEC)", errno);
  return Napi::Number::New(info.Env(), r);
}

void InitPoll(Napi::Env env, Napi::Object exports) {
  TSVMM_EXPORT(exports, "writeFully", WriteFully);
  TSVMM_EXPORT(exports, "dupFd", DupFd);
  TSVMM_EXPORT(exports, "pollFd", PollFd);
  Napi::Object c = exports.Has("constants") ? exports.Get("constants").As<Napi::Object>() : Napi::Object::New(env);
  c.Set("POLLIN", Napi::Number::New(env, POLLIN));
  c.Set("POLLHUP", Napi::Number::New(env, POLLHUP));
  c.Set("POLLERR", Napi::Number::New(env, POLLERR));
  exports.Set("constants", c);
}

}  // namespace tsvmm
