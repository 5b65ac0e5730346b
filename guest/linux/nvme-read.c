// nvme-read: an O_DIRECT reader of a block device, for benchmarks and data checks inside a Linux guest.
//
//   nvme-read seq DEV SECONDS          sequential 1 MiB reads (wrapping at the end): "nvme-read seq bytes=B usec=U MBps=X"
//   nvme-read rand DEV SECONDS         4 KiB reads at random 4 KiB-aligned offsets, one at a time per job:
//                                      "nvme-read rand ios=N usec=U iops=X jobs=J"
//   nvme-read hash DEV BLOCK...        one line per block: "nvme-read block N sha256 H"
//   options (before the mode): -b BYTES block size for rand and hash (default 4096, a multiple of 512),
//                              -s SEED for rand's offsets, -j JOBS parallel random readers (threads;
//                              default 1: queue depth 1)
// Errors print "nvme-read error <why>" and exit 1 (2 for bad arguments). O_DIRECT bypasses the page cache, so
// every byte comes from the device through the driver's DMA (with a vIOMMU: through its mappings).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

// ---- SHA-256 (FIPS 180-4) ----
typedef struct {
  uint32_t h[8];
  uint64_t len;
  uint8_t buf[64];
  size_t fill;
} sha256_ctx;

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(sha256_ctx *c, const uint8_t *p) {
  uint32_t w[64];
  for (int i = 0; i < 16; i++)
    w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
  for (int i = 16; i < 64; i++) {
    uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = c->h[0], b = c->h[1], cc = c->h[2], d = c->h[3], e = c->h[4], f = c->h[5], g = c->h[6], h = c->h[7];
  for (int i = 0; i < 64; i++) {
    uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
    uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & cc) ^ (b & cc));
    h = g, g = f, f = e, e = d + t1, d = cc, cc = b, b = a, a = t1 + t2;
  }
  c->h[0] += a, c->h[1] += b, c->h[2] += cc, c->h[3] += d, c->h[4] += e, c->h[5] += f, c->h[6] += g, c->h[7] += h;
}

static void sha256_init(sha256_ctx *c) {
  static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  memcpy(c->h, iv, sizeof iv);
  c->len = 0;
  c->fill = 0;
}

static void sha256_update(sha256_ctx *c, const uint8_t *p, size_t n) {
  c->len += n;
  while (n) {
    size_t take = 64 - c->fill < n ? 64 - c->fill : n;
    memcpy(c->buf + c->fill, p, take);
    c->fill += take, p += take, n -= take;
    if (c->fill == 64) sha256_block(c, c->buf), c->fill = 0;
  }
}

static void sha256_hex(sha256_ctx *c, char out[65]) {
  uint64_t bits = c->len * 8;
  uint8_t pad = 0x80, zero = 0, lenb[8];
  sha256_update(c, &pad, 1);
  while (c->fill != 56) sha256_update(c, &zero, 1);
  for (int i = 0; i < 8; i++) lenb[i] = (uint8_t)(bits >> (56 - 8 * i));
  sha256_update(c, lenb, 8);
  for (int i = 0; i < 8; i++) sprintf(out + 8 * i, "%08x", c->h[i]);
}

// ---- the reader ----
static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int fail(const char *what, const char *dev) {
  printf("nvme-read error %s %s: %s\n", what, dev, strerror(errno));
  return 1;
}

static uint64_t rng(uint64_t *s) {  // xorshift64*
  *s ^= *s >> 12, *s ^= *s << 25, *s ^= *s >> 27;
  return *s * 0x2545f4914f6cdd1dull;
}

/** One random reader: blocks at random until `end`; its count in ios, or errno in err. */
struct job {
  int fd;
  uint64_t bs, blocks, seed, end, ios;
  int err;
  pthread_t thread;
};

static void *rand_job(void *arg) {
  struct job *j = arg;
  void *buf;
  if (posix_memalign(&buf, 4096, j->bs)) {
    j->err = ENOMEM;
    return NULL;
  }
  uint64_t s = j->seed ? j->seed : 1;
  for (uint64_t t = now_us(); t < j->end; t = now_us()) {
    uint64_t n = rng(&s) % j->blocks;
    ssize_t r = pread(j->fd, buf, j->bs, (off_t)(n * j->bs));
    if (r != (ssize_t)j->bs) {
      j->err = r < 0 ? errno : EIO;
      break;
    }
    j->ios++;
  }
  free(buf);
  return NULL;
}

static int parse_u64(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno || end == s || *end) return -1;
  *out = v;
  return 0;
}

