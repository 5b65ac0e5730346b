/* test=msix dev=VVVV:DDDD: MSI-X on QEMU's nvme (1b36:0010). Finds the capability, programs
 * and unmasks table entry 0, brings up the nvme admin queue and checks that an Identify
 * Controller completion arrives as an MSI-X interrupt (msix); then masks the entry and checks
 * the completion only sets the PBA bit until the entry is unmasked (msix-mask). */
#include "guest.h"

#define VECTOR 0x43
#define TIMEOUT_MS 5000

/* MSI-X capability: Message Control at +2 (table size - 1 in bits 10:0, function mask bit
 * 14, enable bit 15), table offset|BIR at +4, PBA offset|BIR at +8. Table entries are 16
 * bytes: address low, address high, data, vector control (bit 0 = masked). */
#define MSIX_CTRL_ENABLE 0x8000
#define MSIX_CTRL_FMASK 0x4000
#define MSIX_ENTRY_CTRL_MASKED 1

/* nvme controller registers (BAR0) */
#define NVME_CAP 0x00
#define NVME_CC 0x14
#define NVME_CSTS 0x1c
#define NVME_AQA 0x24
#define NVME_ASQ 0x28
#define NVME_ACQ 0x30
#define NVME_DOORBELLS 0x1000
#define QUEUE_ENTRIES 16
#define OPC_IDENTIFY 0x06
#define CNS_CONTROLLER 1

struct sqe { uint32_t dw[16]; };
struct cqe { uint32_t dw[4]; }; /* dw3: CID 15:0, phase 16, status 31:17 */

/* Queues and the identify buffer: 4 KiB aligned, as nvme's ASQ/ACQ/PRP1 require. */
static struct sqe asq[QUEUE_ENTRIES] __attribute__((aligned(4096)));
static volatile struct cqe acq[QUEUE_ENTRIES] __attribute__((aligned(4096)));
static uint8_t identify[4096] __attribute__((aligned(4096)));

static uint32_t regs, table, pba, doorbell_stride;
static uint16_t sq_tail, cq_head;

static uint32_t rd(uint32_t reg) { return mmio_read32(regs + reg); }
static void wr(uint32_t reg, uint32_t v) { mmio_write32(regs + reg, v); }
static void entry0_control(uint32_t v) { mmio_write32(table + 12, v); }

static int failures;
static void result(const char *name, const char *why) {
  if (why) printf("FAIL %s: %s\n", name, why), failures++;
  else printf("PASS %s\n", name);
}

static bool wait_csts(uint32_t mask, uint32_t want) {
  uint64_t d = deadline_ms(TIMEOUT_MS);
  while ((rd(NVME_CSTS) & mask) != want)
    if (expired(d)) return false;
  return true;
}

static const char *nvme_enable(void) {
  uint32_t cap_hi = rd(NVME_CAP + 4);
  doorbell_stride = 4u << (cap_hi & 0xf); /* CAP.DSTRD */
  wr(NVME_CC, 0);
  if (!wait_csts(1, 0)) return "controller did not reset (CSTS.RDY stays 1)";
  wr(NVME_AQA, (QUEUE_ENTRIES - 1) << 16 | (QUEUE_ENTRIES - 1));
  wr(NVME_ASQ, phys(asq)), wr(NVME_ASQ + 4, 0);
  wr(NVME_ACQ, phys((const void *)acq)), wr(NVME_ACQ + 4, 0);
  /* IOCQES=4 (16 B), IOSQES=6 (64 B), NVM command set, 4 KiB pages, enable. */
  wr(NVME_CC, 0x00460001);
  uint64_t d = deadline_ms(TIMEOUT_MS);
  for (;;) {
    uint32_t csts = rd(NVME_CSTS);
    if (csts & 2) return "controller fatal status (CSTS.CFS)";
    if (csts & 1) return 0;
    if (expired(d)) return "controller did not become ready (CSTS.RDY)";
  }
}

static void submit_identify(uint16_t cid) {
  struct sqe *e = &asq[sq_tail];
  memset(e, 0, sizeof *e);
  e->dw[0] = OPC_IDENTIFY | (uint32_t)cid << 16;
  e->dw[6] = phys(identify); /* PRP1, bytes 24-31 */
  e->dw[10] = CNS_CONTROLLER;
  sq_tail = (sq_tail + 1) % QUEUE_ENTRIES;
  __asm__ volatile("" : : : "memory"); /* the entry is in memory before the doorbell */
  wr(NVME_DOORBELLS, sq_tail);         /* SQ 0 tail */
}

/* The completion at cq_head, once its phase bit says it is new (phase 1 on the first pass). */
static volatile struct cqe *wait_cqe(void) {
  volatile struct cqe *c = &acq[cq_head];
  uint64_t d = deadline_ms(TIMEOUT_MS);
  while (!(c->dw[3] & 0x10000))
    if (expired(d)) return 0;
  return c;
}

static const char *check_cqe(volatile struct cqe *c, uint16_t cid) {
  if ((c->dw[3] & 0xffff) != cid) return "completion for a different command id";
  if (c->dw[3] >> 17) return "identify failed (nonzero completion status)";
  cq_head++;
  wr(NVME_DOORBELLS + doorbell_stride, cq_head); /* CQ 0 head */
  return 0;
}

static bool wait_irq(uint32_t before) {
  uint64_t d = deadline_ms(TIMEOUT_MS);
  while (irq_count[VECTOR] == before)
    if (expired(d)) return false;
  return true;
}

