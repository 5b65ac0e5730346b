// A 16550A UART (COM1 at 0x3f8, IRQ 4): enough of the register set for polled and
// interrupt-driven drivers (Linux's 8250, the test guest). Output is batched per event-loop
// turn so a guest printing byte by byte does not cost one write(2) per byte.
import { MemoryRegion } from '../core/memory/index.js';
import type { InterruptLine } from './interrupts.js';
import type { RegisterWindow } from './published-registers.js';
import type { StateReader, StateWriter } from '../core/state.js';

const IER_RDI = 0x01,
  IER_THRI = 0x02;
const IIR_NONE = 0x01,
  IIR_THRI = 0x02,
  IIR_RDI = 0x04,
  IIR_FIFO = 0xc0;
const LCR_DLAB = 0x80;
const LSR_DR = 0x01,
  LSR_THRE = 0x20,
  LSR_TEMT = 0x40;
const MCR_LOOP = 0x10;
const MSR_IDLE = 0xb0; // CTS|DSR|DCD: a cable is "connected"

export interface SerialOptions {
  /** Called with output bytes, batched. */
  output: (bytes: Uint8Array) => void;
  /** The IRQ line (level-triggered, driven by the VMM). */
  irq?: Pick<InterruptLine, 'setLevel'>;
  /**
   * Where to publish the registers whose read has no side effect, for vCPU threads to answer
   * themselves (hw/published-registers.ts): all but RBR (a FIFO pop) and IIR while it reports THRI
   * (reading clears it). LSR and MSR qualify because no error or delta bits are modelled.
   */
  registers?: RegisterWindow;
}

export class Serial16550 {
  readonly region: MemoryRegion;
  private ier = 0;
  private lcr = 0;
  private mcr = 0;
  private scr = 0;
  private fcr = 0;
  private dll = 0x0c;
  private dlm = 0;
  private thriPending = false;
  private irqLevel = false;
  private readonly rx: number[] = [];
  private out: number[] = [];
  private flushScheduled = false;
  private readonly published = [-1, -1, -1, -1, -1, -1, -1, -1];

  constructor(private readonly opts: SerialOptions) {
    // Every access publishes before it is answered (a read of RBR or IIR changes state too).
    const pub = opts.registers !== undefined;
    this.region = MemoryRegion.io('serial-16550', 8, {
      read: (off) => {
        const v = this.read(off);
        if (pub) this.publish();
        return v;
      },
      write: (off, _size, v) => {
        this.write(off, Number(v) & 0xff);
        if (pub) this.publish();
      },
    });
    if (pub) this.publish();
  }

  /** Bytes from the outside world (console input) for the guest to read. */
  input(bytes: Uint8Array): void {
    for (const b of bytes) this.rx.push(b);
    this.updateIrq();
  }

  /** What a read of each register returns now, where that read changes nothing (see SerialOptions.registers). */
  private publish(): void {
    const w = this.opts.registers;
    if (!w) return;
    const p = this.published,
      dlab = (this.lcr & LCR_DLAB) !== 0;
    p[0] = dlab ? this.dll : -1;
    p[1] = dlab ? this.dlm : this.ier;
    const iir = this.iirId();
    p[2] = iir === IIR_THRI ? -1 : iir | (this.fcr & 1 ? IIR_FIFO : 0);
    p[3] = this.lcr;
    p[4] = this.mcr;
    p[5] = LSR_THRE | LSR_TEMT | (this.rx.length ? LSR_DR : 0);
    p[6] = this.mcr & MCR_LOOP ? this.loopbackMsr() : MSR_IDLE;
    p[7] = this.scr;
    // THR out of loopback with its interrupt off (the Linux console's polled write): the byte
    // leaves at once and THRE stays set, so a THR write changes no published value. (The THRI it
    // arms shows in IIR only once enabled, and enabling it arms THRI anyway.)
    w.publish(p, !dlab && !(this.mcr & MCR_LOOP) && !(this.ier & IER_THRI) ? 1 : 0);
  }

