// vfio-edu: a userspace driver for QEMU's edu device through the Linux VFIO uAPI (container + group), the way
// DPDK or SPDK drive a device: the container, the device's group, an IOMMU type, a DMA mapping of our buffer at an
// IOVA, BAR0 mapped, edu's DMA engine moving bytes into and out of the buffer, and edu's interrupt through an
// eventfd (MSI, or INTx with its unmask).
//
//   vfio-edu [-d BDF] [-t auto|type1|noiommu] [-i auto|msi|intx] [-n BYTES] [-B] [-U] ok|unmapped
//     ok        RAM→edu then edu→RAM through the mapping; the bytes and the interrupts are checked
//     unmapped  edu told to write to an IOVA never mapped: the buffer and the guard pages around its data must be
//               unchanged, the DMA status is reported, and a mapped round trip afterwards must still work.
//               Only meaningful behind an IOMMU (type1): without one an IOVA is a physical address.
//     -d        the device (default: the first 1234:11e8); -B binds it to vfio-pci first (driver_override)
//     -t        auto: noiommu when the group is a no-IOMMU group (/dev/vfio/noiommu-N), else type1
//     -U        type1 without interrupt remapping (a guest's virtio-iommu on x86): set vfio_iommu_type1's
//               allow_unsafe_interrupts first, which type1 otherwise wants before it takes the group
//     -n        bytes per DMA (default 1024)
// Output: "vfio-edu ok ..." or "vfio-edu error <why>" (exit 1; 2 for bad arguments), plus "vfio-edu: ..." steps.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <linux/pci_regs.h>
#include <linux/vfio.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <dirent.h>

#define EDU_ID 0x00
#define EDU_LIVENESS 0x04
#define EDU_IRQ_STATUS 0x24
#define EDU_IRQ_ACK 0x64
#define EDU_DMA_SRC 0x80
#define EDU_DMA_DST 0x88
#define EDU_DMA_COUNT 0x90
#define EDU_DMA_CMD 0x98
#define EDU_DMA_START 1
#define EDU_DMA_TO_RAM 2
#define EDU_DMA_IRQ 4
#define EDU_IRQ_DMA 0x100
#define EDU_BUFFER 0x40000
// edu masks RAM-side DMA addresses to 28 bits: every IOVA stays below 256 MiB.
#define EDU_DMA_LIMIT (1ull << 28)
#define PAGE 4096
// The buffer: a guard page, the data page, a guard page; all three mapped at IOVA_BASE.
#define IOVA_BASE 0x1000000ull
#define IOVA_UNMAPPED 0x2000000ull
#define GUARD 0xa5

static const char *bdf_arg;
static char bdf[256];
static int container = -1, group = -1, device = -1, irqfd = -1;
static volatile uint8_t *bar0;
static uint64_t bar0_off, config_off;
static int noiommu, use_intx;
static uint8_t *buf;  // 3 pages
static uint64_t data_iova;

__attribute__((noreturn, format(printf, 1, 2))) static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("vfio-edu error ");
  vprintf(fmt, ap);
  printf("\n");
  va_end(ap);
  exit(1);
}

static int read_text(const char *path, char *out, size_t n) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return -1;
  ssize_t r = read(fd, out, n - 1);
  close(fd);
  if (r < 0) return -1;
  while (r > 0 && (out[r - 1] == '\n' || out[r - 1] == ' ')) r--;
  out[r] = 0;
  return 0;
}

static int write_text(const char *path, const char *s) {
  int fd = open(path, O_WRONLY);
  if (fd < 0) return -1;
  ssize_t r = write(fd, s, strlen(s));
  int e = errno;
  close(fd);
  errno = e;
  return r == (ssize_t)strlen(s) ? 0 : -1;
}

