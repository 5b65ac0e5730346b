/* test=probe-int: what scripts/test-kvm.mjs asks of this machine's /dev/kvm before it runs a guest that
 * reloads its segments and takes a software interrupt with paging off (test/kvm/multiboot.test.ts). A
 * paravirtual KVM (kvm_pvm) emulates `int n` here and fails with a KVM internal error: the probe meets the
 * same failure in a few milliseconds, so the suite can send that file to the test host instead.
 * (PAE paging to RAM above 4 GiB has its own probe: test=highmem in a guest a little over 3 GiB.) */
#include "guest.h"

#define PROBE_VECTOR 0x80

static volatile uint32_t probe_hits;
static void probe_handler(uint8_t v) {
  (void)v;
  probe_hits++;
}

int test_probe_int(void) {
  /* The flat GDT entry.S loaded: data selectors reloaded, CS through a far jump, paging off. */
  __asm__ volatile(
      "mov $0x10, %%eax\n\t"
      "mov %%eax, %%ds\n\t"
      "mov %%eax, %%es\n\t"
      "mov %%eax, %%ss\n\t"
      "ljmp $0x08, $1f\n"
      "1:"
      :
      :
      : "eax", "memory");
  printf("probe: segments reloaded, far jump done\n");
  irq_set_handler(PROBE_VECTOR, probe_handler);
  __asm__ volatile("int $0x80" : : : "memory");
  if (probe_hits != 1) {
    printf("probe: int 0x80 ran its handler %u times\n", probe_hits);
    return EXIT_FAIL;
  }
  printf("probe: int ok\n");
  return EXIT_OK;
}