  private read(off: number): number {
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    switch (off) {
      case 0: {
        if (dlab) return this.dll;
        const b = this.rx.shift() ?? 0;
        this.updateIrq();
        return b;
      }
      case 1:
        return dlab ? this.dlm : this.ier;
      case 2: {
        const iir = this.iirId() | (this.fcr & 1 ? IIR_FIFO : 0);
        if ((iir & 0x0f) === IIR_THRI) {
          this.thriPending = false;
          this.updateIrq();
        } // reading IIR clears THRI
        return iir;
      }
      case 3:
        return this.lcr;
      case 4:
        return this.mcr;
      case 5:
        return LSR_THRE | LSR_TEMT | (this.rx.length ? LSR_DR : 0);
      case 6:
        return this.mcr & MCR_LOOP ? this.loopbackMsr() : MSR_IDLE;
      default:
        return this.scr;
    }
  }

  private write(off: number, v: number): void {
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    switch (off) {
      case 0:
        if (dlab) {
          this.dll = v;
          return;
        }
        if (this.mcr & MCR_LOOP) this.rx.push(v);
        else this.emit(v);
        // The byte left at once: THR is empty again.
        this.thriPending = true;
        this.updateIrq();
        return;
      case 1:
        if (dlab) {
          this.dlm = v;
          return;
        }
        // Enabling THRI with an empty THR raises it at once, as real 16550s (and Linux) expect.
        if (!(this.ier & IER_THRI) && v & IER_THRI) this.thriPending = true;
        this.ier = v & 0x0f;
        this.updateIrq();
        return;
      case 2:
        this.fcr = v & 0xc9;
        if (v & 0x02) {
          this.rx.length = 0;
          this.updateIrq();
        }
        return;
      case 3:
        this.lcr = v;
        return;
      case 4:
        this.mcr = v & 0x1f;
        return;
      case 7:
        this.scr = v;
        return;
      default:
        return; // LSR/MSR are read-only
    }
  }

  // In loopback, modem outputs feed inputs: RTS→CTS, DTR→DSR, OUT1→RI, OUT2→DCD (8250 probing checks this).
  private loopbackMsr(): number {
    const m = this.mcr;
    return (m & 0x02 ? 0x10 : 0) | (m & 0x01 ? 0x20 : 0) | (m & 0x04 ? 0x40 : 0) | (m & 0x08 ? 0x80 : 0);
  }

  private iirId(): number {
    if (this.ier & IER_RDI && this.rx.length) return IIR_RDI;
    if (this.ier & IER_THRI && this.thriPending) return IIR_THRI;
    return IIR_NONE;
  }

  private updateIrq(): void {
    this.publish(); // before the interrupt that tells the guest to look
    const level = this.iirId() !== IIR_NONE;
    if (level !== this.irqLevel) {
      this.irqLevel = level;
      this.opts.irq?.setLevel(level);
    }
  }

  private emit(b: number): void {
    this.out.push(b);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
  }

  flush(): void {
    this.flushScheduled = false;
    if (!this.out.length) return;
    const bytes = Uint8Array.from(this.out);
    this.out = [];
    this.opts.output(bytes);
  }

  // --- snapshot and migration (core/state.ts's Migratable) --------------------------------------
  readonly stateId = 'serial';
  readonly stateVersion = 1;
  /** Registers and the receive FIFO; output is flushed first (the machine does). The IRQ level
   *  follows from them and is driven again on load. */
  saveState(w: StateWriter): void {
    w.u8(this.ier).u8(this.lcr).u8(this.mcr).u8(this.scr).u8(this.fcr).u8(this.dll).u8(this.dlm);
    w.bool(this.thriPending).blob(Uint8Array.from(this.rx));
  }
  loadState(r: StateReader): void {
    const regs = [...r.fixed(7, 'the registers')];
    const thri = r.bool('THRI pending');
    const rx = r.blob('the receive FIFO', 4096);
    [this.ier, this.lcr, this.mcr, this.scr, this.fcr, this.dll, this.dlm] = regs as [
      number,
      number,
      number,
      number,
      number,
      number,
      number,
    ];
    this.thriPending = thri;
    this.rx.length = 0;
    this.rx.push(...rx);
    this.irqLevel = false;
    this.updateIrq();
  }
}
