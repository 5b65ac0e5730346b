// Loop watcher: lets the device-model (main) thread run vCPU 0's KVM_RUN itself while Node's
// event loop still gets served, the way embedders merge two loops (Electron polls libuv's
// backend fd from a helper thread). Armed once per run slice, a helper thread polls the loop's
// backend (epoll) fd with the loop's next timer timeout; when either fires it sets
// immediate_exit in vCPU 0's kvm_run page and sends the kick signal to the main thread, once,
// then waits for the next arm. Per exit only the timers found at the arm are read (no walk of
// every handle), and that in the call that enters KVM_RUN again (loopWatcherKvmRun). Mechanism
// only: when to arm, with what cap, and what to do when kicked is JS's.
#include "util.h"
#include "local-reads.h"
#include <linux/kvm.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <algorithm>
#include <climits>
#include <condition_variable>
#include <mutex>
#include <vector>

// libuv as exported by the node binary (public API, ABI-stable within libuv 1.x); declared here
// so the build does not need libuv's headers.
extern "C" {
struct uv_loop_s;
struct uv_handle_s;
int uv_backend_fd(const uv_loop_s *);
void uv_update_time(uv_loop_s *);
uint64_t uv_now(const uv_loop_s *);
void uv_walk(uv_loop_s *, void (*)(uv_handle_s *, void *), void *);
int uv_handle_get_type(const uv_handle_s *);
int uv_is_active(const uv_handle_s *);
uint64_t uv_timer_get_due_in(const uv_handle_s *);  // takes a uv_timer_t (libuv >= 1.40)
}
constexpr int kUvTimer = 13;  // UV_TIMER in uv_handle_type

