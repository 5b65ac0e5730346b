/* test=smp: starts application processors (LAPIC IDs 1..aps, one at a time) with INIT-SIPI-SIPI
 * (Intel SDM vol. 3 9.4.4, the MP spec's universal start-up) and has the first do trapped port
 * I/O while the boot CPU only watches memory:
 *   check   the AP writes a value to COM1's scratch register (0x3ff) and reads it back, 4096
 *           times (a posted write must land before the read that follows it), then
 *           REP OUTSB/INSB strings through the same register; then COM1's plain registers
 *           (scratch, LCR, IER, MCR, the divisor latch behind DLAB, LSR, MSR): each written and
 *           read back twice at once (the first read right behind the posted write, the second
 *           with nothing of the AP's in flight: a VMM may answer that one on the AP's thread);
 *           Then the AP prints "smp ap says hello" itself (polled: LSR, THR, as Linux's console).
 *   input=1 then the AP polls LSR until a byte of serial input arrives (the boot CPU prints
 *           "smp ap waiting for input" first), reads it, and LSR must show the FIFO empty again;
 *   bench   count=MS: inb from the scratch register in a loop, timed with rdtsc
 *           ("bench ap done n=<iterations> ticks=<hi>:<lo>", as bench.c's lines); with aps=N > 1
 *           every AP and the boot CPU run that loop at once, and the line is
 *           "bench smp done n=<sum> ticks=<longest>"; with console=1 the AP instead writes '.' to
 *           COM1 as a polled console does (LSR until THRE, then THR): "bench apcon done ...".
 * Prints "smp ap up id=<lapic id>" per AP, then "smp check ok" or "smp check error <why>", and
 * with count= the bench line. Needs a VM with aps+1 vCPUs (aps: 1 if not given) and the in-kernel
 * LAPIC. */
#include "guest.h"

#define AP_TRAMPOLINE 0x8000
#define SIPI_VECTOR (AP_TRAMPOLINE >> 12)
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define ICR_INIT 0x00000500
#define ICR_STARTUP 0x00000600
#define ICR_ASSERT 0x00004000
#define ICR_BUSY 0x00001000
#define COM1 0x3f8
#define SCRATCH_PORT (COM1 + 7)
#define AP_START_MS 10000  /* generous: nested KVM under TCG is slow */
#define AP_CHECK_MS 120000
#define INPUT_MS 60000
#define MAX_APS 7

extern char ap_tramp_start[], ap_tramp_end[];
static uint8_t ap_stacks[MAX_APS][8192] __attribute__((aligned(16)));
uint32_t ap_stack_top;
static volatile uint32_t ap_up, ap_ids[MAX_APS + 1], ap_done, ap_bench_ms, ap_n[MAX_APS + 1];
static volatile uint32_t ap_go, ap_want_input, ap_input = 0x100, ap_input_want, ap_console;
static volatile uint64_t ap_ticks[MAX_APS + 1];
static volatile const char *ap_error;
static uint32_t n_aps;

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

/* Written, then read twice at once: both reads must see the write. */
static bool wr2(uint8_t v, uint16_t port, uint8_t want) {
  outb(v, port);
  uint8_t a = inb(port), b = inb(port);
  return a == want && b == want;
}

/* COM1's plain registers from the AP; the boot CPU prints nothing meanwhile (DLAB is switched). */
static const char *ap_check_regs(void) {
  uint8_t lcr0 = inb(COM1 + 3), ier0 = inb(COM1 + 1), mcr0 = inb(COM1 + 4);
  for (uint32_t i = 0; i < 512; i++) {
    uint8_t v = (uint8_t)(i * 37 + 5);
    uint8_t lcr = v & 0x7f, ier = v & 0x0d, mcr = v & 0x0f; /* DLAB off, THRI off, no loopback */
    if (!wr2(v, SCRATCH_PORT, v)) return "scratch register";
    if (!wr2(lcr, COM1 + 3, lcr)) return "LCR";
    if (!wr2(ier, COM1 + 1, ier)) return "IER";
    if (!wr2(mcr, COM1 + 4, mcr)) return "MCR";
    if (inb(COM1 + 6) != 0xb0) return "MSR (not in loopback: CTS, DSR, DCD)";
    if (!wr2(0x80 | lcr, COM1 + 3, 0x80 | lcr)) return "LCR with DLAB";
    if (!wr2(v, COM1 + 0, v)) return "DLL behind DLAB";
    if (!wr2((uint8_t)~v, COM1 + 1, (uint8_t)~v)) return "DLM behind DLAB";
    if (inb(COM1 + 0) != v) return "DLL after writing DLM";
    outb(lcr, COM1 + 3);
    if (inb(COM1 + 1) != ier || inb(COM1 + 1) != ier) return "IER after the divisor latch";
    if ((inb(COM1 + 5) & 0x61) != 0x60 || (inb(COM1 + 5) & 0x61) != 0x60)
      return "LSR (transmitter empty, no data)";
  }
  outb(0x80, COM1 + 3); /* as serial_init left it: divisor 1 */
  outb(0x01, COM1 + 0);
  outb(0x00, COM1 + 1);
  outb(lcr0, COM1 + 3);
  outb(ier0, COM1 + 1);
  outb(mcr0, COM1 + 4);
  if (inb(COM1 + 3) != lcr0 || inb(COM1 + 1) != ier0 || inb(COM1 + 4) != mcr0) return "restoring LCR, IER, MCR";
  return 0;
}

