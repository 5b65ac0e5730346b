/* test=mtty: the Linux mtty sample mdev (4348:3253), a virtual 16550 on an I/O BAR whose
 * transmitter loops back into its receiver. Bytes written to THR come back from RBR, and with
 * IER.RDI each byte raises INTx, which the guest handles through the IOAPIC (count=N). */
#include "guest.h"

#define UART_RX 0
#define UART_TX 0
#define UART_IER 1
#define UART_IIR 2
#define UART_FCR 2
#define UART_LCR 3
#define UART_LSR 5
#define UART_SCR 7
#define UART_IER_RDI 0x01
#define UART_LSR_DR 0x01
#define UART_LSR_THRE 0x20
#define VECTOR_INTX 0x43
#define TIMEOUT_MS 5000

static uint16_t port;
static volatile uint32_t rx_irqs;
static volatile uint8_t rx_last;
static volatile bool rx_got;

static int failures;
static void result(const char *name, const char *why) {
  if (why) printf("FAIL %s: %s\n", name, why), failures++;
  else printf("PASS %s\n", name);
}

/* INTx handler: IIR says why; reading RBR drains the byte, so the source is gone before EOI. */
static void mtty_irq(uint8_t vector) {
  (void)vector;
  uint8_t iir = inb(port + UART_IIR);
  if (iir & 0x01) return; /* no interrupt pending: not ours */
  while (inb(port + UART_LSR) & UART_LSR_DR) rx_last = inb(port + UART_RX), rx_got = true;
  rx_irqs++;
}

static const char *sub_loopback(void) {
  static const char msg[] = "tsvmm-mdev";
  outb(0x07, port + UART_FCR); /* FIFO on, both cleared */
  for (const char *p = msg; *p; p++) outb((uint8_t)*p, port + UART_TX);
  char got[sizeof msg] = {0};
  size_t n = 0;
  while ((inb(port + UART_LSR) & UART_LSR_DR) && n < sizeof msg - 1) got[n++] = (char)inb(port + UART_RX);
  printf("mtty loopback wrote \"%s\" read \"%s\"\n", msg, got);
  if (n != sizeof msg - 1 || memcmp(got, msg, n)) return "bytes read back differ from bytes written";
  if (!(inb(port + UART_LSR) & UART_LSR_THRE)) return "transmitter not empty after the read-back";
  outb(0x5a, port + UART_SCR);
  if (inb(port + UART_SCR) != 0x5a) return "scratch register does not hold a value";
  return 0;
}

static const char *sub_intx(uint32_t bdf, int n) {
  uint8_t line = pci_read8(bdf, PCI_INTERRUPT_LINE), pin = pci_read8(bdf, 0x3d);
  printf("mtty intx pin=%c line=%u vector=0x%x\n", pin >= 1 && pin <= 4 ? 'A' + pin - 1 : '?', line, VECTOR_INTX);
  if (!pin) return "device has no INTx pin";
  if (line == 0 || line > 23) return "interrupt line is not an IOAPIC input (1..23)";
  ioapic_route(line, VECTOR_INTX, IOAPIC_LEVEL, lapic_id());
  outb(UART_IER_RDI, port + UART_IER);
  const char *why = 0;
  for (int i = 0; i < n && !why; i++) {
    uint32_t before = rx_irqs;
    uint8_t b = (uint8_t)('A' + i % 26);
    rx_got = false;
    outb(b, port + UART_TX); /* loops back: FIFO level 1 reaches the trigger level → INTx */
    uint64_t d = deadline_ms(TIMEOUT_MS);
    while (rx_irqs == before && !why) {
      if (expired(d)) {
        printf("mtty: interrupt %d of %d did not arrive (IIR 0x%x LSR 0x%x)\n", i + 1, n, inb(port + UART_IIR), inb(port + UART_LSR));
        why = "no interrupt within 5 s";
      }
      cpu_relax();
    }
    if (!why && (!rx_got || rx_last != b)) why = "the handler did not read back the byte written";
  }
  outb(0, port + UART_IER);
  ioapic_mask(line);
  if (!why) printf("mtty intx count=%d ok\n", n);
  return why;
}

