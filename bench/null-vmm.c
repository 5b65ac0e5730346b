/* null-vmm: the smallest VMM that runs the tsvmm test guest with one device assigned through
 * VFIO, on raw KVM and VFIO ioctls — the "physical limit" column of the benchmarks (bench/).
 *
 *   null-vmm --kernel ELF [--cmdline S] [--mem MIB] [--device BDF] [--memfd] [--hugetlb] [--hugetlbfs DIR]
 *            [--touch-pages N]
 *
 * What it does, and nothing more:
 *  - KVM VM with the in-kernel irqchip and PIT (KVM_PIT_SPEAKER_DUMMY: port 0x61 stays in the
 *    kernel), one vCPU entered in 32-bit protected mode at the multiboot ELF32 entry, with a
 *    multiboot info (memory, command line) at 0x9000. Guest RAM: one anonymous mapping at
 *    GPA 0, one memslot, with MADV_HUGEPAGE as QEMU and tsvmm do (--memfd: a memfd mapped shared;
 *    --hugetlb: 2 MiB hugetlb pages, MAP_HUGETLB or MFD_HUGETLB; --hugetlbfs DIR: a file there),
 *    so each of tsvmm's RAM backings has its raw-ioctl twin.
 *  - With --device: container + group (type1v2), ONE VFIO_IOMMU_MAP_DMA of all guest RAM (its
 *    duration goes to stderr as "null-vmm: MAP_DMA bytes=N ns=T"), BAR0 mmap'd as a memslot at
 *    0xc0000000, config space of 00:01.0 forwarded to VFIO's config region (BARs and ROM
 *    replaced: BAR0 reads 0xc0000000, the others 0), MSI: when the guest sets MSI enable, one
 *    KVM MSI route (it replaces the whole routing table: the guest uses nothing else), an
 *    eventfd as irqfd, and VFIO_DEVICE_SET_IRQS on the MSI index. No KVM-VFIO device, no INTx,
 *    no MSI-X, no reset.
 *  - Port I/O: COM1 data (0x3f8, line-buffered to stdout), LSR (0x3fd: always ready), SCR
 *    (0x3ff), conf1 (0xcf8, 0xcfc-0xcff), debug exit (0xf4: exit status = value). Everything
 *    else reads as all-ones; MMIO exits read as all-ones.
 *  - --touch-pages N (a diagnostic): after each exit, read one byte of each of N distinct pages, as
 *    a VMM whose exit path touches that much memory does (the cost of a page the CPU's TLB lost).
 * Exit status: the guest's debug-exit value; 1 on a VMM error or a guest crash. */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <linux/vfio.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MB_INFO_ADDR 0x9000
#define MB_CMDLINE_ADDR 0x9100
#define BAR0_GPA 0xc0000000u
#define MSI_GSI 24

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "null-vmm: ");
  vfprintf(stderr, fmt, ap);
  if (errno) fprintf(stderr, ": %s", strerror(errno));
  fprintf(stderr, "\n");
  va_end(ap);
  exit(1);
}

static int xioctl(int fd, unsigned long req, void *arg, const char *what) {
  errno = 0;
  int r = ioctl(fd, req, arg);
  if (r < 0) die("%s", what);
  return r;
}

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* ---- state ---- */
static int vm_fd;
static uint8_t *ram;
static uint64_t ram_size;
static char line[4096];
static size_t line_len;
static uint8_t scratch;
static uint32_t cf8;
/* device */
static int dev_fd = -1;
static uint64_t cfg_off; /* offset of the config region in dev_fd */
static uint8_t msi_cap;
static int msi_efd = -1;
static int msi_on;

static void flush_line(void) {
  if (line_len) {
    ssize_t w = write(1, line, line_len);
    (void)w;
    line_len = 0;
  }
}

