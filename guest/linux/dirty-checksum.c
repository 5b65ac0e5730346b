// dirty-checksum: rewrites a buffer pass after pass, each pass checking that the buffer still holds the
// previous pass's words, and prints one line per pass with a running checksum. A RAM page lost or left stale
// (a live migration that missed a dirty page) shows as an error line; a pass skipped or repeated shows as a
// gap in the pass numbers; the chained sum lets a test recompute every line from outside.
//
//   dirty-checksum [-d MS] [-p PASSES] SIZE     SIZE in bytes with an optional K/M/G suffix; PASSES 0 = forever
//
// Word i of pass n (n >= 1) is mix(n * 2^32 + i); pass 0 is the zero-filled buffer the kernel hands out.
// sum(n) adds pass n's words (mod 2^64); chain(0) = 0, chain(n) = mix(chain(n - 1) ^ sum(n)).
// Output: "dirty-checksum start words=W passes=P", then "pass N sum 0x..." (chain(N)); a wrong word prints
// "dirty-checksum error pass N word I got 0x... want 0x..." (at most 8 per pass) and "dirty-checksum error pass N
// bad=B" after the pass. Exit status 0 when every pass verified, 1 otherwise, 2 for bad arguments.
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

// splitmix64's finaliser: cheap, and every input bit reaches every output bit.
static inline uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static inline uint64_t word(uint64_t pass, uint64_t i) { return pass ? mix((pass << 32) + i) : 0; }

static int parse_size(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno || end == s) return -1;
  switch (*end) {
    case 'G': case 'g': v <<= 10; /* fall through */
    case 'M': case 'm': v <<= 10; /* fall through */
    case 'K': case 'k': v <<= 10; end++; break;
    case 0: break;
    default: return -1;
  }
  if (*end) return -1;
  *out = v;
  return 0;
}

static void usage(void) {
  fprintf(stderr, "usage: dirty-checksum [-d DELAY_MS] [-p PASSES] SIZE (e.g. 64M; PASSES 0 = forever)\n");
}

int main(int argc, char **argv) {
  uint64_t passes = 0, delay_ms = 0, size = 0;
  int opt;
  while ((opt = getopt(argc, argv, "d:p:h")) != -1) {
    if (opt == 'p' && parse_size(optarg, &passes) == 0) continue;
    if (opt == 'd' && parse_size(optarg, &delay_ms) == 0) continue;
    usage();
    return opt == 'h' ? 0 : 2;
  }
  if (optind != argc - 1 || parse_size(argv[optind], &size) || size < 8 || size % 8) {
    fprintf(stderr, "dirty-checksum error bad arguments: SIZE must be a multiple of 8 bytes, at least 8\n");
    usage();
    return 2;
  }
  uint64_t words = size / 8;
  uint64_t *buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (buf == MAP_FAILED) {
    printf("dirty-checksum error mmap %" PRIu64 " bytes: %s\n", size, strerror(errno));
    return 1;
  }
  // Console output may be a serial line: unbuffered lines reach it as each pass ends.
  setvbuf(stdout, NULL, _IOLBF, 0);
  printf("dirty-checksum start words=%" PRIu64 " passes=%" PRIu64 "\n", words, passes);
  uint64_t chain = 0, total_bad = 0;
  for (uint64_t n = 1; passes == 0 || n <= passes; n++) {
    uint64_t sum = 0, bad = 0;
    for (uint64_t i = 0; i < words; i++) {
      uint64_t want = word(n - 1, i), got = buf[i];
      if (got != want && bad++ < 8)
        printf("dirty-checksum error pass %" PRIu64 " word %" PRIu64 " got 0x%016" PRIx64 " want 0x%016" PRIx64 "\n",
               n, i, got, want);
      uint64_t w = word(n, i);
      buf[i] = w;
      sum += w;
    }
    chain = mix(chain ^ sum);
    if (bad) printf("dirty-checksum error pass %" PRIu64 " bad=%" PRIu64 "\n", n, bad);
    printf("pass %" PRIu64 " sum 0x%016" PRIx64 "\n", n, chain);
    total_bad += bad;
    if (delay_ms) {
      struct timespec ts = {(time_t)(delay_ms / 1000), (long)(delay_ms % 1000) * 1000000L};
      nanosleep(&ts, NULL);
    }
  }
  printf("dirty-checksum done bad=%" PRIu64 "\n", total_bad);
  return total_bad ? 1 : 0;
}
