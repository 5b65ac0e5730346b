/* PCI configuration mechanism #1 (0xCF8 address, 0xCFC data), enumeration of bus 0 and of
 * the buses behind PCI-PCI bridges, capability lists and BARs. */
#include "guest.h"

#define CONF_ADDR 0xcf8
#define CONF_DATA 0xcfc

static void select_reg(uint32_t bdf, uint8_t reg) { outl(0x80000000u | bdf << 8 | (reg & 0xfc), CONF_ADDR); }

uint32_t pci_read32(uint32_t bdf, uint8_t reg) { select_reg(bdf, reg); return inl(CONF_DATA); }
uint16_t pci_read16(uint32_t bdf, uint8_t reg) { select_reg(bdf, reg); return inw(CONF_DATA + (reg & 2)); }
uint8_t pci_read8(uint32_t bdf, uint8_t reg) { select_reg(bdf, reg); return inb(CONF_DATA + (reg & 3)); }
void pci_write32(uint32_t bdf, uint8_t reg, uint32_t v) { select_reg(bdf, reg); outl(v, CONF_DATA); }
/* Sub-dword writes, so writing COMMAND does not also write (and clear W1C bits in) STATUS. */
void pci_write16(uint32_t bdf, uint8_t reg, uint16_t v) { select_reg(bdf, reg); outw(v, CONF_DATA + (reg & 2)); }
void pci_write8(uint32_t bdf, uint8_t reg, uint8_t v) { select_reg(bdf, reg); outb(v, CONF_DATA + (reg & 3)); }

struct scan {
  void (*fn)(uint32_t bdf, void *ctx);
  void *ctx;
  int count;
  uint8_t seen[256 / 8]; /* buses already scanned: a misconfigured bridge must not loop us */
};

static void scan_bus(struct scan *s, uint8_t bus) {
  if (s->seen[bus / 8] & (1 << (bus % 8))) return;
  s->seen[bus / 8] |= 1 << (bus % 8);
  for (uint8_t dev = 0; dev < 32; dev++) {
    if (pci_read16(PCI_BDF(bus, dev, 0), 0x00) == 0xffff) continue;
    /* Header type bit 7: multi-function; only then do functions 1-7 exist. */
    int fns = pci_read8(PCI_BDF(bus, dev, 0), 0x0e) & 0x80 ? 8 : 1;
    for (uint8_t fn = 0; fn < fns; fn++) {
      uint32_t bdf = PCI_BDF(bus, dev, fn);
      if (pci_read16(bdf, 0x00) == 0xffff) continue;
      s->count++;
      if (s->fn) s->fn(bdf, s->ctx);
      /* A PCI-PCI bridge (header type 1): follow its secondary bus if firmware set one. */
      if ((pci_read8(bdf, 0x0e) & 0x7f) == 1) {
        uint8_t secondary = pci_read8(bdf, 0x19);
        if (secondary) scan_bus(s, secondary);
      }
    }
  }
}

int pci_scan(void (*fn)(uint32_t bdf, void *ctx), void *ctx) {
  struct scan s;
  memset(&s, 0, sizeof s);
  s.fn = fn;
  s.ctx = ctx;
  scan_bus(&s, 0);
  return s.count;
}

struct find {
  uint32_t id, bdf;
};

static void find_one(uint32_t bdf, void *ctx) {
  struct find *f = ctx;
  if (f->bdf == PCI_NONE && pci_read32(bdf, 0x00) == f->id) f->bdf = bdf;
}

uint32_t pci_find(uint16_t vendor, uint16_t device) {
  struct find f = {(uint32_t)device << 16 | vendor, PCI_NONE};
  pci_scan(find_one, &f);
  return f.bdf;
}

uint8_t pci_find_cap(uint32_t bdf, uint8_t id) {
  if (!(pci_read16(bdf, 0x06) & 0x10)) return 0; /* status: no capability list */
  uint8_t p = pci_read8(bdf, 0x34) & 0xfc;
  for (int i = 0; p && i < 48; i++) { /* at most 48 capabilities fit: bounds a looped list */
    if (pci_read8(bdf, p) == id) return p;
    p = pci_read8(bdf, p + 1) & 0xfc;
  }
  return 0;
}

uint32_t pci_bar_mem(uint32_t bdf, int n, const char **why) {
  uint8_t reg = 0x10 + 4 * n;
  uint32_t lo = pci_read32(bdf, reg);
  if (lo & 1) {
    *why = "is an I/O BAR";
    return 0;
  }
  if ((lo & 6) == 4 && pci_read32(bdf, reg + 4)) {
    *why = "is above 4 GiB (this guest does not page)";
    return 0;
  }
  if (!(lo & ~0xfu)) *why = "is not assigned";
  return lo & ~0xfu;
}