static void usage(void) {
  fprintf(stderr,
          "usage: nvme-read [-b BLOCK_BYTES] [-s SEED] [-j JOBS] seq|rand DEV SECONDS\n"
          "       nvme-read [-b BLOCK_BYTES] hash DEV BLOCK...\n");
}

int main(int argc, char **argv) {
  uint64_t bs = 4096, seed = 1, jobs = 1;
  int opt;
  while ((opt = getopt(argc, argv, "+b:s:j:h")) != -1) {
    if (opt == 'j' && parse_u64(optarg, &jobs) == 0 && jobs >= 1 && jobs <= 64) continue;
    if (opt == 'b' && parse_u64(optarg, &bs) == 0 && bs >= 512 && bs % 512 == 0 && bs <= (1u << 20)) continue;
    if (opt == 's' && parse_u64(optarg, &seed) == 0) continue;
    usage();
    return opt == 'h' ? 0 : 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc - optind < 3) {
    usage();
    return 2;
  }
  const char *mode = argv[optind], *dev = argv[optind + 1];
  int fd = open(dev, O_RDONLY | O_DIRECT);
  if (fd < 0) return fail("open", dev);
  uint64_t size = 0;
  struct stat st;
  if (fstat(fd, &st) < 0) return fail("stat", dev);
  if (S_ISBLK(st.st_mode)) {
    if (ioctl(fd, BLKGETSIZE64, &size) < 0) return fail("BLKGETSIZE64", dev);
  } else
    size = (uint64_t)st.st_size;
  const size_t chunk = 1u << 20;
  void *buf;
  if (posix_memalign(&buf, 4096, chunk)) return fail("posix_memalign", dev);

  if (!strcmp(mode, "hash")) {
    for (int a = optind + 2; a < argc; a++) {
      uint64_t n;
      if (parse_u64(argv[a], &n)) {
        printf("nvme-read error block number '%s' is not a number\n", argv[a]);
        return 2;
      }
      if (n >= size / bs) {
        printf("nvme-read error block %" PRIu64 " is past the end of %s (%" PRIu64 " blocks of %" PRIu64 ")\n", n,
               dev, size / bs, bs);
        return 1;
      }
      ssize_t r = pread(fd, buf, bs, (off_t)(n * bs));
      if (r != (ssize_t)bs) {
        if (r >= 0) errno = EIO;
        return fail("read", dev);
      }
      sha256_ctx c;
      char hex[65];
      sha256_init(&c);
      sha256_update(&c, buf, bs);
      sha256_hex(&c, hex);
      printf("nvme-read block %" PRIu64 " sha256 %s\n", n, hex);
    }
    return 0;
  }

  uint64_t seconds;
  if (parse_u64(argv[optind + 2], &seconds) || !seconds || optind + 3 != argc) {
    usage();
    return 2;
  }
  if (size < chunk || size < bs) {
    printf("nvme-read error %s is too small (%" PRIu64 " bytes)\n", dev, size);
    return 1;
  }
  uint64_t t0 = now_us(), end = t0 + seconds * 1000000u, t = t0, bytes = 0, ios = 0;
  if (!strcmp(mode, "seq")) {
    uint64_t off = 0;
    while (t < end) {
      if (off + chunk > size) off = 0;
      ssize_t r = pread(fd, buf, chunk, (off_t)off);
      if (r != (ssize_t)chunk) {
        if (r >= 0) errno = EIO;
        return fail("read", dev);
      }
      off += chunk, bytes += chunk, ios++;
      t = now_us();
    }
    printf("nvme-read seq bytes=%" PRIu64 " usec=%" PRIu64 " MBps=%.1f\n", bytes, t - t0,
           (double)bytes / (double)(t - t0));
  } else if (!strcmp(mode, "rand")) {
    struct job js[64];
    for (uint64_t i = 0; i < jobs; i++) {
      js[i] = (struct job){.fd = fd, .bs = bs, .blocks = size / bs, .seed = seed + i * 0x9e3779b97f4a7c15ull, .end = end};
      if (pthread_create(&js[i].thread, NULL, rand_job, &js[i])) return fail("pthread_create", dev);
    }
    for (uint64_t i = 0; i < jobs; i++) {
      pthread_join(js[i].thread, NULL);
      ios += js[i].ios;
      if (js[i].err) {
        errno = js[i].err;
        return fail("read", dev);
      }
    }
    t = now_us();
    printf("nvme-read rand ios=%" PRIu64 " usec=%" PRIu64 " iops=%.0f jobs=%" PRIu64 "\n", ios, t - t0,
           (double)ios * 1e6 / (double)(t - t0), jobs);
  } else {
    usage();
    return 2;
  }
  return 0;
}
