// mtty-loop: streams a sequence through a serial port that loops what it sends back into its own receive FIFO (the
// Linux mtty sample mdev, 4348:3253, which the guest's 8250_pci driver binds as a 16550A) and checks every byte read
// back. The tty is raw, driven by the kernel's 8250 driver with interrupts: a byte lost or repeated in the device's
// FIFO, a register or an interrupt enable lost (a migration that carried the device's state wrong) shows as an
// error line or a stall.
//
//   mtty-loop [-b BYTES] [-r REPORT] [-w WINDOW] [-t SECONDS] TTY
//     BYTES:   stop after this many bytes came back (default 0: forever)
//     REPORT:  print a line each time this many more bytes came back (default 4096)
//     WINDOW:  at most this many bytes written and not yet read back (default 15: mtty's 16-byte FIFO reads as
//              empty when it is full, its head index wrapped onto its tail, so a 16th byte in flight makes the
//              8250 driver see no data and send more, which the full FIFO drops)
//     SECONDS: nothing read for this long while bytes are in flight is a stall (default 120)
//
// Byte i of the stream (i >= 0) is mix(i) & 0xff (splitmix64's finaliser, as dirty-checksum's): a byte lost or
// repeated shifts every byte after it, so it shows within a few bytes.
// Output: "mtty-loop start tty=T window=W report=R", "mtty-loop at N" (N bytes came back right, a multiple of
// REPORT), "mtty-loop done bytes=N"; an error prints "mtty-loop error ..." and exits 1 (bad arguments: 2).
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

static inline uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static inline unsigned char byte_at(uint64_t i) { return (unsigned char)(mix(i) & 0xff); }

static int parse_u64(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno || end == s || *end) return -1;
  *out = v;
  return 0;
}

static void usage(void) {
  fprintf(stderr, "usage: mtty-loop [-b BYTES] [-r REPORT] [-w WINDOW] [-t SECONDS] TTY\n");
}

int main(int argc, char **argv) {
  uint64_t total = 0, report = 4096, window = 15, timeout_s = 120;
  int opt;
  while ((opt = getopt(argc, argv, "b:r:w:t:h")) != -1) {
    if (opt == 'b' && parse_u64(optarg, &total) == 0) continue;
    if (opt == 'r' && parse_u64(optarg, &report) == 0 && report > 0) continue;
    if (opt == 'w' && parse_u64(optarg, &window) == 0 && window > 0 && window <= 4096) continue;
    if (opt == 't' && parse_u64(optarg, &timeout_s) == 0 && timeout_s > 0 && timeout_s <= 3600) continue;
    usage();
    return opt == 'h' ? 0 : 2;
  }
  if (optind != argc - 1) {
    fprintf(stderr, "mtty-loop error bad arguments: give one TTY (e.g. /dev/ttyS1)\n");
    usage();
    return 2;
  }
  const char *tty = argv[optind];
  // Console output may be a serial line: whole lines, each as it is printed.
  setvbuf(stdout, NULL, _IOLBF, 0);
  int fd = open(tty, O_RDWR | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) {
    printf("mtty-loop error open %s: %s\n", tty, strerror(errno));
    return 1;
  }
  // Raw (no echo: an echoed byte would come back twice), no modem control or flow control: mtty has no line.
  struct termios t;
  if (tcgetattr(fd, &t) < 0) {
    printf("mtty-loop error tcgetattr %s: %s (not a tty?)\n", tty, strerror(errno));
    return 1;
  }
  cfmakeraw(&t);
  t.c_cflag |= CLOCAL | CREAD;
  t.c_cflag &= ~CRTSCTS;
  t.c_cc[VMIN] = 0;
  t.c_cc[VTIME] = 0;
  cfsetispeed(&t, B115200);
  cfsetospeed(&t, B115200);
  if (tcsetattr(fd, TCSANOW, &t) < 0 || tcflush(fd, TCIOFLUSH) < 0) {
    printf("mtty-loop error tcsetattr %s: %s\n", tty, strerror(errno));
    return 1;
  }
  printf("mtty-loop start tty=%s window=%" PRIu64 " report=%" PRIu64 "\n", tty, window, report);

  uint64_t wr = 0, rd = 0;
  unsigned char buf[4096];
  while (!total || rd < total) {
    int can_write = wr - rd < window && (!total || wr < total);
    struct pollfd p = {.fd = fd, .events = POLLIN | (can_write ? POLLOUT : 0)};
    int n = poll(&p, 1, (int)(timeout_s * 1000));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      printf("mtty-loop error poll: %s\n", strerror(errno));
      return 1;
    }
    if (p.revents & (POLLERR | POLLHUP | POLLNVAL)) {
      printf("mtty-loop error %s: poll revents 0x%x at %" PRIu64 "\n", tty, p.revents, rd);
      return 1;
    }
    // A timed-out poll gets one more read: a wake-up racing the time-out is not a stall.
    if (n == 0 || (p.revents & POLLIN)) {
      ssize_t k = read(fd, buf, sizeof buf);
      if (k < 0 && errno != EAGAIN && errno != EINTR) {
        printf("mtty-loop error read: %s\n", strerror(errno));
        return 1;
      }
      if (n == 0 && k <= 0) {
        printf("mtty-loop error stalled at %" PRIu64 ": %" PRIu64 " bytes in flight, none came back in %" PRIu64
               " s\n",
               rd, wr - rd, timeout_s);
        return 1;
      }
      for (ssize_t j = 0; j < k; j++, rd++) {
        if (rd >= wr) {
          printf("mtty-loop error at %" PRIu64 ": more bytes came back than were written (%" PRIu64 ")\n", rd, wr);
          return 1;
        }
        unsigned char want = byte_at(rd);
        if (buf[j] != want) {
          printf("mtty-loop error at %" PRIu64 " got 0x%02x want 0x%02x\n", rd, buf[j], want);
          return 1;
        }
        if ((rd + 1) % report == 0) printf("mtty-loop at %" PRIu64 "\n", rd + 1);
      }
    }
    if (can_write && (p.revents & POLLOUT)) {
      uint64_t m = window - (wr - rd);
      if (total && m > total - wr) m = total - wr;
      if (m > sizeof buf) m = sizeof buf;
      for (uint64_t j = 0; j < m; j++) buf[j] = byte_at(wr + j);
      ssize_t k = write(fd, buf, m);
      if (k < 0 && errno != EAGAIN && errno != EINTR) {
        printf("mtty-loop error write: %s\n", strerror(errno));
        return 1;
      }
      if (k > 0) wr += (uint64_t)k;
    }
  }
  printf("mtty-loop done bytes=%" PRIu64 "\n", rd);
  return 0;
}
