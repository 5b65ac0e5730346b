/* kmain: read the multiboot info, parse the command line, run the demo or one test. */
#include "guest.h"

#define MULTIBOOT_BOOTLOADER_MAGIC 0x2badb002
#define MBI_FLAG_MEM 0x1
#define MBI_FLAG_CMDLINE 0x4

struct multiboot_info {
  uint32_t flags, mem_lower, mem_upper, boot_device, cmdline;
};

/* Boot information, copied before .bss is cleared: a loader may have put the multiboot info
 * and command line right after the file image, which is where .bss is. Hence .data. */
#define BOOT_DATA __attribute__((section(".data")))
static char cmdline[512] BOOT_DATA;
static struct multiboot_info boot_info BOOT_DATA;
static uint32_t boot_magic BOOT_DATA;
static const void *boot_mbi BOOT_DATA; /* the info itself, for test=highmem's memory map */
extern char __bss_start[], __bss_end[];

static void usage_error(const char *word) {
  printf("tsvmm-guest: unknown option %s\n", word);
  guest_exit(EXIT_USAGE);
}

/* "0x.." hex or decimal; false on anything else. */
static bool parse_num(const char *s, int *out) {
  uint32_t v = 0;
  unsigned base = 10;
  if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) base = 16, s += 2;
  if (!*s) return false;
  for (; *s; s++) {
    unsigned d;
    if (*s >= '0' && *s <= '9') d = *s - '0';
    else if (base == 16 && *s >= 'a' && *s <= 'f') d = *s - 'a' + 10;
    else if (base == 16 && *s >= 'A' && *s <= 'F') d = *s - 'A' + 10;
    else return false;
    if (v > 0x7fffffff / base) return false;
    v = v * base + d;
  }
  *out = (int)v;
  return true;
}

/* "VVVV:DDDD", both hex. */
static bool parse_id(const char *s, uint16_t *vendor, uint16_t *device) {
  char buf[16];
  size_t n = strlen(s);
  if (n != 9 || s[4] != ':') return false;
  int v, d;
  memcpy(buf, "0x", 2), memcpy(buf + 2, s, 4), buf[6] = 0;
  if (!parse_num(buf, &v)) return false;
  memcpy(buf + 2, s + 5, 4);
  if (!parse_num(buf, &d)) return false;
  *vendor = (uint16_t)v, *device = (uint16_t)d;
  return true;
}

static void parse_word(char *word, struct options *o) {
  char *eq = word;
  while (*eq && *eq != '=') eq++;
  if (!*eq) usage_error(word);
  *eq = 0;
  const char *key = word, *val = eq + 1;
  static const struct { const char *key; size_t offset; } numbers[] = {
      {"vector", offsetof(struct options, vector)}, {"gsi", offsetof(struct options, gsi)},
      {"count", offsetof(struct options, count)},   {"dma", offsetof(struct options, dma)},
      {"msi", offsetof(struct options, msi)},       {"intx", offsetof(struct options, intx)},
      {"seed", offsetof(struct options, seed)},     {"aps", offsetof(struct options, aps)},
      {"input", offsetof(struct options, input)},   {"console", offsetof(struct options, console)},
      {"dirty", offsetof(struct options, dirty)},   {"passes", offsetof(struct options, passes)},
  };
  bool ok = false;
  if (streq(key, "test")) {
    ok = streq(val, "irq") || streq(val, "edu") || streq(val, "msix") || streq(val, "mtty") || streq(val, "mtty-stream") || streq(val, "hotplug") || streq(val, "smp") || streq(val, "hostile") || streq(val, "fuzz") || streq(val, "highmem") || streq(val, "probe-int") || streq(val, "virtio-iommu") || streq(val, "count") || bench_mode(val);
    if (ok) o->test = val;
  } else if (streq(key, "dev")) {
    ok = parse_id(val, &o->dev_vendor, &o->dev_device);
  } else {
    for (size_t i = 0; i < sizeof numbers / sizeof numbers[0]; i++)
      if (streq(key, numbers[i].key)) ok = parse_num(val, (int *)((char *)o + numbers[i].offset));
  }
  if (!ok) {
    *eq = '='; /* report the word as given */
    usage_error(word);
  }
}