namespace tsvmm {

namespace {

enum class State { Idle, Armed, Fired, Stop };

struct Watcher {
  uv_loop_s *loop = nullptr;
  int backendFd = -1;
  int wakeFd = -1;
  pthread_t thread{};
  bool started = false;
  pthread_t target{};
  int signo = 0;
  volatile uint8_t *immediateExit = nullptr;
  Napi::Reference<Napi::ArrayBuffer> page;  // keeps the kvm_run mapping alive
  std::mutex m;
  std::condition_variable cv;
  State state = State::Idle;
  int64_t deadlineMs = -1;  // in uv_now()'s clock; -1: no timer
  // Loop's thread only (arm, refresh, disarm):
  int64_t maxWaitMs = -1;   // the arm's cap (-1: none)
  int64_t capMs = -1;       // when the cap runs out (uv_now()'s clock); -1: not in force
  // The loop's timer handles as of the arm, so a refresh reads their due times without walking
  // every handle. Valid until the disarm: the slice runs inside one callback of the loop, and a
  // handle's memory is freed only in the loop's close phase, after its close callback.
  std::vector<uv_handle_s *> timers;
  bool fresh = false;       // armed, and no run since: no code ran on the loop's thread yet
  int64_t armedAtMs = 0;    // MonotonicMs() at the arm (the slice budget of loopWatcherKvmRun)
  int64_t budgetMs = -1;    // the arm's slice budget (-1: none)
  // The vCPU it runs (loopWatcherBind): fixed for the watcher's life, so the call per exit passes
  // the handle alone.
  bool bound = false;
  int vcpuFd = -1;
  LocalReads *reads = nullptr;
  Napi::Reference<Napi::Value> readsRef;  // keeps the local-reads handle alive
  uint64_t gen = 0;
  uint64_t fires = 0;
};

int64_t MonotonicMs() {
  // uv_now() is CLOCK_MONOTONIC in ms (libuv's fast clock may be the coarse one: a ms early at worst).
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

void *Run(void *arg) {
  auto *w = static_cast<Watcher *>(arg);
  std::unique_lock<std::mutex> lk(w->m);
  for (;;) {
    w->cv.wait(lk, [w] { return w->state == State::Armed || w->state == State::Stop; });
    if (w->state == State::Stop) return nullptr;
    uint64_t gen = w->gen;
    int64_t deadline = w->deadlineMs;
    lk.unlock();
    int timeout = -1;
    if (deadline >= 0) {
      int64_t now = MonotonicMs();
      timeout = deadline > now ? static_cast<int>(std::min<int64_t>(deadline - now, INT32_MAX)) : 0;
    }
    struct pollfd p[2] = {{w->backendFd, POLLIN, 0}, {w->wakeFd, POLLIN, 0}};
    int r = poll(p, 2, timeout);
    if (r > 0 && p[1].revents) {
      uint64_t v;
      ssize_t n = read(w->wakeFd, &v, sizeof v);
      (void)n;
    }
    lk.lock();
    // Only the arm this poll was for may fire (a disarm or a newer arm since then wins).
    bool due = r == 0 || (r > 0 && (p[0].revents & (POLLIN | POLLERR | POLLHUP)));
    if (w->state == State::Armed && w->gen == gen && due) {
      w->state = State::Fired;
      w->fires++;
      *w->immediateExit = 1;
      pthread_kill(w->target, w->signo);
    }
  }
}

Watcher *Get(const Napi::CallbackInfo &info) {
  if (info.Length() < 1 || !info[0].IsExternal()) throw Napi::TypeError::New(info.Env(), "argument 0 must be a loop watcher");
  auto *w = info[0].As<Napi::External<Watcher>>().Data();
  if (!w->started) throw Napi::Error::New(info.Env(), "loop watcher was destroyed");
  return w;
}

void Wake(Watcher *w) {
  uint64_t one = 1;
  ssize_t n = write(w->wakeFd, &one, sizeof one);
  (void)n;
}

void Stop(Watcher *w) {
  {
    std::lock_guard<std::mutex> lk(w->m);
    w->state = State::Stop;
  }
  w->cv.notify_one();
  Wake(w);
  pthread_join(w->thread, nullptr);
  close(w->wakeFd);
  w->started = false;
  w->page.Reset();
  w->readsRef.Reset();
  w->reads = nullptr;
}

}  // namespace

// loopWatcherCreate(runPage: ArrayBuffer, immediateExitOffset, thread: bigint, signo) → handle.
// Watches the calling thread's libuv loop; kicks `thread` (the one running vCPU 0's KVM_RUN).
static Napi::Value LoopWatcherCreate(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) throw Napi::TypeError::New(env, "argument 0 must be the kvm_run ArrayBuffer");
  Napi::ArrayBuffer page = info[0].As<Napi::ArrayBuffer>();
  uint32_t off = ArgU32(info, 1);
  if (off >= page.ByteLength()) throw Napi::RangeError::New(env, "immediate_exit offset is outside the kvm_run page");
  auto *w = new Watcher();
  w->immediateExit = static_cast<uint8_t *>(page.Data()) + off;
  w->page = Napi::Persistent(page);
  w->target = static_cast<pthread_t>(ArgU64(info, 2));
  w->signo = ArgInt(info, 3);
  if (napi_get_uv_event_loop(env, reinterpret_cast<struct uv_loop_s **>(&w->loop)) != napi_ok || !w->loop) {
    delete w;
    throw Napi::Error::New(env, "no libuv loop for this thread");
  }
  w->backendFd = uv_backend_fd(w->loop);
  w->wakeFd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (w->wakeFd < 0) {
    int e = errno;
    delete w;
    ThrowErrno(env, "eventfd", e);
  }
  // The helper thread takes no signals (the kick and SIGINT belong to others), except SIGSYS: a
  // seccomp trap there must reach the sandbox's report (seccomp.cc), not kill the process unsaid.
  sigset_t all, old;
  sigfillset(&all);
  sigdelset(&all, SIGSYS);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  int err = pthread_create(&w->thread, nullptr, Run, w);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (err != 0) {
    close(w->wakeFd);
    delete w;
    ThrowErrno(env, "pthread_create", err);
  }
  w->started = true;
  return Napi::External<Watcher>::New(env, w, [](Napi::Env, Watcher *w) {
    if (w->started) Stop(w);
    delete w;
  });
}

// The earliest due time (uv_now()'s clock) of the loop's active timers in `timers`, or of the cap
// when it is in force; -1: none. uv_backend_timeout would say 0 here: called from inside a
// callback, the loop looks busy with the very callback that asks.
static int64_t Deadline(Watcher *w) {
  int64_t now = static_cast<int64_t>(uv_now(w->loop));
  int64_t due = -1;
  for (uv_handle_s *h : w->timers) {
    if (!uv_is_active(h)) continue;
    int64_t at = now + static_cast<int64_t>(std::min<uint64_t>(uv_timer_get_due_in(h), INT32_MAX));
    if (due < 0 || at < due) due = at;
  }
  if (w->capMs >= 0 && (due < 0 || w->capMs < due)) due = w->capMs;
  return due;
}

// loopWatcherArm(h, maxWaitMs = -1, capNow = false, budgetMs = -1): from the loop's thread, before a
// run slice (budgetMs: loopWatcherKvmRun's).
// Clears immediate_exit and starts watching the loop's backend fd and its timers. maxWaitMs bounds
// what no fd or timer announces (an immediate or microtask queued, an fd or timer handle created
// during the slice): it runs from the first refresh (code ran on the loop's thread), or from the
// arm with capNow. A slice that runs no code on the loop's thread thus sits in KVM_RUN until a
// timer or an fd has work, with no periodic kick. Returns the timeout it watches with (ms, -1: none).
static Napi::Value LoopWatcherArm(const Napi::CallbackInfo &info) {
  Watcher *w = Get(info);
  int64_t maxWait = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int64Value() : -1;
  uv_update_time(w->loop);
  int64_t now = static_cast<int64_t>(uv_now(w->loop));
  w->timers.clear();
  uv_walk(w->loop, [](uv_handle_s *h, void *arg) {
    if (uv_handle_get_type(h) == kUvTimer) static_cast<std::vector<uv_handle_s *> *>(arg)->push_back(h);
  }, &w->timers);
  w->maxWaitMs = maxWait;
  w->capMs = maxWait >= 0 && info.Length() > 2 && info[2].ToBoolean().Value() ? now + maxWait : -1;
  w->budgetMs = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().Int64Value() : -1;
  int64_t deadline = Deadline(w);
  {
    std::lock_guard<std::mutex> lk(w->m);
    *w->immediateExit = 0;
    w->state = State::Armed;
    w->deadlineMs = deadline;
    w->gen++;
  }
  w->fresh = true;
  w->armedAtMs = MonotonicMs();
  w->cv.notify_one();
  return Napi::Number::New(info.Env(), deadline < 0 ? -1 : static_cast<double>(deadline - now));
}

// loopWatcherRefresh(h): code ran on the loop's thread during the slice (an exit handler): the cap
// runs from now if it did not yet, and a timer it started is watched if it falls due earlier.
// Reads the armed timers' due times only (no walk; no lock or syscall when nothing changed);
// returns whether the deadline moved.
static bool Refresh(Watcher *w) {
  if (w->capMs < 0 && w->maxWaitMs >= 0) w->capMs = MonotonicMs() + w->maxWaitMs;
  int64_t deadline = Deadline(w);
  int64_t armed = w->deadlineMs;  // written only on this thread
  if (deadline < 0 || (armed >= 0 && deadline >= armed)) return false;
  {
    std::lock_guard<std::mutex> lk(w->m);
    if (w->state != State::Armed) return false;
    w->deadlineMs = deadline;
    w->gen++;
  }
  Wake(w);  // the poll restarts with the new deadline
  return true;
}

static Napi::Value LoopWatcherRefresh(const Napi::CallbackInfo &info) {
  return Napi::Boolean::New(info.Env(), Refresh(Get(info)));
}

// loopWatcherBind(h, vcpuFd, reads?): the vCPU loopWatcherKvmRun runs, and its local-reads handle
// (local-reads.cc), if any.
static Napi::Value LoopWatcherBind(const Napi::CallbackInfo &info) {
  Watcher *w = Get(info);
  w->vcpuFd = ArgInt(info, 1);
  w->bound = true;
  w->reads = OptLocalReads(info, 2);
  w->readsRef.Reset();
  if (w->reads) w->readsRef = Napi::Persistent(info[2]);
  return info.Env().Undefined();
}

// loopWatcherKvmRun(h) → as kvmRun (0, or -EINTR/-EAGAIN when kicked): the bound vCPU's KVM_RUN,
// after a refresh unless this is the first run since the arm (code ran on the loop's thread
// between two runs: the exit's handler). One call per exit instead of two. With local reads, a
// read it answers enters KVM_RUN again at once: no code ran on the loop's thread, so the watcher
// needs no refresh, and a kick still ends the call (the signal stays pending outside KVM_RUN;
// immediate_exit is seen by the next entry). With the arm's budgetMs, once that long has passed
// since the arm it returns 1 after a read it answered (the exit is done; the slice may end), as JS
// ends a slice of its own exits: the event loop then gets its turn even when the watcher's thread
// waits for a CPU. Plain N-API with the handle as the only argument: it is the call every exit
// vCPU 0 answers in JS makes, and without node-addon-api's wrapper and three more arguments to
// check, a virtio-iommu request's user time went from 3.7-4.3 to 3.3-3.9 us (perf on the own KVM;
// docs/benchmarks.md).
static napi_value LoopWatcherKvmRun(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 1;
  napi_value arg;
  void *p = nullptr;
  if (napi_get_cb_info(env, cbinfo, &argc, &arg, nullptr, nullptr) != napi_ok || argc < 1 ||
      napi_get_value_external(env, arg, &p) != napi_ok || !p) {
    napi_throw_type_error(env, nullptr, "argument 0 must be a loop watcher");
    return nullptr;
  }
  auto *w = static_cast<Watcher *>(p);
  if (!w->started || !w->bound) {
    napi_throw_error(env, nullptr, w->started ? "loop watcher has no vCPU (loopWatcherBind)" : "loop watcher was destroyed");
    return nullptr;
  }
  if (!w->fresh) Refresh(w);
  w->fresh = false;
  int r;
  for (uint32_t n = 1;; n++) {
    r = ioctl(w->vcpuFd, KVM_RUN, 0);
    if (r < 0) {
      int e = errno;
      if (e == EINTR || e == EAGAIN) {
        r = -e;
        break;
      }
      return RawThrowErrno(env, "ioctl(KVM_RUN)", e);
    }
    if (!w->reads || !AnswerLocalRead(w->reads)) break;
    if (w->budgetMs >= 0 && (n & 15) == 0 && MonotonicMs() - w->armedAtMs > w->budgetMs) {
      r = 1;
      break;
    }
  }
  napi_value out;
  napi_create_int32(env, r, &out);
  return out;
}

// loopWatcherDisarm(h) → whether it fired since the arm. No kick is sent after this returns.
static Napi::Value LoopWatcherDisarm(const Napi::CallbackInfo &info) {
  Watcher *w = Get(info);
  bool fired;
  {
    std::lock_guard<std::mutex> lk(w->m);
    fired = w->state == State::Fired;
    w->state = State::Idle;
    w->gen++;
  }
  w->timers.clear();  // their memory may go once the loop runs again
  Wake(w);  // end a poll still waiting for this arm
  return Napi::Boolean::New(info.Env(), fired);
}

// loopWatcherFired(h): whether the current arm fired (the loop has work).
static Napi::Value LoopWatcherFired(const Napi::CallbackInfo &info) {
  Watcher *w = Get(info);
  std::lock_guard<std::mutex> lk(w->m);
  return Napi::Boolean::New(info.Env(), w->state == State::Fired);
}

// loopWatcherStats(h) → number of kicks sent.
static Napi::Value LoopWatcherStats(const Napi::CallbackInfo &info) {
  Watcher *w = Get(info);
  std::lock_guard<std::mutex> lk(w->m);
  return Napi::Number::New(info.Env(), static_cast<double>(w->fires));
}

// loopWatcherDestroy(h): stops and joins the helper thread (idempotent).
static Napi::Value LoopWatcherDestroy(const Napi::CallbackInfo &info) {
  if (info.Length() < 1 || !info[0].IsExternal()) throw Napi::TypeError::New(info.Env(), "argument 0 must be a loop watcher");
  auto *w = info[0].As<Napi::External<Watcher>>().Data();
  if (w->started) Stop(w);
  return info.Env().Undefined();
}

void InitLoopWatcher(Napi::Env env, Napi::Object exports) {
  TSVMM_EXPORT(exports, "loopWatcherCreate", LoopWatcherCreate);
  TSVMM_EXPORT(exports, "loopWatcherArm", LoopWatcherArm);
  TSVMM_EXPORT(exports, "loopWatcherRefresh", LoopWatcherRefresh);
  TSVMM_EXPORT(exports, "loopWatcherBind", LoopWatcherBind);
  ExportRaw(env, exports, "loopWatcherKvmRun", LoopWatcherKvmRun);
  TSVMM_EXPORT(exports, "loopWatcherDisarm", LoopWatcherDisarm);
  TSVMM_EXPORT(exports, "loopWatcherFired", LoopWatcherFired);
  TSVMM_EXPORT(exports, "loopWatcherStats", LoopWatcherStats);
  TSVMM_EXPORT(exports, "loopWatcherDestroy", LoopWatcherDestroy);
}

}  // namespace tsvmm