static void find_device(void) {
  if (bdf_arg) {
    snprintf(bdf, sizeof bdf, "%s", bdf_arg);
    return;
  }
  DIR *d = opendir("/sys/bus/pci/devices");
  if (!d) die("no /sys/bus/pci/devices: %s", strerror(errno));
  struct dirent *e;
  while ((e = readdir(d))) {
    char p[PATH_MAX], v[32], id[32];
    snprintf(p, sizeof p, "/sys/bus/pci/devices/%s/vendor", e->d_name);
    if (read_text(p, v, sizeof v)) continue;
    snprintf(p, sizeof p, "/sys/bus/pci/devices/%s/device", e->d_name);
    if (read_text(p, id, sizeof id)) continue;
    if (!strcmp(v, "0x1234") && !strcmp(id, "0x11e8") && (!bdf[0] || strcmp(e->d_name, bdf) < 0))
      snprintf(bdf, sizeof bdf, "%s", e->d_name);
  }
  closedir(d);
  if (!bdf[0]) die("no edu device (1234:11e8) in /sys/bus/pci/devices");
}

static void current_driver(char *out, size_t n) {
  char p[PATH_MAX], link[PATH_MAX];
  snprintf(p, sizeof p, "/sys/bus/pci/devices/%s/driver", bdf);
  ssize_t r = readlink(p, link, sizeof link - 1);
  if (r < 0) {
    snprintf(out, n, "none");
    return;
  }
  link[r] = 0;
  snprintf(out, n, "%s", basename(link));
}

static void bind_vfio(void) {
  char drv[64], p[PATH_MAX];
  current_driver(drv, sizeof drv);
  if (!strcmp(drv, "vfio-pci")) return;
  snprintf(p, sizeof p, "/sys/bus/pci/devices/%s/driver_override", bdf);
  if (write_text(p, "vfio-pci")) die("%s: %s", p, strerror(errno));
  if (strcmp(drv, "none")) {
    snprintf(p, sizeof p, "/sys/bus/pci/devices/%s/driver/unbind", bdf);
    if (write_text(p, bdf)) die("unbind %s from %s: %s", bdf, drv, strerror(errno));
  }
  if (write_text("/sys/bus/pci/drivers_probe", bdf))
    die("binding %s to vfio-pci failed: %s (is vfio-pci loaded, and is there an IOMMU or no-IOMMU mode?)", bdf,
        strerror(errno));
  current_driver(drv, sizeof drv);
  if (strcmp(drv, "vfio-pci")) die("%s is bound to %s after the probe, not vfio-pci", bdf, drv);
  printf("vfio-edu: bound %s to vfio-pci\n", bdf);
}

static uint32_t rd32(uint64_t off) {
  if (bar0) return *(volatile uint32_t *)(bar0 + off);
  uint32_t v;
  if (pread(device, &v, 4, (off_t)(bar0_off + off)) != 4) die("BAR0 read at 0x%" PRIx64 ": %s", off, strerror(errno));
  return v;
}

static void wr32(uint64_t off, uint32_t v) {
  if (bar0) {
    *(volatile uint32_t *)(bar0 + off) = v;
    return;
  }
  if (pwrite(device, &v, 4, (off_t)(bar0_off + off)) != 4) die("BAR0 write at 0x%" PRIx64 ": %s", off, strerror(errno));
}

static void wr64(uint64_t off, uint64_t v) {
  if (bar0) {
    *(volatile uint64_t *)(bar0 + off) = v;
    return;
  }
  if (pwrite(device, &v, 8, (off_t)(bar0_off + off)) != 8) die("BAR0 write at 0x%" PRIx64 ": %s", off, strerror(errno));
}

static void set_irqs(uint32_t index, uint32_t flags, int fd) {
  struct {
    struct vfio_irq_set s;
    int32_t fd;
  } req = {{.argsz = sizeof req, .flags = flags, .index = index, .start = 0, .count = 1}, fd};
  if (flags & VFIO_IRQ_SET_DATA_NONE) req.s.argsz = sizeof req.s;
  if (ioctl(device, VFIO_DEVICE_SET_IRQS, &req))
    die("VFIO_DEVICE_SET_IRQS index %u flags 0x%x: %s", index, flags, strerror(errno));
}

