/* test=virtio-iommu: a virtio 1.2 driver for the virtio-iommu (1af4:1057), written from the spec as
 * Linux's virtio_pci_modern and virtio_iommu drive it: find the vendor capabilities, negotiate
 * (a driver without VERSION_1 must be refused), read the config, set up the request queue, then
 * send requests and poll the used ring for each (Linux's request queue has no interrupt either):
 * ATTACH/PROBE to an endpoint that is not behind the IOMMU (S_NOENT), MAP in a domain that does
 * not exist (S_NOENT), an unknown request (S_UNSUPP), one through an indirect table; finally a
 * descriptor pointing outside RAM must make the device set DEVICE_NEEDS_RESET, and a reset
 * (status 0) must clear it and every queue. */
#include "guest.h"

#define TIMEOUT_MS 5000
#define QSIZE 16

#define CAP_COMMON 1
#define CAP_NOTIFY 2
#define CAP_ISR 3
#define CAP_DEVICE 4

/* common config offsets (virtio 1.2 4.1.4.3) */
#define C_DFSEL 0x00
#define C_DF 0x04
#define C_GFSEL 0x08
#define C_GF 0x0c
#define C_NUMQ 0x12
#define C_STATUS 0x14
#define C_QSEL 0x16
#define C_QSIZE 0x18
#define C_QENABLE 0x1c
#define C_QNOFF 0x1e
#define C_QDESC 0x20
#define C_QDRIVER 0x28
#define C_QDEVICE 0x30

#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_NEEDS_RESET 0x40

#define F_NEXT 1
#define F_WRITE 2
#define F_INDIRECT 4

struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct avail { uint16_t flags, idx, ring[QSIZE], used_event; };
struct used_elem { uint32_t id, len; };
struct used { uint16_t flags, idx; struct used_elem ring[QSIZE]; uint16_t avail_event; };

static struct desc ring_desc[QSIZE] __attribute__((aligned(16)));
static volatile struct avail ring_avail __attribute__((aligned(2)));
static volatile struct used ring_used __attribute__((aligned(4)));
static struct desc indirect[2] __attribute__((aligned(16)));
static uint8_t req[128] __attribute__((aligned(8)));
static volatile uint8_t resp[520] __attribute__((aligned(8)));

static uint32_t common, notify, isr, device, notify_mult;
static bool notify_io; /* the doorbell the device lists first is a port (its I/O BAR) */
static uint32_t queue_notify; /* the request queue's doorbell address, worked out once at set-up (as Linux does) */
static uint16_t avail_idx, used_seen;
static int failures;

static void result(const char *name, const char *why) {
  if (why) printf("FAIL %s: %s\n", name, why), failures++;
  else printf("PASS %s\n", name);
}

static uint8_t rd8(uint32_t a) { return *(volatile uint8_t *)(uintptr_t)a; }
static uint16_t rd16(uint32_t a) { return *(volatile uint16_t *)(uintptr_t)a; }
static void wr8(uint32_t a, uint8_t v) { *(volatile uint8_t *)(uintptr_t)a = v; }
static void wr16(uint32_t a, uint16_t v) { *(volatile uint16_t *)(uintptr_t)a = v; }
static void barrier(void) { __asm__ volatile("" : : : "memory"); }

static bool find_caps(uint32_t bdf) {
  for (uint8_t p = pci_read8(bdf, 0x34); p; p = pci_read8(bdf, p + 1)) {
    if (pci_read8(bdf, p) != 0x09) continue;
    uint8_t type = pci_read8(bdf, p + 3), bar = pci_read8(bdf, p + 4);
    if (type < CAP_COMMON || type > CAP_DEVICE) continue; /* the PCI config access capability names no mapped BAR */
    const char *why = 0;
    uint32_t raw = bar < 6 ? pci_read32(bdf, 0x10 + 4 * bar) : 0;
    /* The first capability of each type is the device's preference (virtio 1.2 4.1.4); a notify
     * structure may be in an I/O BAR. */
    bool io = (raw & 1) != 0;
    uint32_t base = io ? (raw & 0xfffc) : pci_bar_mem(bdf, bar, &why);
    if (!base) { printf("tsvmm-guest: virtio BAR%u: %s\n", bar, why ? why : "unassigned"); return false; }
    if (io && type != CAP_NOTIFY) { printf("tsvmm-guest: virtio BAR%u: an I/O BAR for capability %u\n", bar, type); return false; }
    uint32_t at = base + pci_read32(bdf, p + 8);
    if (type == CAP_COMMON && !common) common = at;
    else if (type == CAP_NOTIFY && !notify) notify = at, notify_mult = pci_read32(bdf, p + 16), notify_io = io;
    else if (type == CAP_ISR && !isr) isr = at;
    else if (type == CAP_DEVICE && !device) device = at;
  }
  return common && notify && isr && device;
}

static uint64_t device_features(void) {
  mmio_write32(common + C_DFSEL, 0);
  uint32_t lo = mmio_read32(common + C_DF);
  mmio_write32(common + C_DFSEL, 1);
  return (uint64_t)mmio_read32(common + C_DF) << 32 | lo;
}

