/* test=hotplug dev=VVVV:DDDD: wait for a device to appear on a rescan of the bus (tsvmm emulates
 * no hot-plug controller: the guest polls, as `echo 1 > /sys/bus/pci/rescan` would), use it
 * (edu: the test=edu program with the same options), then wait for it to go away. */
#include "guest.h"

#define WAIT_MS 120000
#define POLL_MS 20

int test_hotplug(const struct options *o) {
  printf("hotplug ready: waiting for %04x:%04x\n", o->dev_vendor, o->dev_device);
  uint64_t d = deadline_ms(WAIT_MS);
  uint32_t bdf;
  while ((bdf = pci_find(o->dev_vendor, o->dev_device)) == PCI_NONE) {
    if (expired(d)) {
      printf("hotplug: the device did not appear\n");
      return EXIT_TIMEOUT;
    }
    delay_ms(POLL_MS);
  }
  printf("hotplug found %02x:%02x.%x\n", bdf >> 8, (bdf >> 3) & 0x1f, bdf & 7);
  int rc = o->dev_vendor == 0x1234 && o->dev_device == 0x11e8 ? test_edu(o) : EXIT_OK;
  printf("hotplug used rc=%d\n", rc);
  d = deadline_ms(WAIT_MS);
  while (pci_read16(bdf, 0x00) != 0xffff) {
    if (expired(d)) {
      printf("hotplug: the device did not go away\n");
      return EXIT_TIMEOUT;
    }
    delay_ms(POLL_MS);
  }
  printf("hotplug gone\n");
  return rc;
}