static void setup_irq(const char *want) {
  irqfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (irqfd < 0) die("eventfd: %s", strerror(errno));
  struct vfio_irq_info msi = {.argsz = sizeof msi, .index = VFIO_PCI_MSI_IRQ_INDEX};
  int have_msi = ioctl(device, VFIO_DEVICE_GET_IRQ_INFO, &msi) == 0 && msi.count > 0;
  use_intx = !strcmp(want, "intx") || (!strcmp(want, "auto") && !have_msi);
  if (!use_intx && !have_msi) die("the device offers no MSI vector");
  uint32_t index = use_intx ? VFIO_PCI_INTX_IRQ_INDEX : VFIO_PCI_MSI_IRQ_INDEX;
  set_irqs(index, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, irqfd);
  printf("vfio-edu: interrupt %s through an eventfd\n", use_intx ? "INTx" : "MSI");
}

/** Waits for one interrupt; 1 if it came, 0 on timeout. Acks edu's DMA status and (INTx) unmasks. */
static int wait_irq(uint32_t *status) {
  struct pollfd p = {.fd = irqfd, .events = POLLIN};
  int r = poll(&p, 1, 10000);
  if (r < 0) die("poll: %s", strerror(errno));
  *status = rd32(EDU_IRQ_STATUS);
  if (r == 0) return 0;
  uint64_t n;
  if (read(irqfd, &n, 8) != 8) die("eventfd read: %s", strerror(errno));
  wr32(EDU_IRQ_ACK, *status);
  if (use_intx) set_irqs(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, -1);
  return 1;
}

/** One edu DMA with its completion interrupt; returns the interrupt status, dies on a timeout. */
static uint32_t dma(uint64_t src, uint64_t dst, uint32_t count, int to_ram) {
  // A DMA still running would ignore the new registers.
  for (int i = 0; i < 1000 && (rd32(EDU_DMA_CMD) & EDU_DMA_START); i++) usleep(10000);
  wr64(EDU_DMA_SRC, src);
  wr64(EDU_DMA_DST, dst);
  wr64(EDU_DMA_COUNT, count);
  wr64(EDU_DMA_CMD, EDU_DMA_START | EDU_DMA_IRQ | (to_ram ? EDU_DMA_TO_RAM : 0));
  uint32_t status;
  if (!wait_irq(&status))
    die("no %s interrupt within 10 s after a DMA %s (irq status 0x%x, dma cmd 0x%x)", use_intx ? "INTx" : "MSI",
        to_ram ? "edu→RAM" : "RAM→edu", status, rd32(EDU_DMA_CMD));
  if (!(status & EDU_IRQ_DMA)) die("interrupt status 0x%x after a DMA: the DMA bit 0x100 is not set", status);
  if (rd32(EDU_DMA_CMD) & EDU_DMA_START) die("the DMA is still running after its interrupt");
  return status;
}

/** The physical address of a locked page (no-IOMMU mode: the IOVA edu sees is the physical address). */
static uint64_t phys_of(void *va) {
  int fd = open("/proc/self/pagemap", O_RDONLY);
  if (fd < 0) die("/proc/self/pagemap: %s", strerror(errno));
  uint64_t e;
  if (pread(fd, &e, 8, (off_t)((uintptr_t)va / PAGE * 8)) != 8) die("pagemap read: %s", strerror(errno));
  close(fd);
  if (!(e & (1ull << 63))) die("pagemap: the buffer page is not present");
  uint64_t pfn = e & ((1ull << 55) - 1);
  if (!pfn) die("pagemap shows PFN 0: reading PFNs needs CAP_SYS_ADMIN");
  return pfn * PAGE;
}

#define UNSAFE_INTERRUPTS "/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"