static void driver_features(uint64_t f) {
  mmio_write32(common + C_GFSEL, 0);
  mmio_write32(common + C_GF, (uint32_t)f);
  mmio_write32(common + C_GFSEL, 1);
  mmio_write32(common + C_GF, (uint32_t)(f >> 32));
}

/* Rings the request queue's doorbell: one write, the value the queue's index (what a port doorbell
 * shared by every queue, notify_off_multiplier 0, tells them apart by). */
static void ring(uint16_t q) {
  if (notify_io) outw(q, (uint16_t)queue_notify);
  else wr16(queue_notify, q);
}

/* Makes head available, rings the doorbell, polls the used ring; returns the used length or -1. */
static int kick_and_wait(uint16_t head) {
  ring_avail.ring[avail_idx % QSIZE] = head;
  barrier();
  ring_avail.idx = ++avail_idx;
  barrier();
  ring(0);
  uint64_t d = deadline_ms(TIMEOUT_MS);
  while (ring_used.idx == used_seen) {
    if (expired(d)) return -1;
    cpu_relax();
  }
  barrier();
  struct used_elem e = *(struct used_elem *)&ring_used.ring[used_seen % QSIZE];
  used_seen++;
  return e.id == head ? (int)e.len : -2;
}

/* One request: readable `len` bytes of req, writable `wlen` bytes of resp; returns the status byte at `tail`. */
static int request(uint32_t len, uint32_t wlen, uint32_t tail, bool use_indirect) {
  memset((void *)resp, 0xee, sizeof resp);
  struct desc *t = use_indirect ? indirect : ring_desc;
  t[0] = (struct desc){phys(req), len, F_NEXT, 1};
  t[1] = (struct desc){phys((const void *)resp), wlen, F_WRITE, 0};
  if (use_indirect) ring_desc[2] = (struct desc){phys(indirect), sizeof indirect, F_INDIRECT, 0};
  int n = kick_and_wait(use_indirect ? 2 : 0);
  if (n < 0) return n;
  if ((uint32_t)n != wlen) return -3;
  return resp[tail];
}

static void put32(uint32_t at, uint32_t v) { memcpy(req + at, &v, 4); }

/* Finds the device, negotiates and enables the request queue, each step a result; false when
 * there is no device to drive. */
