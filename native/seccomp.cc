// seccomp(2) mechanism for the sandbox: installs a BPF program built in TypeScript
// (core/sandbox/) on every thread of the process, and a SIGSYS handler that turns a
// SECCOMP_RET_TRAP into a message naming the syscall and an exit with a fixed status.
// The policy (which syscalls, which arguments) lives in TypeScript; nothing here knows it.
#include "util.h"
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>
#include <vector>

namespace tsvmm {

// What the SIGSYS handler needs, copied at install time: it may only use async-signal-safe
// calls (write, _exit) and memory that no other code frees.
static constexpr int kMaxNr = 512;
static char *g_names[kMaxNr];
static std::string *g_hint;
static int g_status = 159;

static size_t Append(char *buf, size_t pos, size_t cap, const char *s) {
  while (*s && pos < cap) buf[pos++] = *s++;
  return pos;
}

static size_t AppendDec(char *buf, size_t pos, size_t cap, long v) {
  char tmp[24];
  int n = 0;
  bool neg = v < 0;
  unsigned long u = neg ? 0UL - static_cast<unsigned long>(v) : static_cast<unsigned long>(v);
  do {
    tmp[n++] = static_cast<char>('0' + u % 10);
    u /= 10;
  } while (u);
  if (neg && pos < cap) buf[pos++] = '-';
  while (n && pos < cap) buf[pos++] = tmp[--n];
  return pos;
}

static size_t AppendHex(char *buf, size_t pos, size_t cap, unsigned long long v) {
  char tmp[16];
  int n = 0;
  do {
    tmp[n++] = "0123456789abcdef"[v & 15];
    v >>= 4;
  } while (v);
  pos = Append(buf, pos, cap, "0x");
  while (n && pos < cap) buf[pos++] = tmp[--n];
  return pos;
}

// SIGSYS from SECCOMP_RET_TRAP: the syscall did not run. Say which one, with its arguments, then
// end the process: returning would hand the caller an errno it never expected.
static void OnSigsys(int, siginfo_t *si, void *ctx) {
  char buf[1024];
  const size_t cap = sizeof buf;
  size_t p = 0;
  int nr = si->si_syscall;
  p = Append(buf, p, cap, "\ntsvmm: the sandbox stopped the VMM: thread ");
  p = AppendDec(buf, p, cap, syscall(SYS_gettid));
  p = Append(buf, p, cap, " made syscall ");
  p = AppendDec(buf, p, cap, nr);
  p = Append(buf, p, cap, " (");
  p = Append(buf, p, cap, nr >= 0 && nr < kMaxNr && g_names[nr] ? g_names[nr] : "unknown");
  p = Append(buf, p, cap, ")");
  auto *uc = static_cast<ucontext_t *>(ctx);
  if (uc) {
    const greg_t *r = uc->uc_mcontext.gregs;
    const int regs[] = {REG_RDI, REG_RSI, REG_RDX, REG_R10, REG_R8, REG_R9};
    p = Append(buf, p, cap, " with arguments (");
    for (int i = 0; i < 6; i++) {
      if (i) p = Append(buf, p, cap, ", ");
      p = AppendHex(buf, p, cap, static_cast<unsigned long long>(r[regs[i]]));
    }
    p = Append(buf, p, cap, ")");
  }
  p = Append(buf, p, cap, ", which its allow-list does not have.\n");
  if (g_hint) p = Append(buf, p, cap, g_hint->c_str());
  if (p < cap) buf[p++] = '\n';
  size_t off = 0;
  while (off < p) {
    ssize_t w = write(2, buf + off, p - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;
    off += static_cast<size_t>(w);
  }
  _exit(g_status);
}

// seccompInstall(program: Buffer of struct sock_filter, names: (string|undefined)[] indexed by
// syscall number, hint: string, status: number): PR_SET_NO_NEW_PRIVS, the SIGSYS handler, then
// the filter on every thread (SECCOMP_FILTER_FLAG_TSYNC). Irreversible for the process.
static Napi::Value SeccompInstall(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsBuffer() || !info[1].IsArray() || !info[2].IsString())
    throw Napi::TypeError::New(env, "seccompInstall(program: Buffer, names: string[], hint: string, status: number)");
  auto prog = info[0].As<Napi::Buffer<uint8_t>>();
  if (prog.Length() == 0 || prog.Length() % sizeof(sock_filter) != 0 || prog.Length() / sizeof(sock_filter) > BPF_MAXINSNS)
    throw Napi::RangeError::New(env, "seccompInstall: the program is not a whole number of sock_filter (at most 4096)");
  // Copied: the filter is kept by the kernel, the names and hint by the handler, for good.
  std::vector<sock_filter> insns(prog.Length() / sizeof(sock_filter));
  memcpy(insns.data(), prog.Data(), prog.Length());
  Napi::Array names = info[1].As<Napi::Array>();
  for (uint32_t i = 0; i < names.Length() && i < static_cast<uint32_t>(kMaxNr); i++) {
    Napi::Value v = names.Get(i);
    if (v.IsString() && !g_names[i]) g_names[i] = strdup(v.As<Napi::String>().Utf8Value().c_str());
  }
  if (!g_hint) g_hint = new std::string(info[2].As<Napi::String>().Utf8Value());
  g_status = ArgInt(info, 3);

  struct sigaction sa = {};
  sa.sa_sigaction = OnSigsys;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_SIGINFO;
  if (sigaction(SIGSYS, &sa, nullptr) != 0) ThrowErrno(env, "sigaction(SIGSYS)", errno);
  // A thread that blocks SIGSYS would be killed silently instead (the kernel forces it unblocked
  // with the default action): make sure this one does not.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGSYS);
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);

  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) ThrowErrno(env, "prctl(PR_SET_NO_NEW_PRIVS)", errno);
  sock_fprog fprog = {static_cast<unsigned short>(insns.size()), insns.data()};
  long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &fprog);
  if (r < 0) ThrowErrno(env, "seccomp(SECCOMP_SET_MODE_FILTER, TSYNC)", errno);
  // With TSYNC a positive return is the id of a thread that could not be synchronized.
  if (r > 0) ThrowErrno(env, "seccomp(TSYNC): thread " + std::to_string(r) + " could not take the filter", EBUSY);
  return env.Undefined();
}

void InitSeccomp(Napi::Env env, Napi::Object exports) {
  TSVMM_EXPORT(exports, "seccompInstall", SeccompInstall);
}

}  // namespace tsvmm