static uint32_t load_elf(const char *path) {
  errno = 0;
  int fd = open(path, O_RDONLY);
  if (fd < 0) die("open %s", path);
  struct stat st;
  fstat(fd, &st);
  uint8_t *img = malloc((size_t)st.st_size);
  if (read(fd, img, (size_t)st.st_size) != st.st_size) die("read %s", path);
  close(fd);
  Elf32_Ehdr *eh = (Elf32_Ehdr *)img;
  errno = 0;
  if (memcmp(eh->e_ident, ELFMAG, SELFMAG) || eh->e_ident[EI_CLASS] != ELFCLASS32) die("%s is not ELF32", path);
  for (int i = 0; i < eh->e_phnum; i++) {
    Elf32_Phdr *ph = (Elf32_Phdr *)(img + eh->e_phoff + i * eh->e_phentsize);
    if (ph->p_type != PT_LOAD) continue;
    if ((uint64_t)ph->p_paddr + ph->p_memsz > ram_size) die("%s does not fit in RAM", path);
    memcpy(ram + ph->p_paddr, img + ph->p_offset, ph->p_filesz);
    memset(ram + ph->p_paddr + ph->p_filesz, 0, ph->p_memsz - ph->p_filesz);
  }
  uint32_t entry = eh->e_entry;
  free(img);
  return entry;
}

/* ---- VFIO ---- */
static void cfg_rw(int write, uint32_t off, void *buf, size_t n) {
  ssize_t r = write ? pwrite(dev_fd, buf, n, (off_t)(cfg_off + off)) : pread(dev_fd, buf, n, (off_t)(cfg_off + off));
  if (r != (ssize_t)n && !write) memset(buf, 0xff, n);
}

static void setup_device(const char *bdf) {
  char p[256], link[256];
  snprintf(p, sizeof p, "/sys/bus/pci/devices/%s/iommu_group", bdf);
  errno = 0;
  ssize_t n = readlink(p, link, sizeof link - 1);
  if (n < 0) die("readlink %s", p);
  link[n] = 0;
  const char *g = strrchr(link, '/') + 1;
  snprintf(p, sizeof p, "/dev/vfio/%s", g);
  int container = open("/dev/vfio/vfio", O_RDWR);
  if (container < 0) die("open /dev/vfio/vfio");
  int group = open(p, O_RDWR);
  if (group < 0) die("open %s", p);
  struct vfio_group_status gs = {.argsz = sizeof gs};
  xioctl(group, VFIO_GROUP_GET_STATUS, &gs, "VFIO_GROUP_GET_STATUS");
  errno = 0;
  if (!(gs.flags & VFIO_GROUP_FLAGS_VIABLE)) die("group %s is not viable", g);
  xioctl(group, VFIO_GROUP_SET_CONTAINER, &container, "VFIO_GROUP_SET_CONTAINER");
  if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0) die("VFIO_SET_IOMMU");

  struct vfio_iommu_type1_dma_map map = {.argsz = sizeof map, .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                                         .vaddr = (uint64_t)(uintptr_t)ram, .iova = 0, .size = ram_size};
  uint64_t t0 = now_ns();
  xioctl(container, VFIO_IOMMU_MAP_DMA, &map, "VFIO_IOMMU_MAP_DMA");
  fprintf(stderr, "null-vmm: MAP_DMA bytes=%llu ns=%llu\n", (unsigned long long)ram_size, (unsigned long long)(now_ns() - t0));

  dev_fd = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, bdf);
  if (dev_fd < 0) die("VFIO_GROUP_GET_DEVICE_FD %s", bdf);
  struct vfio_region_info ri = {.argsz = sizeof ri, .index = VFIO_PCI_CONFIG_REGION_INDEX};
  xioctl(dev_fd, VFIO_DEVICE_GET_REGION_INFO, &ri, "VFIO_DEVICE_GET_REGION_INFO(config)");
  cfg_off = ri.offset;
  struct vfio_region_info bar = {.argsz = sizeof bar, .index = VFIO_PCI_BAR0_REGION_INDEX};
  xioctl(dev_fd, VFIO_DEVICE_GET_REGION_INFO, &bar, "VFIO_DEVICE_GET_REGION_INFO(BAR0)");
  errno = 0;
  if (!(bar.flags & VFIO_REGION_INFO_FLAG_MMAP) || bar.size < 4096) die("BAR0 cannot be mmap'd");
  void *b = mmap(0, bar.size, PROT_READ | PROT_WRITE, MAP_SHARED, dev_fd, (off_t)bar.offset);
  if (b == MAP_FAILED) die("mmap BAR0");
  struct kvm_userspace_memory_region slot = {.slot = 1, .guest_phys_addr = BAR0_GPA, .memory_size = bar.size,
                                             .userspace_addr = (uint64_t)(uintptr_t)b};
  xioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &slot, "KVM_SET_USER_MEMORY_REGION(BAR0)");

  /* Find the MSI capability. */
  uint8_t status[2], ptr;
  cfg_rw(0, 0x06, status, 2);
  if (status[0] & 0x10) {
    cfg_rw(0, 0x34, &ptr, 1);
    for (int i = 0; ptr && i < 48; i++) {
      uint8_t hdr[2];
      cfg_rw(0, ptr & 0xfc, hdr, 2);
      if (hdr[0] == 0x05) {
        msi_cap = ptr & 0xfc;
        break;
      }
      ptr = hdr[1];
    }
  }
}

