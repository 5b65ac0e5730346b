/* Benchmark workloads (bench/, `npm run bench`): the same guest runs under tsvmm, QEMU and the
 * null VMM, and a runner outside reads the VMM's counters around each measured loop.
 *
 *   test=bench       pio, bar, then msi (below), one after the other
 *   test=bench-pio   trapped port-I/O round trips: inb from COM1's scratch register (0x3ff),
 *                    which every VMM emulates in userspace
 *   test=bench-bar   32-bit reads of edu's BAR0 (register 0x00): with the BAR mmap'd into the
 *                    guest, none of them should leave the guest
 *   test=bench-msi   edu raise (0x60) -> MSI -> handler (read 0x24, ack 0x64) -> next raise
 *   test=bench-viommu  virtio-iommu request round trips (test-virtio.c; not part of test=bench)
 *   count=MS         length of each measured loop in milliseconds (default 1000)
 *
 * Protocol on the serial port (one line each, the runner keys on them):
 *   "bench <phase> armed"  then a quiet settle (no serial output, no exits): the runner takes
 *                          its "before" snapshot
 *   the loop, timed with rdtsc (the runner converts ticks with the host's TSC rate; ratios
 *                          between VMMs do not depend on it)
 *   msi only: another quiet settle, in which the runner takes its "after" snapshot
 *   "bench <phase> done n=<iterations> ticks=<hi>:<lo>"   (ticks = hi * 2^32 + lo)
 *   "bench end" once every phase ran; "bench <phase> error <why>" on failure (exit 1). */
#include "guest.h"

#define SCRATCH_PORT 0x3ff /* COM1 SCR */
#define EDU_IRQ_STATUS 0x24
#define EDU_IRQ_RAISE 0x60
#define EDU_IRQ_ACK 0x64
#define VECTOR_MSI 0x51
#define SETTLE_BEFORE_MS 500
#define SETTLE_AFTER_MS 1500
#define IRQ_TIMEOUT_MS 2000

static uint32_t edu_bdf = PCI_NONE, edu_bar0;
static volatile uint32_t msi_seen;

bool bench_mode(const char *t) {
  return streq(t, "bench") || streq(t, "bench-pio") || streq(t, "bench-bar") || streq(t, "bench-msi") || streq(t, "bench-viommu");
}

static void done(const char *phase, uint32_t n, uint64_t t0) {
  uint64_t ticks = rdtsc() - t0;
  printf("bench %s done n=%u ticks=%u:%u\n", phase, n, (uint32_t)(ticks >> 32), (uint32_t)ticks);
}

static int error(const char *phase, const char *why) {
  printf("bench %s error %s\n", phase, why);
  return EXIT_FAIL;
}

static int bench_pio(uint32_t ms) {
  printf("bench pio armed\n");
  delay_ms(SETTLE_BEFORE_MS);
  uint32_t n = 0;
  uint64_t t0 = rdtsc(), end = deadline_ms(ms);
  do {
    for (int i = 0; i < 16; i++) (void)inb(SCRATCH_PORT);
    n += 16;
  } while (!expired(end));
  done("pio", n, t0);
  return EXIT_OK;
}

static bool edu_setup(const char *phase) {
  if (edu_bdf != PCI_NONE) return true;
  uint32_t bdf = pci_find(0x1234, 0x11e8);
  if (bdf == PCI_NONE) return error(phase, "no edu device (1234:11e8)"), false;
  const char *why = "?";
  edu_bar0 = pci_bar_mem(bdf, 0, &why);
  if (!edu_bar0) return error(phase, why), false;
  pci_write16(bdf, PCI_COMMAND, pci_read16(bdf, PCI_COMMAND) | PCI_CMD_MEM | PCI_CMD_MASTER);
  edu_bdf = bdf;
  printf("bench edu bar0=0x%08x\n", edu_bar0);
  return true;
}

static int bench_bar(uint32_t ms) {
  if (!edu_setup("bar")) return EXIT_FAIL;
  if ((mmio_read32(edu_bar0) & 0xffff) != 0x00ed) return error("bar", "edu id register does not read 0x..00ed");
  printf("bench bar armed\n");
  delay_ms(SETTLE_BEFORE_MS);
  uint32_t n = 0;
  uint64_t t0 = rdtsc(), end = deadline_ms(ms);
  do {
    for (int i = 0; i < 64; i++) (void)mmio_read32(edu_bar0);
    n += 64;
  } while (!expired(end));
  done("bar", n, t0);
  return EXIT_OK;
}

static void msi_handler(uint8_t vector) {
  (void)vector;
  uint32_t s = mmio_read32(edu_bar0 + EDU_IRQ_STATUS);
  if (!s) return;
  mmio_write32(edu_bar0 + EDU_IRQ_ACK, s);
  msi_seen++;
}

static int bench_msi(uint32_t ms) {
  if (!edu_setup("msi")) return EXIT_FAIL;
  uint8_t cap = pci_find_cap(edu_bdf, PCI_CAP_MSI);
  if (!cap) return error("msi", "edu has no MSI capability");
  irq_set_handler(VECTOR_MSI, msi_handler);
  lapic_enable();
  uint16_t ctrl = pci_read16(edu_bdf, cap + 2);
  bool is64 = ctrl & 0x80;
  pci_write32(edu_bdf, cap + 4, MSI_ADDR_BASE | (uint32_t)lapic_id() << 12);
  if (is64) pci_write32(edu_bdf, cap + 8, 0);
  pci_write16(edu_bdf, cap + (is64 ? 12 : 8), VECTOR_MSI);
  pci_write16(edu_bdf, cap + 2, (ctrl & ~0x70) | 0x01);
  irq_enable();
  printf("bench msi armed\n");
  delay_ms(SETTLE_BEFORE_MS);
  uint32_t n = 0;
  const char *why = 0;
  uint64_t t0 = rdtsc(), end = deadline_ms(ms);
  do {
    uint32_t before = msi_seen;
    mmio_write32(edu_bar0 + EDU_IRQ_RAISE, 1);
    uint64_t d = deadline_ms(IRQ_TIMEOUT_MS);
    while (msi_seen == before && !expired(d)) cpu_relax();
    if (msi_seen == before) {
      why = "an interrupt did not arrive within 2 s";
      break;
    }
    n++;
  } while (!expired(end));
  uint64_t ticks = rdtsc() - t0;
  delay_ms(SETTLE_AFTER_MS);
  irq_disable();
  pci_write16(edu_bdf, cap + 2, ctrl & ~0x01);
  if (why) return error("msi", why);
  printf("bench msi done n=%u ticks=%u:%u\n", n, (uint32_t)(ticks >> 32), (uint32_t)ticks);
  return EXIT_OK;
}

int test_bench(const struct options *o) {
  uint32_t ms = o->count > 0 ? (uint32_t)o->count : 1000;
  bool all = streq(o->test, "bench");
  int rc = EXIT_OK;
  if (rc == EXIT_OK && (all || streq(o->test, "bench-pio"))) rc = bench_pio(ms);
  if (rc == EXIT_OK && (all || streq(o->test, "bench-bar"))) rc = bench_bar(ms);
  if (rc == EXIT_OK && (all || streq(o->test, "bench-msi"))) rc = bench_msi(ms);
  if (rc == EXIT_OK && streq(o->test, "bench-viommu")) rc = bench_viommu(ms, o->passes > 0 ? (uint32_t)o->passes : 1);
  if (rc == EXIT_OK) printf("bench end\n");
  return rc;
}