static const char *sub_msix(void) {
  const char *why = nvme_enable();
  if (why) return why;
  uint32_t before = irq_count[VECTOR];
  submit_identify(1);
  volatile struct cqe *c = wait_cqe();
  if (!c) return "no completion for identify controller";
  if (!wait_irq(before)) return "completion posted but no MSI-X interrupt on vector 0x43";
  if ((why = check_cqe(c, 1))) return why;
  uint16_t vid = (uint16_t)(identify[0] | identify[1] << 8);
  char model[41];
  memcpy(model, identify + 24, 40);
  int n = 40;
  while (n && (model[n - 1] == ' ' || !model[n - 1])) n--;
  model[n] = 0;
  printf("msix nvme vid=0x%04x model=\"%s\"\n", vid, model);
  if (vid != 0x1b36) return "identify data: VID is not 0x1b36";
  printf("msix irq count=%u ok\n", irq_count[VECTOR] - before);
  return 0;
}

static const char *sub_mask(void) {
  entry0_control(MSIX_ENTRY_CTRL_MASKED);
  uint32_t before = irq_count[VECTOR];
  memset(identify, 0, sizeof identify);
  submit_identify(2);
  volatile struct cqe *c = wait_cqe();
  if (!c) return "no completion for the second identify";
  /* The device sets the pending bit when it would have sent the message; give it a moment
   * (and give a wrongly delivered interrupt the same moment to show up). */
  uint64_t d = deadline_ms(1000);
  while (!(mmio_read32(pba) & 1) && !expired(d)) cpu_relax();
  delay_ms(100);
  uint32_t pending = mmio_read32(pba) & 1;
  printf("msix masked: pba bit0=%u interrupts=%u\n", pending, irq_count[VECTOR] - before);
  if (irq_count[VECTOR] != before) return "an interrupt arrived while the entry was masked";
  if (!pending) return "PBA bit 0 not set while masked";
  entry0_control(0);
  if (!wait_irq(before)) return "the pending interrupt was not delivered on unmask";
  if (mmio_read32(pba) & 1) return "PBA bit 0 still set after delivery";
  const char *why = check_cqe(c, 2);
  if (why) return why;
  printf("msix unmasked: pending interrupt delivered\n");
  return 0;
}

int test_msix(const struct options *o) {
  uint32_t bdf = pci_find(o->dev_vendor, o->dev_device);
  if (bdf == PCI_NONE) {
    printf("tsvmm-guest: no device %04x:%04x\n", o->dev_vendor, o->dev_device);
    return EXIT_USAGE;
  }
  uint8_t cap = pci_find_cap(bdf, PCI_CAP_MSIX);
  if (!cap) {
    printf("tsvmm-guest: %04x:%04x has no MSI-X capability\n", o->dev_vendor, o->dev_device);
    return EXIT_USAGE;
  }
  uint16_t ctrl = pci_read16(bdf, cap + 2);
  uint32_t tbl = pci_read32(bdf, cap + 4), pb = pci_read32(bdf, cap + 8);
  int size = (ctrl & 0x7ff) + 1;
  pci_write16(bdf, PCI_COMMAND, pci_read16(bdf, PCI_COMMAND) | PCI_CMD_MEM | PCI_CMD_MASTER);
  printf("msix table bar=%u off=0x%x size=%d pba bar=%u off=0x%x\n", tbl & 7, tbl & ~7u, size, pb & 7, pb & ~7u);
  const char *why = 0;
  uint32_t tbar = pci_bar_mem(bdf, tbl & 7, &why), pbar = tbar;
  if (tbar && (pb & 7) != (tbl & 7)) pbar = pci_bar_mem(bdf, pb & 7, &why);
  regs = pci_bar_mem(bdf, 0, &why);
  if (!tbar || !pbar || !regs) {
    printf("tsvmm-guest: a BAR %s\n", why);
    return EXIT_USAGE;
  }
  if (o->dev_vendor != 0x1b36 || o->dev_device != 0x0010) {
    printf("tsvmm-guest: only nvme (1b36:0010) can be made to raise an interrupt here\n");
    return EXIT_USAGE;
  }
  table = tbar + (tbl & ~7u);
  pba = pbar + (pb & ~7u);

  /* Entry 0 first, masked; then enable MSI-X under the function mask, lift the function mask,
   * unmask the entry. QEMU's nvme attaches vector 0 to the admin CQ only if MSI-X is enabled
   * when the controller is enabled, so this comes before nvme_enable(). */
  irq_set_handler(VECTOR, 0); /* nothing to acknowledge: counting is the dispatcher's */
  lapic_enable();
  mmio_write32(table + 0, MSI_ADDR_BASE | (uint32_t)lapic_id() << 12);
  mmio_write32(table + 4, 0);
  mmio_write32(table + 8, VECTOR);
  entry0_control(MSIX_ENTRY_CTRL_MASKED);
  pci_write16(bdf, cap + 2, ctrl | MSIX_CTRL_ENABLE | MSIX_CTRL_FMASK);
  pci_write16(bdf, cap + 2, (ctrl | MSIX_CTRL_ENABLE) & ~MSIX_CTRL_FMASK);
  entry0_control(0);
  irq_enable();

  const char *r = sub_msix();
  result("msix", r);
  if (!r) result("msix-mask", sub_mask());
  else result("msix-mask", "skipped: msix failed");

  /* Leave the device quiet: controller reset (stops its DMA), MSI-X off. */
  irq_disable();
  wr(NVME_CC, 0);
  wait_csts(1, 0);
  pci_write16(bdf, cap + 2, ctrl & ~MSIX_CTRL_ENABLE);
  return failures ? EXIT_FAIL : EXIT_OK;
}