/* MSI control as the guest wrote it: VFIO's virtual config space clears the enable bit on read
 * back until MSI is enabled through VFIO_DEVICE_SET_IRQS. */
static void msi_update(uint16_t ctrl) {
  int on = ctrl & 1;
  if (on == msi_on) return;
  msi_on = on;
  char buf[sizeof(struct vfio_irq_set) + sizeof(int32_t)];
  struct vfio_irq_set *s = (struct vfio_irq_set *)buf;
  if (!on) {
    *s = (struct vfio_irq_set){.argsz = sizeof *s, .flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                               .index = VFIO_PCI_MSI_IRQ_INDEX, .start = 0, .count = 0};
    ioctl(dev_fd, VFIO_DEVICE_SET_IRQS, s);
    return;
  }
  uint32_t lo, hi = 0;
  uint16_t data;
  int is64 = ctrl & 0x80;
  cfg_rw(0, msi_cap + 4, &lo, 4);
  if (is64) cfg_rw(0, msi_cap + 8, &hi, 4);
  cfg_rw(0, msi_cap + (is64 ? 12 : 8), &data, 2);
  struct {
    struct kvm_irq_routing r;
    struct kvm_irq_routing_entry e[1];
  } rt;
  memset(&rt, 0, sizeof rt);
  rt.r.nr = 1;
  rt.e[0].gsi = MSI_GSI;
  rt.e[0].type = KVM_IRQ_ROUTING_MSI;
  rt.e[0].u.msi.address_lo = lo;
  rt.e[0].u.msi.address_hi = hi;
  rt.e[0].u.msi.data = data;
  xioctl(vm_fd, KVM_SET_GSI_ROUTING, &rt, "KVM_SET_GSI_ROUTING");
  if (msi_efd < 0) {
    msi_efd = eventfd(0, EFD_CLOEXEC);
    struct kvm_irqfd irqfd = {.fd = (uint32_t)msi_efd, .gsi = MSI_GSI};
    xioctl(vm_fd, KVM_IRQFD, &irqfd, "KVM_IRQFD");
  }
  *s = (struct vfio_irq_set){.argsz = sizeof buf, .flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                             .index = VFIO_PCI_MSI_IRQ_INDEX, .start = 0, .count = 1};
  memcpy(s->data, &msi_efd, sizeof(int32_t));
  xioctl(dev_fd, VFIO_DEVICE_SET_IRQS, s, "VFIO_DEVICE_SET_IRQS(MSI)");
  if (getenv("NULL_VMM_DEBUG")) fprintf(stderr, "null-vmm: MSI on: cap 0x%x addr 0x%x:%08x data 0x%x gsi %d efd %d\n", msi_cap, hi, lo, data, MSI_GSI, msi_efd);
}

/* conf1 data port access: only 00:01.0 exists (when a device is assigned). */
static void conf_data(int write, uint16_t port, uint8_t *data, int size) {
  uint32_t bdf = (cf8 >> 8) & 0xffff, off = (cf8 & 0xfc) + (port - 0xcfc);
  if (!(cf8 & 0x80000000u) || dev_fd < 0 || bdf != (1 << 3)) {
    if (!write) memset(data, 0xff, (size_t)size);
    return;
  }
  if (off >= 0x10 && off < 0x28) { /* BARs: BAR0 at a fixed address, the rest absent */
    if (!write) {
      uint32_t v = off < 0x14 ? BAR0_GPA : 0;
      memcpy(data, (uint8_t *)&v + (off & 3), (size_t)size);
    }
    return;
  }
  if (off >= 0x30 && off < 0x34) { /* no ROM */
    if (!write) memset(data, 0, (size_t)size);
    return;
  }
  if (write && msi_cap && off < msi_cap + 4u && off + (uint32_t)size > msi_cap + 2u) {
    uint8_t dw[4];
    cfg_rw(0, msi_cap, dw, 4);
    cfg_rw(1, off, data, (size_t)size);
    memcpy(dw + (off - msi_cap), data, (size_t)size);
    msi_update((uint16_t)(dw[2] | dw[3] << 8));
    return;
  }
  cfg_rw(write, off, data, (size_t)size);
}