static void parse_cmdline(char *s, struct options *o) {
  bool first = true;
  while (*s) {
    while (*s == ' ' || *s == '\t') s++;
    if (!*s) break;
    char *word = s;
    while (*s && *s != ' ' && *s != '\t') s++;
    if (*s) *s++ = 0;
    /* QEMU (like GRUB) puts the kernel's file name first: "guest/out/tsvmm-guest.elf test=...". */
    size_t n = strlen(word);
    bool has_eq = false, is_path = false;
    for (const char *c = word; *c; c++) has_eq |= *c == '=', is_path |= *c == '/';
    if (n > 4 && (streq(word + n - 4, ".elf") || streq(word + n - 4, ".bin"))) is_path = true;
    is_path &= !has_eq;
    if (first && is_path) {
      first = false;
      continue;
    }
    first = false;
    parse_word(word, o);
  }
}

/* ---- demo: list PCI functions ---- */
static void print_function(uint32_t bdf, void *ctx) {
  (void)ctx;
  uint32_t id = pci_read32(bdf, 0x00), class = pci_read32(bdf, 0x08) >> 8;
  printf("pci %02x:%02x.%x %04x:%04x class %06x\n", bdf >> 8, (bdf >> 3) & 0x1f, bdf & 7, id & 0xffff, id >> 16, class);
}

static int demo(void) {
  printf("tsvmm-guest: hello from a tiny multiboot guest; enumerating PCI (conf1)\n");
  int n = pci_scan(print_function, 0);
  printf("tsvmm-guest: %d pci functions\n", n);
  return EXIT_OK;
}

/* ---- test=irq: count interrupts that something outside injects on one vector ---- */
static int test_irq(const struct options *o) {
  if (o->vector < 0) {
    printf("tsvmm-guest: test=irq needs vector=V\n");
    return EXIT_USAGE;
  }
  if (o->vector < 32 || o->vector > 254) {
    printf("tsvmm-guest: vector=%d: must be 32..254 (0-31 are exceptions, 255 the spurious vector)\n", o->vector);
    return EXIT_USAGE;
  }
  uint8_t vec = (uint8_t)o->vector;
  int want = o->count > 0 ? o->count : 3;
  lapic_enable();
  if (o->gsi >= 0) {
    if (o->gsi > 23) {
      printf("tsvmm-guest: gsi=%d: the IOAPIC has pins 0..23\n", o->gsi);
      return EXIT_USAGE;
    }
    ioapic_route((uint32_t)o->gsi, vec, IOAPIC_EDGE, lapic_id());
  }
  irq_enable();
  printf("irq ready\n");
  uint32_t seen = 0;
  uint64_t deadline = deadline_ms(5000);
  while (seen < (uint32_t)want) {
    uint32_t now = irq_count[vec];
    if (now == seen) {
      if (expired(deadline)) {
        printf("irq timeout\n");
        return EXIT_TIMEOUT;
      }
      cpu_relax();
      continue;
    }
    while (seen < now && seen < (uint32_t)want) printf("irq %u\n", ++seen);
    deadline = deadline_ms(5000); /* "nothing for 5 s", not 5 s in total */
  }
  printf("irq done\n");
  return EXIT_OK;
}

/* ---- test=count: print an incrementing counter, one line per millisecond (count=N: stop after N,
 * else for ever), polled serial only: a snapshot taken mid-count must continue with the next value.
 * dirty=M: each count also checks that each page of M MiB at 16 MiB holds the previous count (in its
 * first word) and rewrites it with this one, so a page a migration lost or left stale shows (the guest
 * says so and exits 1). One word per page: every page is dirtied at the cost of a few thousand writes. */
