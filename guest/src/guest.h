/* Shared declarations for the tsvmm test guest: port/MMIO accessors, console, timing,
 * PCI, interrupts and the tests. 32-bit protected mode, paging off: physical address ==
 * pointer value, so MMIO is a volatile dereference of the BAR address. */
#ifndef GUEST_H
#define GUEST_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- port I/O and MMIO (value first, Linux style: outl(value, port)) ---- */
static inline void outb(uint8_t v, uint16_t port) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(uint16_t v, uint16_t port) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint32_t v, uint16_t port) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline uint32_t mmio_read32(uint32_t addr) { return *(volatile uint32_t *)(uintptr_t)addr; }
static inline void mmio_write32(uint32_t addr, uint32_t v) { *(volatile uint32_t *)(uintptr_t)addr = v; }

static inline uint64_t rdtsc(void) {
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((uint64_t)hi << 32) | lo;
}
static inline void cpu_relax(void) { __asm__ volatile("pause" : : : "memory"); }
static inline void irq_enable(void) { __asm__ volatile("sti" : : : "memory"); }
static inline void irq_disable(void) { __asm__ volatile("cli" : : : "memory"); }
static inline uint32_t phys(const void *p) { return (uint32_t)(uintptr_t)p; }

/* ---- lib.c: console, strings, time, exit ---- */
void serial_init(void);
void con_putc(char c);
void con_puts(const char *s); /* no newline added */
void printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void vprintf(const char *fmt, va_list ap);
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
bool streq(const char *a, const char *b);

void timer_init(void);
uint64_t deadline_ms(uint32_t ms); /* a TSC value ms milliseconds from now */
bool expired(uint64_t deadline);
void delay_ms(uint32_t ms);

#define EXIT_OK 0
#define EXIT_FAIL 1  /* a test failed */
#define EXIT_USAGE 2 /* bad command line, missing device or BAR */
#define EXIT_TIMEOUT 3
#define EXIT_CRASH 4 /* unexpected CPU exception */
void guest_exit(uint32_t code) __attribute__((noreturn));

/* ---- pci.c: configuration mechanism #1 ---- */
#define PCI_BDF(bus, dev, fn) ((uint32_t)(bus) << 8 | (uint32_t)(dev) << 3 | (uint32_t)(fn))
#define PCI_NONE 0xffffffffu
#define PCI_COMMAND 0x04
#define PCI_CMD_IO 0x0001
#define PCI_CMD_MEM 0x0002
#define PCI_CMD_MASTER 0x0004
#define PCI_CMD_INTX_DISABLE 0x0400
#define PCI_INTERRUPT_LINE 0x3c
#define PCI_CAP_MSI 0x05
#define PCI_CAP_MSIX 0x11

uint32_t pci_read32(uint32_t bdf, uint8_t reg);
uint16_t pci_read16(uint32_t bdf, uint8_t reg);
uint8_t pci_read8(uint32_t bdf, uint8_t reg);
void pci_write32(uint32_t bdf, uint8_t reg, uint32_t v);
void pci_write16(uint32_t bdf, uint8_t reg, uint16_t v);
void pci_write8(uint32_t bdf, uint8_t reg, uint8_t v);
/* Calls fn for every function on bus 0 and behind bridges; returns the number visited. */
int pci_scan(void (*fn)(uint32_t bdf, void *ctx), void *ctx);
uint32_t pci_find(uint16_t vendor, uint16_t device); /* PCI_NONE when absent */
uint8_t pci_find_cap(uint32_t bdf, uint8_t id);      /* 0 when absent */
/* Memory BAR n's address; 0 when unassigned, I/O, or (64-bit) above 4 GiB (*why says which). */
uint32_t pci_bar_mem(uint32_t bdf, int n, const char **why);

/* ---- irq.c: IDT, PIC, local APIC, IOAPIC ---- */
#define LAPIC_BASE 0xfee00000u
#define IOAPIC_BASE 0xfec00000u
#define MSI_ADDR_BASE 0xfee00000u
#define SPURIOUS_VECTOR 0xff
#define IOAPIC_EDGE 0
#define IOAPIC_LEVEL 1

typedef void (*irq_handler_t)(uint8_t vector);
void idt_init(void);
void pic_disable(void);
void lapic_enable(void);
uint8_t lapic_id(void);
void lapic_eoi(void);
void ioapic_route(uint32_t gsi, uint8_t vector, int trigger, uint8_t dest);
void ioapic_mask(uint32_t gsi);
/* Handler runs with interrupts off, before the EOI the dispatcher sends. */
void irq_set_handler(uint8_t vector, irq_handler_t h);
extern volatile uint32_t irq_count[256];

/* ---- tests ---- */
struct options {
  const char *test;  /* NULL: demo */
  int vector, gsi, count;
  int dma, msi, intx;
  uint16_t dev_vendor, dev_device;
  int seed;
  int aps, input, console; /* test=smp: APs to start; wait for a byte of input; bench a polled console */
  int dirty; /* test=count: MiB of memory rewritten (and checked) per count */
  int passes; /* test=bench-viommu: timed loops, one after another (each reports) */
};
int test_edu(const struct options *o);
int test_msix(const struct options *o);
bool bench_mode(const char *test); int test_bench(const struct options *o); /* bench.c */
int test_mtty(const struct options *o);
int test_hotplug(const struct options *o);
int test_smp(const struct options *o); /* smp.c */
int test_hostile(const struct options *o); /* test-fuzz.c */
int test_fuzz(const struct options *o);
int test_highmem(const void *multiboot_info); /* test-highmem.c */
int test_probe_int(void); /* test-probe.c */
int test_virtio_iommu(const struct options *o); int bench_viommu(uint32_t ms, uint32_t passes); /* test-virtio.c */

#endif
