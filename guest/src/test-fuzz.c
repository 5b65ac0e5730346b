/* A hostile guest, with edu (1234:11e8) and nvme (1b36:0010) assigned.
 *
 * test=hostile: known hostile chains, each followed by a check that the VMM and the device
 * still agree: nvme's 64-bit BAR0 placed where KVM cannot map it, memory decode on (the command
 * must reach the device: read back), moved back and used; edu's BAR0 over the LAPIC and the
 * IOAPIC (they must keep answering); edu's MSI data register set by a dword write that runs past
 * the end of the capability (the vector must be routed with that data); then the edu test.
 *
 * test=fuzz seed=S count=N: N seeded random accesses — conf1 reads/writes of every width at
 * every offset of the header and the MSI/MSI-X capabilities, BAR moves (over RAM, the LAPIC,
 * IOAPIC, each other, sizing, above 4 GiB), command bits, MSI-X table/PBA traffic, BAR reads
 * wherever the BARs are — then everything is put back and both devices must still work.
 * nvme's PMCSR is in the mix (D3hot and back). Left out on purpose: the PCIe capability (an FLR
 * started there is not followed yet) and edu's DMA registers (QEMU 7.2 aborts on some values). */
#include "guest.h"

#define EDU_ID 0x00
#define EDU_LIVENESS 0x04
#define NVME_VS 0x08
#define NVME_MSIX_TABLE 0x2000
#define NVME_PBA 0x3000
#define VECTOR_MSI 0x43

static uint32_t rng;
static uint32_t rnd(void) {
  rng ^= rng << 13, rng ^= rng >> 17, rng ^= rng << 5;
  return rng;
}

struct dev {
  const char *name;
  uint32_t bdf, bar0, size;
  bool bar64;
  uint8_t msi, msix, pm;
};
#define PCI_CAP_PM 0x01
#define PM_CTRL 4

static bool find(struct dev *d, const char *name, uint16_t vendor, uint16_t device, uint32_t size) {
  d->name = name;
  d->bdf = pci_find(vendor, device);
  if (d->bdf == PCI_NONE) {
    printf("tsvmm-guest: no %s (%04x:%04x)\n", name, vendor, device);
    return false;
  }
  const char *why = 0;
  d->bar0 = pci_bar_mem(d->bdf, 0, &why);
  if (!d->bar0) {
    printf("tsvmm-guest: %s BAR0 %s\n", name, why);
    return false;
  }
  d->bar64 = (pci_read32(d->bdf, 0x10) & 6) == 4;
  d->size = size;
  d->msi = pci_find_cap(d->bdf, PCI_CAP_MSI);
  d->msix = pci_find_cap(d->bdf, PCI_CAP_MSIX);
  d->pm = pci_find_cap(d->bdf, PCI_CAP_PM);
  return true;
}

static void put_back(const struct dev *d) {
  if (d->pm && (pci_read16(d->bdf, d->pm + PM_CTRL) & 3)) {
    pci_write16(d->bdf, d->pm + PM_CTRL, 0); /* D0 */
    delay_ms(10);                            /* D3hot -> D0 recovery time (PCI PM 1.2: 10 ms) */
  }
  pci_write16(d->bdf, PCI_COMMAND, 0);
  pci_write32(d->bdf, 0x10, d->bar0);
  if (d->bar64) pci_write32(d->bdf, 0x14, 0);
  if (d->msi) pci_write16(d->bdf, d->msi + 2, 0);
  if (d->msix) pci_write16(d->bdf, d->msix + 2, 0);
  pci_write16(d->bdf, PCI_COMMAND, PCI_CMD_MEM | PCI_CMD_MASTER);
}

static int failures;
static void result(const char *name, const char *why) {
  if (why) printf("FAIL %s: %s\n", name, why), failures++;
  else printf("PASS %s\n", name);
}