/* The byte arrives from outside while the AP polls LSR (a value the device thread changes). */
static const char *ap_check_input(void) {
  ap_want_input = 1;
  uint64_t d = deadline_ms(INPUT_MS);
  while (!(inb(COM1 + 5) & 0x01))
    if (expired(d)) return "no serial input arrived (LSR.DR never set)";
  ap_input = inb(COM1);
  if (inb(COM1 + 5) & 0x01) return "LSR.DR still set after reading the only byte";
  return 0;
}

static void bench_loop(uint32_t me) {
  uint32_t n = 0;
  uint64_t t0 = rdtsc(), end = deadline_ms(ap_bench_ms);
  if (ap_console) {
    do {
      for (int i = 0; i < 16; i++) con_putc('.');
      n += 16;
    } while (!expired(end));
  } else {
    do {
      for (int i = 0; i < 16; i++) (void)inb(SCRATCH_PORT);
      n += 16;
    } while (!expired(end));
  }
  ap_ticks[me] = rdtsc() - t0;
  ap_n[me] = n;
  if (ap_console) {
    con_putc('\n');
    (void)inb(COM1); /* RBR: a read every VMM answers behind this CPU's writes, so they are out first */
  }
}

void ap_main(void);
void ap_main(void) {
  uint32_t id = (uint8_t)(mmio_read32(LAPIC_BASE + 0x20) >> 24);
  uint32_t me = id <= MAX_APS ? id : MAX_APS;
  ap_ids[me] = id;
  __atomic_add_fetch(&ap_up, 1, __ATOMIC_SEQ_CST);
  while (ap_go < 1) cpu_relax();
  if (me == 1) {
    const char *e = ap_check();
    if (!e) e = ap_check_regs();
    if (!e) con_puts("smp ap says hello\n");
    if (!e && ap_input_want) e = ap_check_input();
    ap_error = e;
    __atomic_add_fetch(&ap_done, 1, __ATOMIC_SEQ_CST);
  }
  while (ap_go < 2) cpu_relax();
  if (ap_bench_ms && !ap_error) bench_loop(me);
  __atomic_add_fetch(&ap_done, 1, __ATOMIC_SEQ_CST);
  for (;;) __asm__ volatile("cli; hlt");
}

static bool wait_count(volatile uint32_t *v, uint32_t want, uint32_t ms) {
  uint64_t d = deadline_ms(ms);
  while (*v < want && !expired(d)) cpu_relax();
  return *v >= want;
}

int test_smp(const struct options *o) {
  n_aps = o->aps > 0 ? (uint32_t)o->aps : 1;
  if (n_aps > MAX_APS) {
    printf("smp check error aps=%u: at most %u\n", n_aps, MAX_APS);
    return EXIT_FAIL;
  }
  lapic_enable();
  memcpy((void *)AP_TRAMPOLINE, ap_tramp_start, (size_t)(ap_tramp_end - ap_tramp_start));
  ap_bench_ms = o->count > 0 ? (uint32_t)o->count : 0;
  ap_input_want = o->input > 0;
  ap_console = o->console > 0;
  /* One at a time: each takes the stack in ap_stack_top before it counts itself up. */
  for (uint32_t k = 1; k <= n_aps; k++) {
    ap_stack_top = phys(ap_stacks[k - 1] + sizeof ap_stacks[k - 1]);
    icr(k, ICR_INIT | ICR_ASSERT);
    delay_ms(10);
    for (int i = 0; i < 2 && ap_up < k; i++) {
      icr(k, ICR_STARTUP | ICR_ASSERT | SIPI_VECTOR);
      delay_ms(1);
    }
    if (!wait_count(&ap_up, k, AP_START_MS)) {
      printf("smp check error AP %u did not start within %u ms\n", k, AP_START_MS);
      return EXIT_FAIL;
    }
    printf("smp ap up id=%u\n", ap_ids[k]);
  }
  /* Quiet while the first AP checks: no port I/O from here until it is done (but the prompt). */
  ap_go = 1;
  uint64_t d = deadline_ms(AP_CHECK_MS + (ap_input_want ? INPUT_MS : 0));
  while (ap_done < 1 && !expired(d)) {
    if (ap_want_input == 1) {
      ap_want_input = 2;
      printf("smp ap waiting for input\n");
    }
    cpu_relax();
  }
  if (ap_done < 1) {
    printf("smp check error the AP did not finish\n");
    return EXIT_FAIL;
  }
  if (ap_error) {
    printf("smp check error %s\n", ap_error);
    return EXIT_FAIL;
  }
  if (ap_input_want) printf("smp ap input 0x%x\n", ap_input);
  printf("smp check ok\n");
  ap_go = 2;
  if (n_aps > 1 && ap_bench_ms) bench_loop(0);
  if (!wait_count(&ap_done, 1 + n_aps, AP_CHECK_MS + ap_bench_ms * 2)) {
    printf("smp check error the APs did not finish\n");
    return EXIT_FAIL;
  }
  if (ap_bench_ms && n_aps == 1)
    printf(ap_console ? "bench apcon done n=%u ticks=%u:%u\n" : "bench ap done n=%u ticks=%u:%u\n", ap_n[1], (uint32_t)(ap_ticks[1] >> 32), (uint32_t)ap_ticks[1]);
  else if (ap_bench_ms) {
    uint32_t n = 0;
    uint64_t t = 0;
    for (uint32_t k = 0; k <= n_aps; k++) {
      n += ap_n[k];
      if (ap_ticks[k] > t) t = ap_ticks[k];
    }
    printf("bench smp done n=%u ticks=%u:%u\n", n, (uint32_t)(t >> 32), (uint32_t)t);
  }
  return EXIT_OK;
}