/* ---- vCPU ---- */
static int io(struct kvm_run *run) {
  uint8_t *data = (uint8_t *)run + run->io.data_offset;
  int out = run->io.direction == KVM_EXIT_IO_OUT;
  uint16_t port = run->io.port;
  for (uint32_t i = 0; i < run->io.count; i++, data += run->io.size) {
    if (port == 0xf4 && out) {
      flush_line();
      uint32_t v = 0;
      memcpy(&v, data, run->io.size);
      return (int)(v & 0xff) + 1;
    } else if (port == 0x3f8 && out) {
      line[line_len++] = (char)data[0];
      if (data[0] == '\n' || line_len == sizeof line - 8) flush_line();
    } else if (port == 0x3fd && !out) {
      data[0] = 0x60;
    } else if (port == 0x3ff) {
      if (out) scratch = data[0];
      else data[0] = scratch;
    } else if (port == 0xcf8 && run->io.size == 4) {
      if (out) memcpy(&cf8, data, 4);
      else memcpy(data, &cf8, 4);
    } else if (port >= 0xcfc && port <= 0xcff) {
      conf_data(out, port, data, run->io.size);
    } else if (!out) {
      memset(data, 0xff, run->io.size);
    }
  }
  return 0;
}

int main(int argc, char **argv) {
  const char *kernel = 0, *cmdline = "", *device = 0;
  uint64_t mem_mib = 256;
  int use_memfd = 0, hugetlb = 0;
  const char *hugetlbfs = 0;
  size_t touch_pages = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--kernel") && i + 1 < argc) kernel = argv[++i];
    else if (!strcmp(argv[i], "--cmdline") && i + 1 < argc) cmdline = argv[++i];
    else if (!strcmp(argv[i], "--mem") && i + 1 < argc) mem_mib = strtoull(argv[++i], 0, 0);
    else if (!strcmp(argv[i], "--device") && i + 1 < argc) device = argv[++i];
    else if (!strcmp(argv[i], "--memfd")) use_memfd = 1;
    else if (!strcmp(argv[i], "--hugetlb")) hugetlb = 1;
    else if (!strcmp(argv[i], "--hugetlbfs") && i + 1 < argc) hugetlbfs = argv[++i];
    else if (!strcmp(argv[i], "--touch-pages") && i + 1 < argc) touch_pages = strtoull(argv[++i], 0, 0);
    else {
      fprintf(stderr, "usage: null-vmm --kernel ELF [--cmdline S] [--mem MIB] [--device BDF] [--memfd] [--hugetlb] [--hugetlbfs DIR] [--touch-pages N]\n");
      return 2;
    }
  }
  if (!kernel || mem_mib < 16 || mem_mib > 3072) {
    fprintf(stderr, "null-vmm: --kernel is required; --mem must be 16..3072\n");
    return 2;
  }
  ram_size = mem_mib << 20;

  errno = 0;
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) die("open /dev/kvm");
  vm_fd = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm_fd < 0) die("KVM_CREATE_VM");
  if (ioctl(vm_fd, KVM_SET_TSS_ADDR, 0xfffbd000ul) < 0) die("KVM_SET_TSS_ADDR");
  uint64_t idmap = 0xfffbc000ul;
  ioctl(vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &idmap); /* VMX only; harmless elsewhere */
  if (ioctl(vm_fd, KVM_CREATE_IRQCHIP, 0) < 0) die("KVM_CREATE_IRQCHIP");
  struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
  xioctl(vm_fd, KVM_CREATE_PIT2, &pit, "KVM_CREATE_PIT2");

  if (hugetlbfs) { /* a file on a hugetlbfs mount, unlinked (as QEMU's memory-backend-file and tsvmm) */
    char path[4096];
    snprintf(path, sizeof path, "%s/null-vmm-XXXXXX", hugetlbfs);
    int f = mkstemp(path);
    if (f < 0 || unlink(path) < 0 || ftruncate(f, (off_t)ram_size) < 0) die("hugetlbfs file for guest RAM");
    ram = mmap(0, ram_size, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
  } else if (use_memfd) { /* like tsvmm's memfd backing: shmem (or hugetlb), shared mapping */
    int mfd = memfd_create("null-vmm-ram", MFD_CLOEXEC | (hugetlb ? MFD_HUGETLB | (21 << 26) /* MFD_HUGE_2MB */ : 0));
    if (mfd < 0 || ftruncate(mfd, (off_t)ram_size) < 0) die("memfd for guest RAM");
    ram = mmap(0, ram_size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
  } else
    ram = mmap(0, ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (hugetlb ? MAP_HUGETLB | (21 << MAP_HUGE_SHIFT) : 0), -1, 0);
  if (ram == MAP_FAILED) die("mmap guest RAM");
  if (!hugetlb && !hugetlbfs) madvise(ram, ram_size, MADV_HUGEPAGE); /* ignored where THP is off */
  struct kvm_userspace_memory_region slot = {.slot = 0, .guest_phys_addr = 0, .memory_size = ram_size,
                                             .userspace_addr = (uint64_t)(uintptr_t)ram};
  xioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &slot, "KVM_SET_USER_MEMORY_REGION(RAM)");
  if (device) setup_device(device);

  uint32_t entry = load_elf(kernel);
  /* multiboot info: flags MEM | CMDLINE */
  uint32_t mbi[5] = {0x1 | 0x4, 639, (uint32_t)((ram_size >> 10) - 1024), 0, MB_CMDLINE_ADDR};
  memcpy(ram + MB_INFO_ADDR, mbi, sizeof mbi);
  strncpy((char *)ram + MB_CMDLINE_ADDR, cmdline, 0xe00);

  int vcpu = ioctl(vm_fd, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) die("KVM_CREATE_VCPU");
  int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  struct kvm_run *run = mmap(0, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED) die("mmap kvm_run");
  struct {
    struct kvm_cpuid2 c;
    struct kvm_cpuid_entry2 e[256];
  } cpuid = {.c.nent = 256};
  xioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid, "KVM_GET_SUPPORTED_CPUID");
  xioctl(vcpu, KVM_SET_CPUID2, &cpuid, "KVM_SET_CPUID2");

  struct kvm_sregs sr;
  xioctl(vcpu, KVM_GET_SREGS, &sr, "KVM_GET_SREGS");
  struct kvm_segment code = {.base = 0, .limit = 0xffffffff, .selector = 0x08, .type = 11, .present = 1, .dpl = 0,
                             .db = 1, .s = 1, .l = 0, .g = 1};
  struct kvm_segment dat = code;
  dat.selector = 0x10, dat.type = 3;
  sr.cs = code;
  sr.ds = sr.es = sr.fs = sr.gs = sr.ss = dat;
  sr.cr0 = (sr.cr0 | 1) & ~0x80000000ull;
  xioctl(vcpu, KVM_SET_SREGS, &sr, "KVM_SET_SREGS");
  struct kvm_regs r = {.rip = entry, .rax = 0x2badb002, .rbx = MB_INFO_ADDR, .rflags = 2};
  xioctl(vcpu, KVM_SET_REGS, &r, "KVM_SET_REGS");

  volatile uint8_t *touch = 0;
  if (touch_pages) {
    touch = mmap(0, touch_pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (touch == MAP_FAILED) die("mmap (--touch-pages)");
  }
  for (;;) {
    for (size_t i = 0; i < touch_pages; i++) (void)touch[i * 4096];
    if (ioctl(vcpu, KVM_RUN, 0) < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      die("KVM_RUN");
    }
    switch (run->exit_reason) {
    case KVM_EXIT_IO: {
      int rc = io(run);
      if (rc) return rc - 1;
      break;
    }
    case KVM_EXIT_MMIO:
      if (!run->mmio.is_write) memset(run->mmio.data, 0xff, sizeof run->mmio.data);
      break;
    case KVM_EXIT_HLT:
      flush_line();
      return 0;
    default:
      flush_line();
      errno = 0;
      die("unexpected exit reason %u (shutdown 8, internal error 17, fail entry 9)", run->exit_reason);
    }
  }
}