/* nvme's registers answer: VS is 1.x (QEMU 7.2: 1.4), CAP is not all-ones. */
static const char *nvme_alive(const struct dev *n) {
  uint32_t vs = mmio_read32(n->bar0 + NVME_VS), cap = mmio_read32(n->bar0);
  printf("%s vs=0x%08x cap=0x%08x\n", n->name, vs, cap);
  return (vs >> 16) == 1 && cap != 0xffffffffu ? 0 : "nvme registers do not read back";
}

static const char *sub_bar_high(const struct dev *n) {
  for (int i = 0; i < 20; i++) {
    pci_write16(n->bdf, PCI_COMMAND, 0);
    pci_write32(n->bdf, 0x14, 0x00080000); /* 2^51: beyond any x86 physical address width */
    pci_write16(n->bdf, PCI_COMMAND, PCI_CMD_MEM | PCI_CMD_MASTER);
    uint16_t cmd = pci_read16(n->bdf, PCI_COMMAND);
    if ((cmd & (PCI_CMD_MEM | PCI_CMD_MASTER)) != (PCI_CMD_MEM | PCI_CMD_MASTER)) {
      printf("%s command reads 0x%04x after writing MEM|MASTER\n", n->name, cmd);
      return "the command write did not reach the device";
    }
  }
  pci_write32(n->bdf, 0x14, 0); /* back, with decode still on */
  (void)mmio_read32(n->bar0 + NVME_MSIX_TABLE + 0x800); /* a trapped piece past the table */
  return nvme_alive(n);
}

/* D3hot through PMCSR: the BAR must stop decoding (a memslot on the refused mmap would kill
 * the VMM at the next access), and come back in D0. */
static const char *sub_d3(const struct dev *n) {
  if (!n->pm) return "nvme has no PM capability";
  pci_write16(n->bdf, n->pm + PM_CTRL, 3);
  uint16_t pmcsr = pci_read16(n->bdf, n->pm + PM_CTRL);
  uint32_t vs = mmio_read32(n->bar0 + NVME_VS);
  printf("%s d3: pmcsr=0x%04x vs=0x%08x\n", n->name, pmcsr, vs);
  if ((pmcsr & 3) != 3) return "the device did not enter D3hot";
  if (vs != 0xffffffffu) return "BAR0 still answers in D3hot";
  put_back(n);
  return nvme_alive(n);
}

static const char *sub_shadow(const struct dev *e) {
  uint32_t lapic_ver = mmio_read32(LAPIC_BASE + 0x30);
  mmio_write32(IOAPIC_BASE, 1);
  uint32_t ioapic_ver = mmio_read32(IOAPIC_BASE + 0x10);
  static const uint32_t over[] = {LAPIC_BASE, IOAPIC_BASE};
  for (int i = 0; i < 2; i++) {
    pci_write16(e->bdf, PCI_COMMAND, 0);
    pci_write32(e->bdf, 0x10, over[i]);
    pci_write16(e->bdf, PCI_COMMAND, PCI_CMD_MEM | PCI_CMD_MASTER);
    uint32_t l = mmio_read32(LAPIC_BASE + 0x30);
    mmio_write32(IOAPIC_BASE, 1);
    uint32_t io = mmio_read32(IOAPIC_BASE + 0x10);
    printf("%s bar0=0x%08x: lapic ver 0x%x (was 0x%x) ioapic ver 0x%x (was 0x%x)\n", e->name, over[i], l, lapic_ver, io, ioapic_ver);
    if (l != lapic_ver || io != ioapic_ver) return "a BAR shadowed the LAPIC or IOAPIC";
  }
  put_back(e);
  uint32_t id = mmio_read32(e->bar0 + EDU_ID);
  return (id & 0xffff) == 0x00ed ? 0 : "edu does not answer at its BAR after moving back";
}

static volatile uint32_t msi_seen;
static void on_msi(uint8_t vector) {
  (void)vector;
  msi_seen++;
}

/* edu's 64-bit MSI capability is 14 bytes: the data register is its last word, and a dword
 * write there runs 2 bytes past the end. The vector must still be routed with that data. */
