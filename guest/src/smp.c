/* test=smp: starts the application processor (LAPIC ID 1) with INIT-SIPI-SIPI (Intel SDM vol. 3
 * 9.4.4, the MP spec's universal start-up) and has it do trapped port I/O while the boot CPU
 * only watches memory:
 *   check   the AP writes a value to COM1's scratch register (0x3ff) and reads it back, 4096
 *           times (a posted write must land before the read that follows it), then
 *           REP OUTSB/INSB strings through the same register;
 *   bench   count=MS: inb from the scratch register in a loop, timed with rdtsc
 *           ("bench ap done n=<iterations> ticks=<hi>:<lo>", as bench.c's lines).
 * Prints "smp ap up id=<lapic id>", then "smp check ok" or "smp check error <why>", and with
 * count= the bench line. Needs a VM with 2 vCPUs and the in-kernel LAPIC. */
#include "guest.h"

#define AP_TRAMPOLINE 0x8000
#define SIPI_VECTOR (AP_TRAMPOLINE >> 12)
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define ICR_INIT 0x00000500
#define ICR_STARTUP 0x00000600
#define ICR_ASSERT 0x00004000
#define ICR_BUSY 0x00001000
#define SCRATCH_PORT 0x3ff
#define AP_START_MS 10000  /* generous: nested KVM under TCG is slow */
#define AP_CHECK_MS 120000

extern char ap_tramp_start[], ap_tramp_end[];
static uint8_t ap_stack[8192] __attribute__((aligned(16)));
uint32_t ap_stack_top;
static volatile uint32_t ap_up, ap_id, ap_done, ap_bench_ms, ap_n;
static volatile uint64_t ap_ticks;
static volatile const char *ap_error;

static void icr(uint32_t dest, uint32_t lo) {
  mmio_write32(LAPIC_BASE + LAPIC_ICR_HI, dest << 24);
  mmio_write32(LAPIC_BASE + LAPIC_ICR_LO, lo);
  while (mmio_read32(LAPIC_BASE + LAPIC_ICR_LO) & ICR_BUSY) cpu_relax();
}

static const char *ap_check(void) {
  for (uint32_t i = 0; i < 4096; i++) {
    uint8_t v = (uint8_t)(i * 7 + 1);
    outb(v, SCRATCH_PORT);
    if (inb(SCRATCH_PORT) != v) return "scratch register read back a different value";
  }
  static uint8_t buf[256];
  for (int i = 0; i < 256; i++) buf[i] = (uint8_t)(255 - i);
  const void *src = buf;
  uint32_t n = sizeof buf;
  __asm__ volatile("cld; rep outsb" : "+S"(src), "+c"(n) : "d"(SCRATCH_PORT) : "memory");
  if (inb(SCRATCH_PORT) != 0) return "after REP OUTSB the scratch register does not hold the string's last byte";
  outb(0x5a, SCRATCH_PORT);
  memset(buf, 0, sizeof buf);
  void *dst = buf;
  n = sizeof buf;
  __asm__ volatile("cld; rep insb" : "+D"(dst), "+c"(n) : "d"(SCRATCH_PORT) : "memory");
  for (int i = 0; i < 256; i++)
    if (buf[i] != 0x5a) return "REP INSB did not read the scratch register's value into every byte";
  return 0;
}

void ap_main(void);
void ap_main(void) {
  ap_id = (uint8_t)(mmio_read32(LAPIC_BASE + 0x20) >> 24);
  ap_up = 1;
  ap_error = ap_check();
  if (!ap_error && ap_bench_ms) {
    uint32_t n = 0;
    uint64_t t0 = rdtsc(), end = deadline_ms(ap_bench_ms);
    do {
      for (int i = 0; i < 16; i++) (void)inb(SCRATCH_PORT);
      n += 16;
    } while (!expired(end));
    ap_ticks = rdtsc() - t0;
    ap_n = n;
  }
  ap_done = 1;
  for (;;) __asm__ volatile("cli; hlt");
}

int test_smp(const struct options *o) {
  lapic_enable();
  memcpy((void *)AP_TRAMPOLINE, ap_tramp_start, (size_t)(ap_tramp_end - ap_tramp_start));
  ap_stack_top = phys(ap_stack + sizeof ap_stack);
  ap_bench_ms = o->count > 0 ? (uint32_t)o->count : 0;
  icr(1, ICR_INIT | ICR_ASSERT);
  delay_ms(10);
  for (int i = 0; i < 2 && !ap_up; i++) {
    icr(1, ICR_STARTUP | ICR_ASSERT | SIPI_VECTOR);
    delay_ms(1);
  }
  uint64_t d = deadline_ms(AP_START_MS);
  while (!ap_up && !expired(d)) cpu_relax();
  if (!ap_up) {
    printf("smp check error the AP did not start within %u ms\n", AP_START_MS);
    return EXIT_FAIL;
  }
  printf("smp ap up id=%u\n", ap_id);
  /* Quiet while the AP works: no port I/O from here until it is done. */
  d = deadline_ms(AP_CHECK_MS + ap_bench_ms * 2);
  while (!ap_done && !expired(d)) cpu_relax();
  if (!ap_done) {
    printf("smp check error the AP did not finish\n");
    return EXIT_FAIL;
  }
  if (ap_error) {
    printf("smp check error %s\n", ap_error);
    return EXIT_FAIL;
  }
  printf("smp check ok\n");
  if (ap_bench_ms) printf("bench ap done n=%u ticks=%u:%u\n", ap_n, (uint32_t)(ap_ticks >> 32), (uint32_t)ap_ticks);
  return EXIT_OK;
}