#define DIRTY_BASE 0x1000000u
static int test_count(const struct options *o) {
  volatile uint32_t *buf = (volatile uint32_t *)(uintptr_t)DIRTY_BASE;
  const uint32_t stride = 4096 / 4;
  uint32_t words = o->dirty > 0 ? (uint32_t)o->dirty * (0x100000u / 4) : 0;
  if (words && (boot_info.mem_upper * 1024u + 0x100000u) < DIRTY_BASE + words * 4) {
    printf("count: dirty=%d does not fit in this guest's memory\n", o->dirty);
    return EXIT_USAGE;
  }
  for (uint32_t w = 0; w < words; w += stride) buf[w] = 0;
  printf("count ready\n");
  for (uint32_t i = 1; o->count <= 0 || i <= (uint32_t)o->count; i++) {
    for (uint32_t w = 0; w < words; w += stride) {
      if (buf[w] != i - 1) {
        printf("count memory mismatch at 0x%x: %u, expected %u\n", DIRTY_BASE + w * 4, buf[w], i - 1);
        return EXIT_FAIL;
      }
      buf[w] = i;
    }
    printf("count %u\n", i);
    uint64_t next = deadline_ms(1);
    while (!expired(next)) cpu_relax();
  }
  printf("count done\n");
  return EXIT_OK;
}

void kmain(uint32_t magic, const struct multiboot_info *mbi);
void kmain(uint32_t magic, const struct multiboot_info *mbi) {
  boot_magic = magic;
  if (magic == MULTIBOOT_BOOTLOADER_MAGIC) {
    boot_info = *mbi;
    boot_mbi = mbi;
    if (boot_info.flags & MBI_FLAG_CMDLINE && boot_info.cmdline) {
      const char *s = (const char *)(uintptr_t)boot_info.cmdline;
      for (size_t n = 0; s[n] && n < sizeof cmdline - 1; n++) cmdline[n] = s[n];
    }
  }
  memset(__bss_start, 0, (size_t)(__bss_end - __bss_start));

  serial_init();
  printf("tsvmm-guest: start\n");
  idt_init();
  pic_disable();
  if (boot_magic != MULTIBOOT_BOOTLOADER_MAGIC) printf("tsvmm-guest: no multiboot magic (eax=0x%x): empty command line\n", boot_magic);
  else if (boot_info.flags & MBI_FLAG_MEM) printf("tsvmm-guest: memory lower %uK upper %uK\n", boot_info.mem_lower, boot_info.mem_upper);
  printf("tsvmm-guest: cmdline \"%s\"\n", cmdline);
  timer_init();
  struct options o = {0, -1, -1, 0, 0, 0, 0, 0x1b36, 0x0010, 1, 0, 0, 0, 0, 0};
  parse_cmdline(cmdline, &o);
  int rc;
  if (!o.test) rc = demo();
  else if (streq(o.test, "irq")) rc = test_irq(&o);
  else if (streq(o.test, "edu")) rc = test_edu(&o);
  else if (bench_mode(o.test)) rc = test_bench(&o);
  else if (streq(o.test, "mtty") || streq(o.test, "mtty-stream")) rc = test_mtty(&o);
  else if (streq(o.test, "hotplug")) rc = test_hotplug(&o);
  else if (streq(o.test, "smp")) rc = test_smp(&o);
  else if (streq(o.test, "hostile")) rc = test_hostile(&o);
  else if (streq(o.test, "fuzz")) rc = test_fuzz(&o);
  else if (streq(o.test, "highmem")) rc = test_highmem(boot_mbi);
  else if (streq(o.test, "probe-int")) rc = test_probe_int();
  else if (streq(o.test, "virtio-iommu")) rc = test_virtio_iommu(&o);
  else if (streq(o.test, "count")) rc = test_count(&o);
  else rc = test_msix(&o);
  guest_exit((uint32_t)rc);
}