static const char *sub_msi_dword(const struct dev *e) {
  if (!e->msi) return "edu has no MSI capability";
  uint8_t cap = e->msi;
  uint16_t ctrl = pci_read16(e->bdf, cap + 2);
  if (!(ctrl & 0x80)) return "edu's MSI capability is not 64-bit";
  irq_set_handler(VECTOR_MSI, on_msi);
  lapic_enable();
  irq_enable();
  pci_write32(e->bdf, cap + 4, MSI_ADDR_BASE | (uint32_t)lapic_id() << 12);
  pci_write32(e->bdf, cap + 8, 0);
  pci_write32(e->bdf, cap + 12, VECTOR_MSI); /* dword: data + 2 bytes past the capability */
  pci_write16(e->bdf, cap + 2, (ctrl & ~0x70) | 0x01);
  const char *why = 0;
  for (int i = 0; i < 3 && !why; i++) {
    uint32_t before = msi_seen;
    mmio_write32(e->bar0 + 0x60, 1); /* raise */
    uint64_t d = deadline_ms(5000);
    while (msi_seen == before && !expired(d)) cpu_relax();
    if (msi_seen == before) why = "no interrupt on the vector written by the dword";
    mmio_write32(e->bar0 + 0x64, 1); /* ack */
  }
  irq_disable();
  pci_write16(e->bdf, cap + 2, ctrl & ~0x01);
  return why;
}

static bool find_both(struct dev *e, struct dev *n) {
  return find(e, "edu", 0x1234, 0x11e8, 1u << 20) && find(n, "nvme", 0x1b36, 0x0010, 0x4000);
}

/* The edu test (id, liveness, factorial, DMA, MSI) and nvme's registers, after the abuse. */
static int both_work(const struct options *o, const struct dev *e, const struct dev *n) {
  put_back(e);
  put_back(n);
  result("nvme-alive", nvme_alive(n));
  struct options eo = *o;
  eo.dma = 1, eo.msi = 3;
  int rc = test_edu(&eo);
  return failures || rc ? EXIT_FAIL : EXIT_OK;
}

int test_hostile(const struct options *o) {
  struct dev e, n;
  if (!find_both(&e, &n)) return EXIT_USAGE;
  pci_write16(n.bdf, PCI_COMMAND, PCI_CMD_MEM | PCI_CMD_MASTER);
  pci_write16(e.bdf, PCI_COMMAND, PCI_CMD_MEM | PCI_CMD_MASTER);
  result("hostile-bar-high", sub_bar_high(&n));
  result("hostile-d3", sub_d3(&n));
  result("hostile-shadow", sub_shadow(&e));
  result("hostile-msi-dword", sub_msi_dword(&e));
  return both_work(o, &e, &n);
}

/* ---- fuzz ---- */
static uint32_t bar_value(const struct dev *d) {
  switch (rnd() % 9) {
  case 0: return d->bar0;
  case 1: return 0;
  case 2: return 0xffffffffu;
  case 3: return LAPIC_BASE;
  case 4: return IOAPIC_BASE;
  case 5: return 0x00100000u + (rnd() % 0x3f00) * 0x1000; /* over guest RAM */
  case 6: return 0xc0000000u + (rnd() % 0x3ec00) * 0x1000;
  case 7: return rnd() & ~0xfffu;
  default: return 0xc0000000u; /* over the other device's BAR, probably */
  }
}

static uint8_t conf_reg(const struct dev *d) {
  switch (rnd() % 7) {
  case 0: return PCI_COMMAND + (uint8_t)(rnd() % 4);
  case 1: return 0x10 + (uint8_t)(rnd() % 24);
  case 2: return (uint8_t)(rnd() % 0x40);
  case 3: if (d->msi) return d->msi + (uint8_t)(rnd() % 24); return 0x3c;
  case 4: if (d->msix) return d->msix + (uint8_t)(rnd() % 16); return 0x30;
  case 5: if (d->pm) return d->pm + PM_CTRL; return 0x30 + (uint8_t)(rnd() % 16);
  default: return 0x30 + (uint8_t)(rnd() % 16);
  }
}