static bool bring_up(int *rc) {
  uint32_t bdf = pci_find(0x1af4, 0x1057);
  if (bdf == PCI_NONE) { printf("tsvmm-guest: no virtio-iommu (1af4:1057)\n"); *rc = EXIT_USAGE; return false; }
  pci_write16(bdf, PCI_COMMAND, PCI_CMD_IO | PCI_CMD_MEM | PCI_CMD_MASTER);
  if (!find_caps(bdf)) { printf("tsvmm-guest: virtio capabilities missing\n"); *rc = EXIT_USAGE; return false; }
  result("capabilities: common, notify, ISR, device config", notify_io || notify_mult ? 0 : "notify_off_multiplier 0");
  printf("tsvmm-guest: virtio doorbell: %s\n", notify_io ? "port I/O" : "MMIO");
  wr8(common + C_STATUS, 0);
  result("reset reads back 0", rd8(common + C_STATUS) == 0 ? 0 : "status not 0");
  wr8(common + C_STATUS, S_ACK | S_DRIVER);
  uint64_t f = device_features();
  const uint64_t version1 = 1ull << 32, want = version1 | 1ull << 28 | 1ull << 29 | 0x57; /* iommu bits 0,1,2,4,6 */
  result("device features: VERSION_1, indirect, event idx, INPUT/DOMAIN_RANGE, MAP_UNMAP, PROBE, BYPASS_CONFIG",
         (f & want) == want ? 0 : "missing bits");
  driver_features(f & ~version1);
  wr8(common + C_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
  result("a legacy driver (no VERSION_1) is refused", rd8(common + C_STATUS) & S_FEATURES_OK ? "FEATURES_OK kept" : 0);
  wr8(common + C_STATUS, 0);
  wr8(common + C_STATUS, S_ACK | S_DRIVER);
  driver_features(want);
  wr8(common + C_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
  result("features accepted", rd8(common + C_STATUS) & S_FEATURES_OK ? 0 : "FEATURES_OK refused");

  /* config: page_size_mask (le64) at 0, probe_size at 32, bypass at 36 */
  result("config: 4 KiB pages, probe_size 512, bypass 1",
         mmio_read32(device) == 0xfffff000u && mmio_read32(device + 32) == 512 && rd8(device + 36) == 1 ? 0 : "config differs");

  wr16(common + C_QSEL, 0);
  uint16_t max = rd16(common + C_QSIZE);
  wr16(common + C_QSIZE, QSIZE);
  mmio_write32(common + C_QDESC, phys(ring_desc));
  mmio_write32(common + C_QDESC + 4, 0);
  mmio_write32(common + C_QDRIVER, phys((const void *)&ring_avail));
  mmio_write32(common + C_QDRIVER + 4, 0);
  mmio_write32(common + C_QDEVICE, phys((const void *)&ring_used));
  mmio_write32(common + C_QDEVICE + 4, 0);
  wr16(common + C_QENABLE, 1);
  queue_notify = notify + rd16(common + C_QNOFF) * notify_mult;
  ring_avail.used_event = 0xffff; /* no interrupts wanted: this driver polls */
  result("request queue enabled", max >= QSIZE && rd16(common + C_QENABLE) == 1 ? 0 : "not enabled");
  wr8(common + C_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
  return true;
}

int test_virtio_iommu(const struct options *o) {
  (void)o;
  int rc = EXIT_OK;
  if (!bring_up(&rc)) return rc;
  memset(req, 0, sizeof req);
  req[0] = 1; /* ATTACH domain 1, endpoint 0x08 */
  put32(4, 1), put32(8, 0x08);
  int s = request(20, 4, 0, false);
  result("ATTACH of an endpoint not behind the IOMMU: S_NOENT", s == 6 ? 0 : "wrong status");
  (void)rd8(isr); /* the first completion always interrupts (event index has no history yet); reading clears it */
  memset(req, 0, sizeof req);
  req[0] = 5; /* PROBE endpoint 0x08: properties[probe_size] then the tail */
  put32(4, 0x08);
  s = request(72, 516, 512, false);
  result("PROBE of an endpoint not behind the IOMMU: S_NOENT after probe_size bytes", s == 6 ? 0 : "wrong status");
  memset(req, 0, sizeof req);
  req[0] = 3; /* MAP in domain 7, which does not exist */
  put32(4, 7);
  s = request(36, 4, 0, true);
  result("MAP in a domain that does not exist, through an indirect table: S_NOENT", s == 6 ? 0 : "wrong status");
  memset(req, 0, sizeof req);
  req[0] = 9;
  s = request(4, 4, 0, false);
  result("an unknown request: S_UNSUPP", s == 2 ? 0 : "wrong status");
  result("used_event honoured: no further interrupt, no ISR bit", rd8(isr) == 0 ? 0 : "ISR set");

  /* A descriptor at the LAPIC (not RAM): the device needs a reset and says so. */
  ring_desc[0] = (struct desc){LAPIC_BASE, 20, F_NEXT, 1};
  ring_desc[1] = (struct desc){phys((const void *)resp), 4, F_WRITE, 0};
  ring_avail.ring[avail_idx % QSIZE] = 0;
  barrier();
  ring_avail.idx = ++avail_idx;
  ring(0);
  uint64_t d = deadline_ms(TIMEOUT_MS);
  while (!(rd8(common + C_STATUS) & S_NEEDS_RESET) && !expired(d)) cpu_relax();
  result("a buffer outside RAM: DEVICE_NEEDS_RESET", rd8(common + C_STATUS) & S_NEEDS_RESET ? 0 : "not set");
  wr8(common + C_STATUS, 0);
  wr16(common + C_QSEL, 0);
  result("reset clears it and the queue", rd8(common + C_STATUS) == 0 && rd16(common + C_QENABLE) == 0 ? 0 : "not reset");

  printf("tsvmm-guest: virtio-iommu %s\n", failures ? "FAILED" : "passed");
  return failures ? EXIT_FAIL : EXIT_OK;
}

/* test=bench-viommu count=MS [passes=N] (bench/runloop.ts): request round trips, each a MAP in a
 * domain that does not exist (S_NOENT: the device's parse and answer, no host DMA work), one at a
 * time with the used ring polled, as Linux's driver waits for each; the bench protocol of bench.c,
 * one "done" line per pass (the later ones with the VMM warm). */
int bench_viommu(uint32_t ms, uint32_t passes) {
  int rc = EXIT_OK;
  if (!bring_up(&rc)) return rc;
  /* The bring-up's checks are the test's (QEMU 7.2 keeps FEATURES_OK for a driver without
   * VERSION_1, say); the bench needs only the request queue, which the first request proves. */
  memset(req, 0, sizeof req);
  req[0] = 3; /* MAP in domain 7 */
  put32(4, 7);
  ring_desc[0] = (struct desc){phys(req), 36, F_NEXT, 1};
  ring_desc[1] = (struct desc){phys((const void *)resp), 4, F_WRITE, 0};
  if (kick_and_wait(0) != 4 || resp[0] != 6) { printf("bench viommu error the first request not answered S_NOENT\n"); return EXIT_FAIL; }
  (void)rd8(isr); /* the first completion interrupts (INTx, event index without history): reading clears it */
  printf("bench viommu armed\n");
  delay_ms(500);
  for (uint32_t p = 0; p < passes; p++) {
    uint32_t n = 0;
    uint64_t t0 = rdtsc(), end = deadline_ms(ms);
    do {
      resp[0] = 0xee;
      if (kick_and_wait(0) != 4 || resp[0] != 6) { printf("bench viommu error request %u not answered S_NOENT\n", n); return EXIT_FAIL; }
      n++;
    } while (!expired(end));
    uint64_t ticks = rdtsc() - t0;
    printf("bench viommu done n=%u ticks=%u:%u\n", n, (uint32_t)(ticks >> 32), (uint32_t)ticks);
  }
  return EXIT_OK;
}
