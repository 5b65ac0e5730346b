/* test=edu: drive QEMU's edu device (1234:11e8; QEMU docs/specs/edu.txt): id, liveness,
 * factorial, DMA both ways (dma=1), MSI (msi=N) and INTx through the IOAPIC (intx=N). */
#include "guest.h"

#define EDU_ID 0x00
#define EDU_LIVENESS 0x04
#define EDU_FACTORIAL 0x08
#define EDU_STATUS 0x20
#define EDU_STATUS_COMPUTING 0x01
#define EDU_IRQ_STATUS 0x24
#define EDU_IRQ_RAISE 0x60
#define EDU_IRQ_ACK 0x64
#define EDU_DMA_SRC 0x80
#define EDU_DMA_DST 0x88
#define EDU_DMA_COUNT 0x90
#define EDU_DMA_CMD 0x98
#define EDU_DMA_RUN 0x01
#define EDU_DMA_TO_RAM 0x02
#define EDU_BUFFER 0x40000 /* device-internal address of its 4 KiB buffer */
/* Well inside the buffer: QEMU 7.2 aborts on a DMA ending exactly at 0x41000 or of count 0. */
#define DMA_BYTES 256

#define VECTOR_MSI 0x41
#define VECTOR_INTX 0x42
#define TIMEOUT_MS 5000

static uint32_t bar0;
static volatile uint32_t edu_irqs, edu_last_status;
/* DMA buffers: static (so their physical address is fixed and < 256 MiB, inside edu's
 * default 28-bit DMA mask) and page-aligned (one IOMMU page each). */
static uint8_t dma_src[4096] __attribute__((aligned(4096)));
static uint8_t dma_dst[4096] __attribute__((aligned(4096)));

/* Below 0x80 edu only accepts 4-byte accesses; the 64-bit DMA registers take a 4-byte write
 * as the whole (zero-extended) value, which is all a 32-bit guest needs. */
static uint32_t rd(uint32_t reg) { return mmio_read32(bar0 + reg); }
static void wr(uint32_t reg, uint32_t v) { mmio_write32(bar0 + reg, v); }

/* Interrupt handler (MSI and INTx): acknowledge what the device raised, so a level-triggered
 * INTx line drops before the dispatcher's EOI. Counts only interrupts edu really raised. */
static void edu_irq(uint8_t vector) {
  (void)vector;
  uint32_t s = rd(EDU_IRQ_STATUS);
  if (!s) return;
  wr(EDU_IRQ_ACK, s);
  edu_last_status = s;
  edu_irqs++;
}

static int failures;
static void result(const char *name, const char *why) {
  if (why) printf("FAIL %s: %s\n", name, why), failures++;
  else printf("PASS %s\n", name);
}

static const char *sub_id(void) {
  uint32_t id = rd(EDU_ID);
  printf("edu id=0x%08x (version %u.%u)\n", id, id >> 24, (id >> 16) & 0xff);
  /* The spec: 0xRRrr00ed, RR.rr the version; the low 16 bits identify edu. */
  return (id & 0xffff) == 0x00ed ? 0 : "id low 16 bits are not 0x00ed";
}

static const char *sub_liveness(void) {
  static const uint32_t values[] = {0x12345678, 0xa5a5a5a5, 0};
  for (int i = 0; i < 3; i++) {
    wr(EDU_LIVENESS, values[i]);
    if (rd(EDU_LIVENESS) != ~values[i]) return "liveness register did not read back the inverted value";
  }
  return 0;
}

static const char *sub_factorial(void) {
  wr(EDU_FACTORIAL, 10);
  uint64_t d = deadline_ms(TIMEOUT_MS);
  while (rd(EDU_STATUS) & EDU_STATUS_COMPUTING)
    if (expired(d)) return "factorial still computing after 5 s";
  uint32_t v = rd(EDU_FACTORIAL);
  printf("edu factorial(10)=%u\n", v);
  return v == 3628800 ? 0 : "factorial(10) != 3628800";
}

static bool dma_wait(void) {
  uint64_t d = deadline_ms(TIMEOUT_MS);
  while (rd(EDU_DMA_CMD) & EDU_DMA_RUN)
    if (expired(d)) return false;
  return true;
}

static const char *dma(uint32_t src, uint32_t dst, uint32_t cmd) {
  if (!dma_wait()) return "a DMA is still running"; /* registers are ignored while one runs */
  wr(EDU_DMA_SRC, src);
  wr(EDU_DMA_DST, dst);
  wr(EDU_DMA_COUNT, DMA_BYTES);
  wr(EDU_DMA_CMD, cmd | EDU_DMA_RUN);
  return dma_wait() ? 0 : "DMA did not complete within 5 s";
}

