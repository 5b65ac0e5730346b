// Unix-socket fd passing (SCM_RIGHTS) for the manager, plus socketpair/O_NONBLOCK helpers.
// Blocking follows the socket's mode: on a non-blocking socket EAGAIN throws an Error with
// code 'EAGAIN' so JS can poll.
#include "util.h"
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <vector>

namespace tsvmm {

// The kernel's per-message limit on passed fds (SCM_MAX_FD).
static constexpr uint32_t kScmMaxFd = 253;

// sendFds(socketFd, data: Uint8Array, fds: number[]) → bytes sent. At least one data byte is
// required when fds are passed (a stream socket drops ancillary data sent with no bytes).
static Napi::Value SendFds(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  if (info.Length() < 3 || !info[1].IsTypedArray() || !info[2].IsArray())
    throw Napi::TypeError::New(env, "sendFds(socketFd, data: Uint8Array, fds: number[])");
  Napi::TypedArray ta = info[1].As<Napi::TypedArray>();
  uint8_t *data = static_cast<uint8_t *>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  size_t len = ta.ByteLength();
  Napi::Array a = info[2].As<Napi::Array>();
  uint32_t n = a.Length();
  if (n > kScmMaxFd) throw Napi::RangeError::New(env, "sendFds: at most 253 fds per message");
  if (n > 0 && len == 0) throw Napi::RangeError::New(env, "sendFds: passing fds needs at least one data byte");
  std::vector<int> fds(n);
  for (uint32_t i = 0; i < n; i++) {
    Napi::Value v = a.Get(i);
    if (!v.IsNumber()) throw Napi::TypeError::New(env, "sendFds: fds must be numbers");
    fds[i] = v.As<Napi::Number>().Int32Value();
  }

  struct iovec iov = {data, len};
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  // uint64_t storage keeps the control buffer aligned for struct cmsghdr.
  std::vector<uint64_t> control;
  if (n > 0) {
    size_t space = CMSG_SPACE(n * sizeof(int));
    control.assign((space + sizeof(uint64_t) - 1) / sizeof(uint64_t), 0);
    msg.msg_control = control.data();
    msg.msg_controllen = space;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(n * sizeof(int));
    memcpy(CMSG_DATA(cm), fds.data(), n * sizeof(int));
  }
  ssize_t r;
  do {
    r = sendmsg(fd, &msg, MSG_NOSIGNAL);
  } while (r < 0 && errno == EINTR);
  if (r < 0) ThrowErrno(env, "sendmsg", errno);
  return Napi::Number::New(env, static_cast<double>(r));
}

// recvFds(socketFd, maxData, maxFds, into?) → { data: Uint8Array, fds: number[], truncated }
// Received fds are O_CLOEXEC. When more fds arrived than maxFds (MSG_CTRUNC), the ones that
// were installed are closed, fds is empty and truncated is true. data.length 0 means EOF. With
// `into` (a Uint8Array) the bytes land there and data is a view of it: a reader that calls this in
// a loop allocates nothing per call.
static Napi::Value RecvFds(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  uint32_t maxData = ArgU32(info, 1);
  uint32_t maxFds = ArgU32(info, 2);
  if (maxData == 0) throw Napi::RangeError::New(env, "recvFds: maxData must be > 0");
  if (maxFds > kScmMaxFd) throw Napi::RangeError::New(env, "recvFds: maxFds must be <= 253");

  Napi::Uint8Array into;
  if (info.Length() > 3 && !info[3].IsUndefined()) {
    if (!info[3].IsTypedArray() || info[3].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      throw Napi::TypeError::New(env, "recvFds: argument 3 must be a Uint8Array");
    into = info[3].As<Napi::Uint8Array>();
    if (into.ByteLength() < maxData) throw Napi::RangeError::New(env, "recvFds: the Uint8Array is smaller than maxData");
  }
  std::vector<uint8_t> data(into.IsEmpty() ? maxData : 0);
  struct iovec iov = {into.IsEmpty() ? data.data() : into.Data(), maxData};
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<uint64_t> control;
  if (maxFds > 0) {
    control.assign((CMSG_SPACE(maxFds * sizeof(int)) + sizeof(uint64_t) - 1) / sizeof(uint64_t), 0);
    msg.msg_control = control.data();
    // CMSG_LEN, not CMSG_SPACE: the kernel fits (controllen - header) / sizeof(int) fds, and
    // CMSG_SPACE's padding would make room for one more than asked for.
    msg.msg_controllen = CMSG_LEN(maxFds * sizeof(int));
  }
  ssize_t r;
  do {
    r = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  } while (r < 0 && errno == EINTR);
  if (r < 0) ThrowErrno(env, "recvmsg", errno);

  std::vector<int> fds;
  if (msg.msg_controllen > 0) {
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm != nullptr; cm = CMSG_NXTHDR(&msg, cm)) {
      if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS || cm->cmsg_len < CMSG_LEN(0)) continue;
      size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const unsigned char *p = CMSG_DATA(cm);
      for (size_t i = 0; i < k; i++) {
        int f;
        memcpy(&f, p + i * sizeof(int), sizeof(int));
        fds.push_back(f);
      }
    }
  }
  bool truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
  if (truncated) {
    for (int f : fds) close(f);
    fds.clear();
  }

  Napi::Object o = Napi::Object::New(env);
  if (into.IsEmpty()) {
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, static_cast<size_t>(r));
    if (r > 0) memcpy(ab.Data(), data.data(), static_cast<size_t>(r));
    o.Set("data", Napi::Uint8Array::New(env, static_cast<size_t>(r), ab, 0));
  } else {
    o.Set("data", Napi::Uint8Array::New(env, static_cast<size_t>(r), into.ArrayBuffer(), into.ByteOffset()));
  }
  Napi::Array a = Napi::Array::New(env, fds.size());
  for (size_t i = 0; i < fds.size(); i++) a.Set(static_cast<uint32_t>(i), fds[i]);
  o.Set("fds", a);
  o.Set("truncated", truncated);
  return o;
}

// socketpair() → [fd, fd]  (AF_UNIX, SOCK_STREAM, close-on-exec)
static Napi::Value Socketpair(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) ThrowErrno(env, "socketpair", errno);
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(0u, sv[0]);
  a.Set(1u, sv[1]);
  return a;
}

// setNonBlocking(fd, on: boolean)
static Napi::Value SetNonBlocking(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  if (info.Length() < 2 || !info[1].IsBoolean()) throw Napi::TypeError::New(env, "setNonBlocking(fd, on: boolean)");
  bool on = info[1].As<Napi::Boolean>().Value();
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) ThrowErrno(env, "fcntl(F_GETFL)", errno);
  int nfl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
  if (nfl != fl && fcntl(fd, F_SETFL, nfl) < 0) ThrowErrno(env, "fcntl(F_SETFL)", errno);
  return env.Undefined();
}

void InitSocket(Napi::Env env, Napi::Object exports) {
  TSVMM_EXPORT(exports, "sendFds", SendFds);
  TSVMM_EXPORT(exports, "recvFds", RecvFds);
  TSVMM_EXPORT(exports, "socketpair", Socketpair);
  TSVMM_EXPORT(exports, "setNonBlocking", SetNonBlocking);
}

}  // namespace tsvmm