static void open_vfio(const char *type_arg, int unsafe_interrupts) {
  char p[PATH_MAX], link[PATH_MAX];
  snprintf(p, sizeof p, "/sys/bus/pci/devices/%s/iommu_group", bdf);
  ssize_t r = readlink(p, link, sizeof link - 1);
  if (r < 0) die("%s has no IOMMU group (%s): no IOMMU, and vfio's no-IOMMU mode is off", bdf, strerror(errno));
  link[r] = 0;
  const char *gid = basename(link);
  char gpath[PATH_MAX];
  snprintf(gpath, sizeof gpath, "/dev/vfio/noiommu-%s", gid);
  int is_noiommu_group = access(gpath, F_OK) == 0;
  noiommu = !strcmp(type_arg, "noiommu") || (!strcmp(type_arg, "auto") && is_noiommu_group);
  if (!noiommu) snprintf(gpath, sizeof gpath, "/dev/vfio/%s", gid);
  container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
  if (container < 0) die("/dev/vfio/vfio: %s", strerror(errno));
  if (ioctl(container, VFIO_GET_API_VERSION) != VFIO_API_VERSION) die("unknown VFIO API version");
  unsigned long type = noiommu ? VFIO_NOIOMMU_IOMMU : VFIO_TYPE1_IOMMU;
  if (ioctl(container, VFIO_CHECK_EXTENSION, type) <= 0)
    die("the container does not offer IOMMU type %s", noiommu ? "VFIO_NOIOMMU_IOMMU" : "VFIO_TYPE1_IOMMU");
  if (unsafe_interrupts && !noiommu && write_text(UNSAFE_INTERRUPTS, "1"))
    die("%s: %s (is vfio_iommu_type1 loaded?)", UNSAFE_INTERRUPTS, strerror(errno));
  group = open(gpath, O_RDWR | O_CLOEXEC);
  if (group < 0) die("%s: %s", gpath, strerror(errno));
  struct vfio_group_status gs = {.argsz = sizeof gs};
  if (ioctl(group, VFIO_GROUP_GET_STATUS, &gs)) die("VFIO_GROUP_GET_STATUS: %s", strerror(errno));
  if (!(gs.flags & VFIO_GROUP_FLAGS_VIABLE)) die("group %s is not viable (a device of it is bound to a host driver)", gid);
  if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container)) die("VFIO_GROUP_SET_CONTAINER: %s", strerror(errno));
  if (ioctl(container, VFIO_SET_IOMMU, type)) {
    // type1 refuses a group whose MSIs the IOMMU cannot isolate (no interrupt remapping: a guest's virtio-iommu).
    if (errno == EPERM && !noiommu)
      die("VFIO_SET_IOMMU: %s: the IOMMU has no interrupt remapping; allow it with -U (sets vfio_iommu_type1's "
          "allow_unsafe_interrupts)",
          strerror(errno));
    die("VFIO_SET_IOMMU: %s", strerror(errno));
  }
  device = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, bdf);
  if (device < 0) die("VFIO_GROUP_GET_DEVICE_FD %s: %s", bdf, strerror(errno));
  printf("vfio-edu: %s group %s (%s), iommu %s\n", bdf, gid, gpath, noiommu ? "noiommu" : "type1");

  struct vfio_region_info cfg = {.argsz = sizeof cfg, .index = VFIO_PCI_CONFIG_REGION_INDEX};
  if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &cfg)) die("config region info: %s", strerror(errno));
  config_off = cfg.offset;
  uint16_t cmd;
  if (pread(device, &cmd, 2, (off_t)(config_off + PCI_COMMAND)) != 2) die("config read: %s", strerror(errno));
  cmd |= PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
  if (pwrite(device, &cmd, 2, (off_t)(config_off + PCI_COMMAND)) != 2) die("config write: %s", strerror(errno));

  struct vfio_region_info bar = {.argsz = sizeof bar, .index = VFIO_PCI_BAR0_REGION_INDEX};
  if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &bar)) die("BAR0 region info: %s", strerror(errno));
  if (bar.size < 0x100) die("BAR0 is %" PRIu64 " bytes, not edu's 1 MiB", (uint64_t)bar.size);
  bar0_off = bar.offset;
  if (bar.flags & VFIO_REGION_INFO_FLAG_MMAP) {
    void *m = mmap(NULL, bar.size, PROT_READ | PROT_WRITE, MAP_SHARED, device, (off_t)bar.offset);
    if (m == MAP_FAILED) die("mmap BAR0: %s", strerror(errno));
    bar0 = m;
  }
  uint32_t id = rd32(EDU_ID);
  if (id != 0x010000ed) die("BAR0 id register reads 0x%x, not edu's 0x010000ed", id);
  wr32(EDU_LIVENESS, 0x12345678);
  if (rd32(EDU_LIVENESS) != ~0x12345678u) die("liveness register does not invert");
}