/* test=mtty-stream: a running sequence through mtty's loopback with STREAM_LAG bytes always
 * waiting in its FIFO: each round writes byte n and reads back byte n - STREAM_LAG, so a state
 * lost or repeated in a snapshot or migration (FIFO contents, line status) shows as a wrong or
 * missing byte. Polled (no interrupts); prints "mtty seq N" every 64 bytes (count=N: stop after N). */
#define STREAM_LAG 8
#define STREAM_SCRATCH 0xa5
static uint8_t seq_byte(uint32_t n) { return (uint8_t)(n * 7 + (n >> 8)); }

static int mtty_stream(const struct options *o) {
  outb(0x07, port + UART_FCR); /* FIFO on, both cleared */
  outb(0, port + UART_IER);
  outb(STREAM_SCRATCH, port + UART_SCR);
  for (uint32_t n = 0; n < STREAM_LAG; n++) outb(seq_byte(n), port + UART_TX);
  printf("mtty stream ready\n");
  for (uint32_t n = STREAM_LAG; o->count <= 0 || n < (uint32_t)o->count; n++) {
    outb(seq_byte(n), port + UART_TX);
    uint8_t lsr = inb(port + UART_LSR);
    if (!(lsr & UART_LSR_DR)) {
      printf("mtty stream FAIL at %u: no byte waiting (LSR 0x%x): a byte was lost\n", n, lsr);
      return EXIT_FAIL;
    }
    uint8_t got = inb(port + UART_RX), want = seq_byte(n - STREAM_LAG);
    if (got != want) {
      printf("mtty stream FAIL at %u: read 0x%x, expected 0x%x\n", n, got, want);
      return EXIT_FAIL;
    }
    if (n % 64 == 0) {
      uint8_t scr = inb(port + UART_SCR), lcr = inb(port + UART_LCR);
      if (scr != STREAM_SCRATCH || lcr != 0x03) {
        printf("mtty stream FAIL at %u: registers changed (SCR 0x%x LCR 0x%x)\n", n, scr, lcr);
        return EXIT_FAIL;
      }
      printf("mtty seq %u\n", n);
    }
  }
  printf("mtty stream done\n");
  return EXIT_OK;
}

int test_mtty(const struct options *o) {
  uint32_t bdf = pci_find(0x4348, 0x3253);
  if (bdf == PCI_NONE) {
    printf("tsvmm-guest: no mtty device (4348:3253)\n");
    return EXIT_USAGE;
  }
  uint32_t bar = pci_read32(bdf, 0x10);
  if (!(bar & 1) || !(bar & ~3u)) {
    printf("tsvmm-guest: mtty BAR0 is not an assigned I/O BAR (0x%x)\n", bar);
    return EXIT_USAGE;
  }
  port = (uint16_t)(bar & ~3u);
  pci_write16(bdf, PCI_COMMAND, (pci_read16(bdf, PCI_COMMAND) | PCI_CMD_IO) & ~PCI_CMD_INTX_DISABLE);
  printf("mtty io=0x%x at %02x:%02x.%x\n", port, bdf >> 8, (bdf >> 3) & 0x1f, bdf & 7);
  outb(0x03, port + UART_LCR); /* 8N1, DLAB off */
  if (streq(o->test, "mtty-stream")) return mtty_stream(o);
  result("mtty-loopback", sub_loopback());
  int n = o->count > 0 ? o->count : 3;
  irq_set_handler(VECTOR_INTX, mtty_irq);
  lapic_enable();
  irq_enable();
  result("mtty-intx", sub_intx(bdf, n));
  irq_disable();
  return failures ? EXIT_FAIL : EXIT_OK;
}
