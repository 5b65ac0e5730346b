// KVM memslots as a memory listener, the way QEMU's kvm_region_add/del work: every RAM-like
// section (guest RAM, a VFIO BAR mmap) becomes a slot; a section's partial pages at either
// end stay trapped (KVM maps whole pages only), MMIO sections are never slots.
import { native, type Native } from '../native.js';
import type { MemoryListener, Section } from '../memory/index.js';

const PAGE = 4096;

interface Slot {
  slot: number;
  gpa: number;
  size: number;
  hva: bigint;
  readonly: boolean;
  /** Guest RAM (not a device's mmap): what dirty logging tracks for migration. */
  ram?: boolean;
}

export class KvmMemslots implements MemoryListener {
  readonly name = 'kvm-memslots';
  readonly priority = 10;
  private readonly bySection = new Map<string, Slot>();
  private readonly free: number[] = [];
  private nextSlot = 0;

  /** `setRegion` is KVM_SET_USER_MEMORY_REGION (replaceable for the bookkeeping's unit tests). */
  constructor(
    private readonly vmFd: number,
    readonly maxSlots: number,
    private readonly readonlyMem: boolean,
    private readonly setRegion: Native['kvmSetUserMemoryRegion'] = (fd, r) => native().kvmSetUserMemoryRegion(fd, r),
  ) {}

  private static key(s: Section): string {
    return `${s.addr}:${s.size}`;
  }

  regionAdd(s: Section): void {
    const r = s.region;
    if (r.kind !== 'ram' && r.kind !== 'ramDevice') return;
    const start = Math.ceil(s.addr / PAGE) * PAGE;
    const end = Math.floor((s.addr + s.size) / PAGE) * PAGE;
    if (end <= start) return;
    const hva = r.backing!.hostAddr + BigInt(s.offsetInRegion + (start - s.addr));
    if (hva % BigInt(PAGE) !== 0n) return; // not congruent with a host page: leave it trapped
    if (s.readonly && !this.readonlyMem) return; // trapped ROM: reads are emulated
    // The number is only taken once KVM accepted the slot: a refused placement (EINVAL for a
    // guest-physical address beyond what KVM maps) must not use one up.
    const slot = this.free.length ? this.free[this.free.length - 1]! : this.nextSlot;
    if (slot >= this.maxSlots)
      throw new Error(`out of KVM memslots (${this.maxSlots}) mapping ${r.name} at 0x${start.toString(16)}`);
    const ram = r.kind === 'ram' && !s.readonly;
    this.setRegion(this.vmFd, {
      slot,
      flags: s.readonly ? native().constants.KVM_MEM_READONLY : this.dirtyFlag(ram),
      guestPhysAddr: start,
      memorySize: end - start,
      userspaceAddr: hva,
    });
    if (this.free.length) this.free.pop();
    else this.nextSlot++;
    this.bySection.set(KvmMemslots.key(s), { slot, gpa: start, size: end - start, hva, readonly: s.readonly, ram });
  }

  regionDel(s: Section): void {
    const k = KvmMemslots.key(s);
    const m = this.bySection.get(k);
    if (!m) return;
    this.bySection.delete(k);
    this.setRegion(this.vmFd, { slot: m.slot, flags: 0, guestPhysAddr: m.gpa, memorySize: 0, userspaceAddr: m.hva });
    this.free.push(m.slot); // not reused if KVM refused the delete: that slot is still live there
  }

  /** Slot numbers ever handed out and not free: equals slots().length unless KVM refused a delete. */
  get numbersInUse(): number {
    return this.nextSlot - this.free.length;
  }

  // --- dirty logging (live migration) ---------------------------------------------------------
  private logging = false;
  /**
   * KVM's manual dirty-log protection is on (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2): KVM_GET_DIRTY_LOG
   * leaves the bits set and the pages writable, and KVM_CLEAR_DIRTY_LOG clears and protects them
   * again, page by page, just before they are read (QEMU's way: no whole-slot write-protect at each
   * sync, and a page rewritten between the sync and its send is sent once, not twice).
   */
  manualDirtyLog = false;

  /** Turns manual protection on where KVM offers it (bits initially set where it has that too); false: the plain log. */
  private enableManualDirtyLog(): boolean {
    const n = native(),
      c = n.constants;
    try {
      const caps = n.kvmCheckExtension(this.vmFd, c.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
      if (!(caps & c.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)) return false;
      n.kvmEnableCap(
        this.vmFd,
        c.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        caps & (c.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | c.KVM_DIRTY_LOG_INITIALLY_SET),
      );
      return true;
    } catch {
      return false; // an old KVM, or no VM fd (tests): the plain log
    }
  }
  private dirtyFlag(ram: boolean): number {
    return this.logging && ram ? native().constants.KVM_MEM_LOG_DIRTY_PAGES : 0;
  }

  /**
   * Turns KVM's dirty log on or off for every guest-RAM slot (KVM_MEM_LOG_DIRTY_PAGES, a flags
   * change of the same slot); slots added meanwhile get it too. Throws if KVM refuses it.
   */
  setDirtyLogging(on: boolean, opts: { manual?: boolean } = {}): void {
    if (on === this.logging) return;
    // Manual protection is a VM-wide mode: set before the slots log, reset after they stop.
    if (on) this.manualDirtyLog = opts.manual !== false && this.enableManualDirtyLog();
    this.logging = on;
    const done: Slot[] = [];
    try {
      for (const m of this.bySection.values()) {
        if (!m.ram) continue;
        this.setRegion(this.vmFd, {
          slot: m.slot,
          flags: this.dirtyFlag(true),
          guestPhysAddr: m.gpa,
          memorySize: m.size,
          userspaceAddr: m.hva,
        });
        done.push(m);
      }
    } catch (e) {
      this.logging = !on;
      for (const m of done)
        this.setRegion(this.vmFd, {
          slot: m.slot,
          flags: this.dirtyFlag(true),
          guestPhysAddr: m.gpa,
          memorySize: m.size,
          userspaceAddr: m.hva,
        });
      throw e;
    } finally {
      if (!this.logging && this.manualDirtyLog) {
        this.manualDirtyLog = false;
        try {
          native().kvmEnableCap(this.vmFd, native().constants.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, 0);
        } catch {
          /* the next start sets it again */
        }
      }
    }
  }

  /** The guest-RAM slots (what the dirty log covers), with their host addresses. */
  ramSlots(): { slot: number; gpa: number; size: number; hva: bigint }[] {
    return [...this.bySection.values()]
      .filter((m) => m.ram)
      .map(({ slot, gpa, size, hva }) => ({ slot, gpa, size, hva }));
  }

  /** KVM_GET_DIRTY_LOG of one slot into `bits` (a bit per page, whole u64 words). */
  getDirtyLog(slot: number, bits: Uint32Array): void {
    native().kvmGetDirtyLog(this.vmFd, slot, new Uint8Array(bits.buffer, bits.byteOffset, bits.byteLength));
  }

  /** For each guest-RAM slot, the pages written since the last call (a bit per page). */
  dirtyPages(): { gpa: number; size: number; bitmap: Uint8Array }[] {
    return [...this.bySection.values()]
      .filter((m) => m.ram)
      .map((m) => {
        const bitmap = new Uint8Array(Math.ceil(m.size / PAGE / 64) * 8);
        native().kvmGetDirtyLog(this.vmFd, m.slot, bitmap);
        return { gpa: m.gpa, size: m.size, bitmap };
      });
  }

  /** The current slots, for tests and `info`-style queries. */
  slots(): readonly Slot[] {
    return [...this.bySection.values()].sort((a, b) => a.gpa - b.gpa);
  }
}