static void map_buffer(void) {
  buf = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (buf == MAP_FAILED) die("mmap buffer: %s", strerror(errno));
  if (mlock(buf, 3 * PAGE)) die("mlock: %s", strerror(errno));
  if (noiommu) {
    // No translation: the device needs the data page's physical address, and it must fit edu's 28-bit mask.
    data_iova = phys_of(buf + PAGE);
    if (data_iova + PAGE > EDU_DMA_LIMIT)
      die("the buffer is at physical 0x%" PRIx64 ", above edu's 28-bit DMA mask (use less guest RAM)", data_iova);
    printf("vfio-edu: no IOMMU: data page at physical 0x%" PRIx64 "\n", data_iova);
    return;
  }
  struct vfio_iommu_type1_dma_map m = {
      .argsz = sizeof m,
      .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
      .vaddr = (uintptr_t)buf,
      .iova = IOVA_BASE,
      .size = 3 * PAGE,
  };
  if (ioctl(container, VFIO_IOMMU_MAP_DMA, &m)) die("VFIO_IOMMU_MAP_DMA iova 0x%llx: %s", IOVA_BASE, strerror(errno));
  data_iova = IOVA_BASE + PAGE;
  printf("vfio-edu: mapped 3 pages at iova 0x%llx (data page at 0x%" PRIx64 ")\n", IOVA_BASE, data_iova);
}

static uint8_t pattern(uint32_t i, uint32_t seed) { return (uint8_t)(i * 7 + seed * 31 + 3); }

/** Bytes of the buffer that differ from `want` outside [lo, hi) of the data page; the first one in *first. */
static uint32_t changed_outside(uint8_t want, uint32_t lo, uint32_t hi, long *first) {
  uint32_t n = 0;
  *first = -1;
  for (uint32_t i = 0; i < 3 * PAGE; i++) {
    if (i >= PAGE + lo && i < PAGE + hi) continue;
    if (buf[i] != want && !n++) *first = (long)i - PAGE;
  }
  return n;
}

/** RAM→edu of `count` pattern bytes, then edu→RAM into a cleared data page at `off`; checks every byte. */
static void round_trip(uint32_t count, uint32_t off, uint32_t seed) {
  memset(buf, GUARD, 3 * PAGE);
  for (uint32_t i = 0; i < count; i++) buf[PAGE + i] = pattern(i, seed);
  dma(data_iova, EDU_BUFFER, count, 0);
  memset(buf, GUARD, 3 * PAGE);
  dma(EDU_BUFFER, data_iova + off, count, 1);
  for (uint32_t i = 0; i < count; i++)
    if (buf[PAGE + off + i] != pattern(i, seed))
      die("byte %u of the edu→RAM DMA is 0x%02x, want 0x%02x", i, buf[PAGE + off + i], pattern(i, seed));
  long first;
  uint32_t n = changed_outside(GUARD, off, off + count, &first);
  if (n) die("the DMA changed %u bytes outside its range (first at data page offset %ld)", n, first);
}