static uint32_t conf_value(const struct dev *d, uint8_t reg) {
  if (reg >= 0x10 && reg < 0x28) return (reg & 3) ? rnd() : bar_value(d);
  if (reg >= 4 && reg < 8) return rnd() & (0x0407 | 0xf9000000u); /* decode bits; status W1C */
  if (d->pm && reg == d->pm + PM_CTRL) return rnd() & 3;              /* power state (PME bits stay) */
  return rnd();
}

/* Widths the PCI spec allows: naturally aligned within the dword (conf1 ports). */
static void conf_write(uint32_t bdf, uint8_t reg, uint32_t v) {
  switch (rnd() % 3) {
  case 0: pci_write8(bdf, reg, (uint8_t)v); break;
  case 1: pci_write16(bdf, reg & ~1, (uint16_t)v); break;
  default: pci_write32(bdf, reg & ~3, v); break;
  }
}

static uint32_t sink;
static void conf_read(uint32_t bdf, uint8_t reg) {
  switch (rnd() % 3) {
  case 0: sink += pci_read8(bdf, reg); break;
  case 1: sink += pci_read16(bdf, reg & ~1); break;
  default: sink += pci_read32(bdf, reg & ~3); break;
  }
}

/* The address BAR0 decodes at now, if the guest can reach it (below 4 GiB). */
static uint32_t bar_now(const struct dev *d) {
  uint32_t lo = pci_read32(d->bdf, 0x10) & ~0xfu;
  if (d->bar64 && pci_read32(d->bdf, 0x14)) return 0;
  return lo;
}

static void bar_read(const struct dev *d) {
  uint32_t at = bar_now(d);
  if (!at || at < 0x100000) return;
  uint32_t off = rnd() % d->size;
  volatile uint8_t *p = (volatile uint8_t *)(uintptr_t)(at + off);
  switch (rnd() % 3) {
  case 0: sink += *p; break;
  case 1: sink += *(volatile uint16_t *)(uintptr_t)((at + off) & ~1u); break;
  default: sink += *(volatile uint32_t *)(uintptr_t)((at + off) & ~3u); break;
  }
}

/* Writes only where they cannot hurt the guest or abort QEMU: nvme's MSI-X table/PBA (emulated
 * by the VMM) and edu's liveness register, and only while the BAR is where it belongs. */
static void bar_write(const struct dev *e, const struct dev *n) {
  if (rnd() & 1) {
    if (bar_now(n) != n->bar0) return;
    uint32_t off = (rnd() & 1 ? NVME_MSIX_TABLE + rnd() % (65 * 16) : NVME_PBA + rnd() % 16) & ~3u;
    mmio_write32(n->bar0 + off, rnd() & 1 ? rnd() : (rnd() & 1));
  } else {
    if (bar_now(e) != e->bar0) return;
    mmio_write32(e->bar0 + EDU_LIVENESS, rnd());
  }
}

int test_fuzz(const struct options *o) {
  struct dev e, n;
  if (!find_both(&e, &n)) return EXIT_USAGE;
  uint32_t count = o->count > 0 ? (uint32_t)o->count : 10000;
  rng = (uint32_t)o->seed | 1;
  printf("fuzz seed=%d count=%u\n", o->seed, count);
  uint64_t t0 = rdtsc();
  for (uint32_t i = 0; i < count; i++) {
    struct dev *d = rnd() & 1 ? &e : &n;
    uint32_t op = rnd() % 16;
    if (op < 4) conf_read(d->bdf, (uint8_t)(rnd() & 0xff));
    else if (op < 9) { uint8_t reg = conf_reg(d); conf_write(d->bdf, reg, conf_value(d, reg)); }
    else if (op < 12) bar_read(d);
    else if (op < 15) bar_write(&e, &n);
    else put_back(d);
    if ((i + 1) % 100000 == 0) printf("fuzz %u accesses\n", i + 1);
  }
  printf("fuzz done count=%u tsc=%u\n", count, (uint32_t)((rdtsc() - t0) >> 20));
  return both_work(o, &e, &n);
}