static const char *sub_dma(void) {
  /* A fresh pattern each run: a device reused across VMs keeps its buffer, and a stale
   * copy of an old pattern must not pass for a working DMA. */
  uint32_t seed = (uint32_t)rdtsc() | 1;
  for (int i = 0; i < DMA_BYTES; i++) seed = seed * 1103515245 + 12345, dma_src[i] = (uint8_t)(seed >> 16);
  memset(dma_dst, 0, sizeof dma_dst);
  printf("edu dma iova=0x%x 0x%x\n", phys(dma_src), phys(dma_dst));
  const char *why = dma(phys(dma_src), EDU_BUFFER, 0);
  if (!why) why = dma(EDU_BUFFER, phys(dma_dst), EDU_DMA_TO_RAM);
  if (why) return why;
  __asm__ volatile("" : : : "memory"); /* the device wrote dma_dst behind the compiler's back */
  if (memcmp(dma_src, dma_dst, DMA_BYTES)) return "data read back differs from data written";
  for (int i = DMA_BYTES; i < 4096; i++)
    if (dma_dst[i]) return "DMA wrote past the requested count";
  printf("edu dma ok\n");
  return 0;
}

/* Raise n interrupts one at a time and wait for each. */
static const char *raise_and_wait(int n) {
  for (int i = 0; i < n; i++) {
    uint32_t before = edu_irqs, bit = 1u << (i % 8);
    wr(EDU_IRQ_RAISE, bit);
    uint64_t d = deadline_ms(TIMEOUT_MS);
    while (edu_irqs == before) {
      if (expired(d)) {
        printf("edu: interrupt %d of %d did not arrive (irq status 0x%x)\n", i + 1, n, rd(EDU_IRQ_STATUS));
        return "no interrupt within 5 s";
      }
      cpu_relax();
    }
    if (edu_last_status != bit) return "interrupt status is not the raised bit";
  }
  return 0;
}

static const char *sub_msi(uint32_t bdf, int n) {
  uint8_t cap = pci_find_cap(bdf, PCI_CAP_MSI);
  if (!cap) return "no MSI capability";
  uint16_t ctrl = pci_read16(bdf, cap + 2);
  bool is64 = ctrl & 0x80;
  pci_write32(bdf, cap + 4, MSI_ADDR_BASE | (uint32_t)lapic_id() << 12);
  if (is64) pci_write32(bdf, cap + 8, 0);
  pci_write16(bdf, cap + (is64 ? 12 : 8), VECTOR_MSI); /* fixed delivery, edge */
  ctrl = (ctrl & ~0x70) | 0x01;                          /* one vector (MME 0), enable */
  pci_write16(bdf, cap + 2, ctrl);
  printf("edu msi cap=0x%x %s-bit vector=0x%x\n", cap, is64 ? "64" : "32", VECTOR_MSI);
  const char *why = raise_and_wait(n);
  pci_write16(bdf, cap + 2, ctrl & ~0x01);
  if (!why) printf("edu msi count=%d ok\n", n);
  return why;
}

static const char *sub_intx(uint32_t bdf, int n) {
  /* tsvmm writes the IOAPIC input (GSI) into Interrupt Line. Under QEMU q35 SeaBIOS writes
   * the PIC IRQ its PIRQ routing chose; QEMU wires ISA IRQs to the same IOAPIC pins, so
   * that works there too. */
  uint8_t line = pci_read8(bdf, PCI_INTERRUPT_LINE), pin = pci_read8(bdf, 0x3d);
  printf("edu intx pin=%c line=%u vector=0x%x\n", pin >= 1 && pin <= 4 ? 'A' + pin - 1 : '?', line, VECTOR_INTX);
  if (!pin) return "device has no INTx pin";
  if (line == 0 || line > 23) return "interrupt line is not an IOAPIC input (1..23)";
  pci_write16(bdf, PCI_COMMAND, pci_read16(bdf, PCI_COMMAND) & ~PCI_CMD_INTX_DISABLE);
  ioapic_route(line, VECTOR_INTX, IOAPIC_LEVEL, lapic_id());
  const char *why = raise_and_wait(n);
  ioapic_mask(line);
  if (!why) printf("edu intx count=%d ok\n", n);
  return why;
}

int test_edu(const struct options *o) {
  uint32_t bdf = pci_find(0x1234, 0x11e8);
  if (bdf == PCI_NONE) {
    printf("tsvmm-guest: no edu device (1234:11e8)\n");
    return EXIT_USAGE;
  }
  const char *why = 0;
  bar0 = pci_bar_mem(bdf, 0, &why);
  if (!bar0) {
    printf("tsvmm-guest: edu BAR0 %s\n", why);
    return EXIT_USAGE;
  }
  pci_write16(bdf, PCI_COMMAND, pci_read16(bdf, PCI_COMMAND) | PCI_CMD_MEM | PCI_CMD_MASTER);
  printf("edu bar0=0x%08x at %02x:%02x.%x\n", bar0, bdf >> 8, (bdf >> 3) & 0x1f, bdf & 7);

  result("edu-id", sub_id());
  result("edu-liveness", sub_liveness());
  result("edu-factorial", sub_factorial());
  if (o->dma) result("edu-dma", sub_dma());
  if (o->msi > 0 || o->intx > 0) {
    irq_set_handler(VECTOR_MSI, edu_irq);
    irq_set_handler(VECTOR_INTX, edu_irq);
    lapic_enable();
    irq_enable();
  }
  if (o->msi > 0) result("edu-msi", sub_msi(bdf, o->msi));
  if (o->intx > 0) result("edu-intx", sub_intx(bdf, o->intx));
  irq_disable();
  return failures ? EXIT_FAIL : EXIT_OK;
}