int main(int argc, char **argv) {
  const char *type = "auto", *irq = "auto";
  uint64_t count = 1024;
  int bind = 0, unsafe_interrupts = 0, opt;
  while ((opt = getopt(argc, argv, "d:t:i:n:BUh")) != -1) {
    switch (opt) {
      case 'd': bdf_arg = optarg; break;
      case 't': type = optarg; break;
      case 'i': irq = optarg; break;
      case 'n': count = strtoull(optarg, NULL, 0); break;
      case 'B': bind = 1; break;
      case 'U': unsafe_interrupts = 1; break;
      default:
        fprintf(stderr,
                "usage: vfio-edu [-d BDF] [-t auto|type1|noiommu] [-i auto|msi|intx] [-n BYTES] [-B] [-U] "
                "ok|unmapped\n");
        return opt == 'h' ? 0 : 2;
    }
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  const char *mode = optind == argc - 1 ? argv[optind] : "";
  if (strcmp(mode, "ok") && strcmp(mode, "unmapped")) {
    printf("vfio-edu error bad arguments: give the mode, ok or unmapped\n");
    return 2;
  }
  if (strcmp(type, "auto") && strcmp(type, "type1") && strcmp(type, "noiommu")) {
    printf("vfio-edu error bad arguments: -t %s: auto, type1 or noiommu\n", type);
    return 2;
  }
  if (strcmp(irq, "auto") && strcmp(irq, "msi") && strcmp(irq, "intx")) {
    printf("vfio-edu error bad arguments: -i %s: auto, msi or intx\n", irq);
    return 2;
  }
  // edu's 4 KiB buffer: a DMA ending exactly at its end (or of 0 bytes) aborts QEMU 7.2, so at most 4095 bytes;
  // the data page holds the edu→RAM copy at an offset of 64.
  if (count < 1 || count > PAGE - 64) {
    printf("vfio-edu error bad arguments: -n %" PRIu64 ": 1 to %d bytes\n", count, PAGE - 64);
    return 2;
  }
  const char *no_unmapped =
      "unmapped mode needs an IOMMU (type1): without one an IOVA is a physical address, nothing is unmapped";
  if (!strcmp(mode, "unmapped") && !strcmp(type, "noiommu")) die("%s", no_unmapped);
  find_device();
  if (bind) bind_vfio();
  open_vfio(type, unsafe_interrupts);
  if (!strcmp(mode, "unmapped") && noiommu) die("%s", no_unmapped);
  map_buffer();
  setup_irq(irq);
  const char *irqname = use_intx ? "intx" : "msi";

  if (!strcmp(mode, "ok")) {
    round_trip((uint32_t)count, 64, 1);
    printf("vfio-edu ok dma bytes=%" PRIu64 " iova=0x%" PRIx64 " iommu=%s irq=%s irqs=2\n", count, data_iova,
           noiommu ? "noiommu" : "type1", irqname);
    return 0;
  }

  // unmapped: load edu's buffer through the mapping, then have edu write it to an IOVA nobody mapped.
  memset(buf, GUARD, 3 * PAGE);
  for (uint32_t i = 0; i < count; i++) buf[PAGE + i] = pattern(i, 2);
  dma(data_iova, EDU_BUFFER, (uint32_t)count, 0);
  memset(buf, GUARD, 3 * PAGE);
  uint32_t status = dma(EDU_BUFFER, IOVA_UNMAPPED, (uint32_t)count, 1);
  long first;
  uint32_t n = changed_outside(GUARD, 0, 0, &first);
  if (n) die("the DMA to unmapped iova 0x%llx changed %u bytes of the buffer (first at data page offset %ld)",
             IOVA_UNMAPPED, n, first);
  printf("vfio-edu: DMA to unmapped iova 0x%llx completed for the device (irq status 0x%x); buffer and guards "
         "unchanged\n",
         IOVA_UNMAPPED, status);
  // The device and the mapping still work after the fault.
  round_trip((uint32_t)count, 64, 3);
  printf("vfio-edu ok unmapped iova=0x%llx bytes=%" PRIu64 " buffer-unchanged=1 dma-status=done irq=%s "
         "after=ok\n",
         IOVA_UNMAPPED, count, irqname);
  return 0;
}
