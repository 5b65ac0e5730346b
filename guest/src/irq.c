/* Interrupts: the IDT (every vector → a stub in entry.S → isr_dispatch), the legacy PIC
 * (remapped and masked: we use the local APIC), the local APIC and the IOAPIC. */
#include "guest.h"

struct idt_entry {
  uint16_t offset_lo, selector;
  uint8_t zero, type;
  uint16_t offset_hi;
} __attribute__((packed));

/* What entry.S pushes: pusha's registers, then the vector and error code, then the CPU's. */
struct irq_frame {
  uint32_t edi, esi, ebp, esp, ebx, edx, ecx, eax;
  uint32_t vector, error;
  uint32_t eip, cs, eflags;
};

extern char isr_stubs[]; /* entry.S: 256 stubs, 16 bytes each */
static struct idt_entry idt[256] __attribute__((aligned(8)));
static irq_handler_t handlers[256];
volatile uint32_t irq_count[256];

void idt_init(void) {
  for (int v = 0; v < 256; v++) {
    uint32_t stub = phys(isr_stubs) + 16 * v;
    /* 0x8e: present, DPL 0, 32-bit interrupt gate (IF cleared on entry: no nesting). */
    idt[v] = (struct idt_entry){(uint16_t)stub, 0x08, 0, 0x8e, (uint16_t)(stub >> 16)};
  }
  struct {
    uint16_t limit;
    uint32_t base;
  } __attribute__((packed)) desc = {sizeof idt - 1, phys(idt)};
  __asm__ volatile("lidt %0" : : "m"(desc));
}

static const char *const exception_names[32] = {
    "#DE divide error", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow", "#BR bound", "#UD invalid opcode",
    "#NM no FPU", "#DF double fault", "coprocessor overrun", "#TS bad TSS", "#NP segment not present",
    "#SS stack fault", "#GP general protection", "#PF page fault", "reserved", "#MF x87 error",
    "#AC alignment check", "#MC machine check", "#XM SIMD error", "#VE virtualization", "#CP control protection"};

void isr_dispatch(struct irq_frame *f);
void isr_dispatch(struct irq_frame *f) {
  uint8_t v = (uint8_t)f->vector;
  if (v < 32) {
    /* A CPU exception is a guest bug (or a VMM bug): say where and stop. */
    printf("tsvmm-guest: exception %u (%s) error=0x%x eip=0x%08x eflags=0x%x\n", v,
           exception_names[v] ? exception_names[v] : "reserved", f->error, f->eip, f->eflags);
    guest_exit(EXIT_CRASH);
  }
  if (v == SPURIOUS_VECTOR) return; /* APIC spurious interrupts need no EOI */
  irq_count[v]++;
  if (handlers[v]) handlers[v](v);
  lapic_eoi();
}

void irq_set_handler(uint8_t vector, irq_handler_t h) { handlers[vector] = h; }

/* ---- 8259 PIC: SeaBIOS leaves it at vectors 0x08/0x70 with the timer unmasked, which
 * would land on exception vectors. Remap to 0x20-0x2f and mask everything. ---- */
void pic_disable(void) {
  outb(0x11, 0x20), outb(0x11, 0xa0); /* ICW1: init, ICW4 follows */
  outb(0x20, 0x21), outb(0x28, 0xa1); /* ICW2: vector bases */
  outb(0x04, 0x21), outb(0x02, 0xa1); /* ICW3: slave on IRQ 2 */
  outb(0x01, 0x21), outb(0x01, 0xa1); /* ICW4: 8086 mode */
  outb(0xff, 0x21), outb(0xff, 0xa1); /* mask all */
}

/* ---- local APIC (xAPIC, MMIO at 0xFEE00000) ---- */
#define LAPIC_ID 0x20
#define LAPIC_TPR 0x80
#define LAPIC_EOI 0xb0
#define LAPIC_SVR 0xf0
#define MSR_APIC_BASE 0x1b

static uint32_t lapic_read(uint32_t reg) { return mmio_read32(LAPIC_BASE + reg); }
static void lapic_write(uint32_t reg, uint32_t v) { mmio_write32(LAPIC_BASE + reg, v); }

void lapic_enable(void) {
  uint32_t lo, hi;
  __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(MSR_APIC_BASE));
  if (!(lo & 0x800) || (lo & 0xfffff000) != LAPIC_BASE) /* globally enabled, at the usual address */
    __asm__ volatile("wrmsr" : : "a"(LAPIC_BASE | 0x800 | (lo & 0x100)), "d"(0), "c"(MSR_APIC_BASE));
  lapic_write(LAPIC_TPR, 0); /* accept every priority class */
  lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | 0x100 | SPURIOUS_VECTOR);
}

uint8_t lapic_id(void) { return (uint8_t)(lapic_read(LAPIC_ID) >> 24); }
void lapic_eoi(void) { lapic_write(LAPIC_EOI, 0); }

/* ---- IOAPIC: IOREGSEL at +0x00, IOWIN at +0x10; redirection entry n = registers 0x10+2n
 * (low: vector, delivery, polarity, trigger, mask) and 0x11+2n (high: destination << 24). ---- */
static void ioapic_write(uint32_t reg, uint32_t v) {
  mmio_write32(IOAPIC_BASE, reg);
  mmio_write32(IOAPIC_BASE + 0x10, v);
}

void ioapic_route(uint32_t gsi, uint8_t vector, int trigger, uint8_t dest) {
  /* Fixed delivery, physical destination, active high; bit 15 = level; bit 16 (mask) clear. */
  uint32_t low = vector | (trigger == IOAPIC_LEVEL ? 1u << 15 : 0);
  ioapic_write(0x10 + 2 * gsi, 1u << 16); /* masked while the high half changes */
  ioapic_write(0x11 + 2 * gsi, (uint32_t)dest << 24);
  ioapic_write(0x10 + 2 * gsi, low);
}

void ioapic_mask(uint32_t gsi) { ioapic_write(0x10 + 2 * gsi, 1u << 16); }
