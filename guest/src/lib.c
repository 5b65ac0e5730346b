/* Console (COM1, polled), a small printf, string helpers gcc may call, TSC timing, exit. */
#include "guest.h"

#define COM1 0x3f8
#define LSR (COM1 + 5)
#define LSR_THRE 0x20 /* transmit holding register empty: may write the next byte */
#define LSR_TEMT 0x40 /* transmitter empty: everything is out */
#define DEBUG_EXIT_PORT 0xf4

void serial_init(void) {
  outb(0x00, COM1 + 1); /* no UART interrupts: we poll */
  outb(0x80, COM1 + 3); /* DLAB on: divisor 1 = 115200 baud */
  outb(0x01, COM1 + 0);
  outb(0x00, COM1 + 1);
  outb(0x03, COM1 + 3); /* DLAB off, 8N1 */
  outb(0x07, COM1 + 2); /* FIFOs on and cleared */
  outb(0x03, COM1 + 4); /* DTR|RTS, not loopback */
}

/* Bounded waits: with no UART at all LSR reads 0xff and we never spin, but a broken one
 * must not hang the guest either. */
static void serial_wait(uint8_t bit) {
  for (uint32_t i = 0; i < 1000000 && !(inb(LSR) & bit); i++) cpu_relax();
}

void con_putc(char c) {
  serial_wait(LSR_THRE);
  outb((uint8_t)c, COM1);
}

void con_puts(const char *s) {
  while (*s) con_putc(*s++);
}

static void put_uint(uint32_t v, unsigned base, int width, char pad) {
  char buf[12];
  int n = 0;
  do {
    buf[n++] = "0123456789abcdef"[v % base];
    v /= base;
  } while (v);
  while (width-- > n) con_putc(pad);
  while (n) con_putc(buf[--n]);
}

/* %s %c %d %u %x %p %%, with optional '0' flag and width; 'l' is accepted and ignored
 * (long is 32-bit here). No 64-bit conversions: they would need libgcc. */
void vprintf(const char *fmt, va_list ap) {
  for (; *fmt; fmt++) {
    if (*fmt != '%') {
      con_putc(*fmt);
      continue;
    }
    char pad = ' ';
    int width = 0;
    if (*++fmt == '0') pad = '0', fmt++;
    while (*fmt >= '0' && *fmt <= '9') width = width * 10 + (*fmt++ - '0');
    while (*fmt == 'l') fmt++;
    switch (*fmt) {
    case 's': {
      const char *s = va_arg(ap, const char *);
      con_puts(s ? s : "(null)");
      break;
    }
    case 'c': con_putc((char)va_arg(ap, int)); break;
    case 'd': {
      int v = va_arg(ap, int);
      if (v < 0) con_putc('-'), v = -v;
      put_uint((uint32_t)v, 10, width, pad);
      break;
    }
    case 'u': put_uint(va_arg(ap, uint32_t), 10, width, pad); break;
    case 'x': put_uint(va_arg(ap, uint32_t), 16, width, pad); break;
    case 'p': con_puts("0x"); put_uint(phys(va_arg(ap, void *)), 16, 8, '0'); break;
    case '%': con_putc('%'); break;
    case 0: return;
    default: con_putc('%'); con_putc(*fmt); break;
    }
  }
}

void printf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
}

/* gcc may emit calls to these even in freestanding code (struct copies, zeroing loops). */
void *memset(void *d, int c, size_t n) {
  uint8_t *p = d;
  while (n--) *p++ = (uint8_t)c;
  return d;
}

void *memcpy(void *d, const void *s, size_t n) {
  uint8_t *p = d;
  const uint8_t *q = s;
  while (n--) *p++ = *q++;
  return d;
}

int memcmp(const void *a, const void *b, size_t n) {
  const uint8_t *p = a, *q = b;
  for (; n; n--, p++, q++)
    if (*p != *q) return *p - *q;
  return 0;
}

size_t strlen(const char *s) {
  size_t n = 0;
  while (s[n]) n++;
  return n;
}

bool streq(const char *a, const char *b) {
  while (*a && *a == *b) a++, b++;
  return *a == *b;
}

/* ---- time: the TSC, calibrated once against PIT channel 2 ----
 * The TSC runs at a constant real-time rate under KVM and under QEMU TCG (host ticks), so
 * timeouts are in real time whatever the emulation speed. Calibration is loose (exits to
 * the VMM while polling port 0x61 add a little), which is fine for timeouts. */
static uint32_t tsc_khz;

#define PIT_HZ 1193182u
#define CAL_MS 20u

void timer_init(void) {
  const uint32_t count = PIT_HZ * CAL_MS / 1000;
  uint8_t p61 = inb(0x61);
  outb((p61 & ~0x02) | 0x01, 0x61); /* gate channel 2 on, speaker off */
  outb(0xb0, 0x43);                  /* channel 2, lobyte/hibyte, mode 0 (OUT high at terminal count) */
  outb(count & 0xff, 0x42);
  outb(count >> 8, 0x42);
  uint64_t t0 = rdtsc();
  bool started_low = !(inb(0x61) & 0x20);
  uint32_t spins = 0;
  while (started_low && !(inb(0x61) & 0x20) && ++spins < 50000000) cpu_relax();
  uint64_t ticks = rdtsc() - t0;
  /* No PIT (OUT already high, or never rising) or a nonsense rate: assume 2 GHz. */
  if (!started_low || spins >= 50000000 || ticks < (uint64_t)CAL_MS * 50000 || ticks > (uint64_t)CAL_MS * 20000000) {
    tsc_khz = 2000000;
    printf("tsvmm-guest: PIT calibration failed, assuming a 2 GHz TSC\n");
  } else {
    tsc_khz = (uint32_t)ticks / CAL_MS; /* ticks < 2^32 here: 32-bit division, no libgcc */
  }
}

uint64_t deadline_ms(uint32_t ms) { return rdtsc() + (uint64_t)ms * tsc_khz; }
bool expired(uint64_t deadline) { return rdtsc() >= deadline; }
void delay_ms(uint32_t ms) {
  uint64_t d = deadline_ms(ms);
  while (!expired(d)) cpu_relax();
}

void guest_exit(uint32_t code) {
  printf("tsvmm-guest: exit %u\n", code);
  serial_wait(LSR_TEMT);
  /* isa-debug-exit (QEMU: status (code<<1)|1) or tsvmm's debug-exit port (status code). */
  outl(code, DEBUG_EXIT_PORT);
  /* Still here: no such device. Stop for good. */
  for (;;) __asm__ volatile("cli; hlt");
}
