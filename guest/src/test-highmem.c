/* test=highmem: the multiboot memory map must show RAM above 4 GiB, and the guest must be able
 * to write and read it back. The guest runs in 32-bit protected mode, so it turns on PAE paging:
 * the first 4 GiB identity-mapped with 2 MiB pages, and one 2 MiB window (at virtual 1 GiB, which
 * the guest does not otherwise use) moved over high RAM. Writes a pattern derived from the
 * physical address at the start, the middle and the last 2 MiB page of high RAM, reads all of it
 * back afterwards, and checks that the same offsets below 4 GiB did not change (no aliasing).
 * The host side (test/host) reads the same pattern through tsvmm's views of guest RAM. */
#include "guest.h"

#define MBI_FLAG_MMAP 0x40
#define WINDOW 0x40000000u   /* virtual address of the movable 2 MiB window */
#define PAGE2M 0x200000u
#define PATTERN_BYTES 0x10000u  /* 64 KiB per spot */

struct mbi_full {
  uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
  uint32_t syms[4];
  uint32_t mmap_length, mmap_addr;
};
struct __attribute__((packed)) mmap_entry { uint32_t size; uint64_t addr, len; uint32_t type; };

static uint64_t pdpt[4] __attribute__((aligned(32)));
static uint64_t pd[4][512] __attribute__((aligned(4096)));

static void paging_on(void) {
  for (uint32_t i = 0; i < 4; i++) {
    pdpt[i] = (uint64_t)phys(pd[i]) | 1; /* present */
    for (uint32_t j = 0; j < 512; j++) pd[i][j] = ((uint64_t)(i * 512 + j) << 21) | 0x83; /* P | RW | PS */
  }
  uint32_t cr0, cr4;
  __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
  __asm__ volatile("mov %0, %%cr4" : : "r"(cr4 | 0x20) : "memory"); /* PAE */
  __asm__ volatile("mov %0, %%cr3" : : "r"(phys(pdpt)) : "memory");
  __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
  __asm__ volatile("mov %0, %%cr0" : : "r"(cr0 | 0x80000000u) : "memory"); /* PG */
}

/* Points the window at the 2 MiB page that holds physical address `pa`; returns its pointer. */
static volatile uint32_t *window(uint64_t pa) {
  pd[WINDOW >> 30][(WINDOW >> 21) & 511] = (pa & ~(uint64_t)(PAGE2M - 1)) | 0x83;
  __asm__ volatile("invlpg (%0)" : : "r"(WINDOW) : "memory");
  return (volatile uint32_t *)(uintptr_t)(WINDOW + (uint32_t)(pa & (PAGE2M - 1)));
}

/* "0x..." without leading zeros (the console's printf has no 64-bit conversions). */
static const char *hex64(uint64_t v, char *buf) {
  char tmp[16];
  int n = 0;
  do tmp[n++] = "0123456789abcdef"[v & 15], v >>= 4; while (v);
  buf[0] = '0', buf[1] = 'x';
  for (int i = 0; i < n; i++) buf[2 + i] = tmp[n - 1 - i];
  buf[2 + n] = 0;
  return buf;
}

static uint32_t pattern(uint64_t pa) { return (uint32_t)(pa >> 2) * 2654435761u ^ (uint32_t)(pa >> 32) ^ 0x5a5a0000u; }

int test_highmem(const void *mbi_ptr) {
  const struct mbi_full *mbi = mbi_ptr;
  if (!mbi || !(mbi->flags & MBI_FLAG_MMAP)) {
    printf("highmem: no multiboot memory map\n");
    return EXIT_FAIL;
  }
  uint64_t high_base = 0, high_len = 0;
  for (uint32_t off = 0; off < mbi->mmap_length;) {
    const struct mmap_entry *e = (const void *)(uintptr_t)(mbi->mmap_addr + off);
    char a[20], l[20];
    printf("highmem: mmap %s len %s type %u\n", hex64(e->addr, a), hex64(e->len, l), e->type);
    if (e->type == 1 && e->addr >= 0x100000000ull && e->len > high_len) high_base = e->addr, high_len = e->len;
    off += e->size + 4;
  }
  if (!high_len) {
    printf("highmem: no RAM above 4 GiB in the memory map\n");
    return EXIT_FAIL;
  }
  char b[20];
  printf("highmem: ram above 4G at %s, %u MiB\n", hex64(high_base, b), (uint32_t)(high_len >> 20));
  paging_on();
  uint64_t spots[3] = {high_base, high_base + (high_len / 2 & ~(uint64_t)(PAGE2M - 1)), high_base + high_len - PAGE2M};
  /* What the same offsets below 4 GiB hold before, to catch writes that wrap to low RAM. */
  uint32_t low_before[3];
  for (int s = 0; s < 3; s++) low_before[s] = *window(spots[s] & 0xffffffffull & ~(uint64_t)(PAGE2M - 1));
  for (int s = 0; s < 3; s++) {
    volatile uint32_t *p = window(spots[s]);
    for (uint32_t i = 0; i < PATTERN_BYTES / 4; i++) p[i] = pattern(spots[s] + i * 4);
  }
  int bad = 0;
  for (int s = 0; s < 3; s++) {
    volatile uint32_t *p = window(spots[s]);
    for (uint32_t i = 0; i < PATTERN_BYTES / 4; i++) {
      if (p[i] != pattern(spots[s] + i * 4)) {
        if (bad++ < 4) printf("highmem: at %s read 0x%08x, wrote 0x%08x\n", hex64(spots[s] + i * 4, b), p[i], pattern(spots[s] + i * 4));
      }
    }
    uint32_t low_now = *window(spots[s] & 0xffffffffull & ~(uint64_t)(PAGE2M - 1));
    if (low_now != low_before[s]) {
      printf("highmem: writing %s changed low RAM at 0x%08x\n", hex64(spots[s], b), (uint32_t)spots[s]);
      bad++;
    }
    printf("highmem: spot %s %s\n", hex64(spots[s], b), bad ? "BAD" : "ok");
  }
  if (bad) {
    printf("highmem: FAIL (%d bad words)\n", bad);
    return EXIT_FAIL;
  }
  printf("highmem: ok\n");
  return EXIT_OK;
}
