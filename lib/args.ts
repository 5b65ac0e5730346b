// The library's typed operations as the command layer's (QMP's) arguments, and its serial patterns.
import { isAbsolute, resolve } from 'node:path';

/** A device for Vm.deviceAdd (QMP device_add's vfio-pci properties, typed). */
export interface DeviceAddOptions {
  driver: 'vfio-pci';
  id: string;
  host?: string;
  sysfsdev?: string;
  /** Guest slot: 5, "5", "0x5" or "05.0". */
  addr?: number | string;
  rombar?: boolean;
  /** Relative to the VM's baseDir. */
  romfile?: string;
  /** Behind the VM's vIOMMU (config "iommu"): its DMA goes where the guest's domains say. */
  iommu?: boolean;
}

/** device_add's arguments for `d`; relative paths resolve against `baseDir`. */
export function deviceAddArgs(d: DeviceAddOptions, baseDir: string): Record<string, unknown> {
  return {
    driver: d.driver,
    id: d.id,
    ...(d.host !== undefined ? { host: d.host } : {}),
    ...(d.sysfsdev !== undefined ? { sysfsdev: d.sysfsdev } : {}),
    ...(d.addr !== undefined ? { addr: d.addr } : {}),
    ...(d.rombar !== undefined ? { rombar: d.rombar } : {}),
    ...(d.romfile !== undefined ? { romfile: isAbsolute(d.romfile) ? d.romfile : resolve(baseDir, d.romfile) } : {}),
    ...(d.iommu !== undefined ? { iommu: d.iommu } : {}),
  };
}

/** A serial pattern as a RegExp that matches from the start of the text it is given each time
 *  (a string matches literally; a RegExp's g and y flags would carry state between calls). */
export function serialPattern(p: string | RegExp): RegExp {
  if (typeof p === 'string') return new RegExp(p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  return new RegExp(p.source, p.flags.replace(/[gy]/g, ''));
}

/** The last `n` lines of `text`, for error messages. */
export function lastLines(text: string, n = 10): string {
  const lines = text.replace(/\r/g, '').split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  return lines.slice(-n).join('\n');
}

/**
 * Whether a match of `re` could hold a newline anywhere but as its last character, or depends on text before the
 * offset it is searched from (a lookbehind, `^` without the m flag): such a pattern is searched again from its
 * `from` on every look. Conservative (any escape or class that might match a newline counts); waitForLine's
 * patterns (`[^\n]` runs ending in `\n`) and ordinary literal strings do not count.
 */
export function maySpanLines(re: RegExp): boolean {
  if (re.flags.includes('s')) return true;
  const src = re.source
    .replace(/\[\^(?:\\r)?\\n(?:\\r)?\]/g, '') // [^\n], [^\r\n], [^\n\r]: never a newline
    .replace(/(?:\\r\??)?\\n\)*$/, ''); // a newline as the last thing matched
  if (!re.multiline && /(?:^|[^\\[])\^/.test(src)) return true;
  return (
    /\\[nsSWDpPcux0-9]/.test(src) || // escapes that may stand for or include a newline
    /\[\^/.test(src) || // a negated class
    /\[(?:[^\]\\]|\\.)*\\.-/.test(src) || // a range starting at an escape
    /\(\?<[=!]/.test(src) // a lookbehind
  );
}

/**
 * Searches a text that grows at its end (the serial console) for `re`, from offset `from`, looking at each character
 * a bounded number of times: after a miss, the next look starts at the line that was still incomplete (a match of a
 * pattern that cannot span lines starts there or later), so a long console costs linear time, not quadratic. A
 * pattern that may span lines (maySpanLines) is searched from `from` each time.
 */
export class GrowingTextSearch {
  readonly #re: RegExp;
  readonly #from: number;
  readonly #spans: boolean;
  /** The text from #start to #seen: what the next look searches (the incomplete last line, and what came since). */
  #window = '';
  #start: number;
  #seen: number;

  constructor(re: RegExp, from: number) {
    this.#re = re;
    this.#from = this.#start = this.#seen = from;
    this.#spans = maySpanLines(re);
  }

  /** Characters the next look would search again (for tests: bounded by a line, not by the whole text). */
  get windowLength(): number {
    return this.#window.length;
  }

  /**
   * Looks again now that the text is `length` characters long; `textFrom(pos)` gives the text from `pos` to its end.
   * Returns the first match (its index an offset into the whole text), or undefined.
   */
  look(length: number, textFrom: (pos: number) => string): RegExpExecArray | undefined {
    if (this.#spans) {
      this.#window = length > this.#from ? textFrom(this.#from) : '';
      this.#start = this.#from;
    } else if (length > this.#seen) {
      this.#window += textFrom(this.#seen);
    }
    this.#seen = Math.max(this.#seen, length);
    const m = this.#re.exec(this.#window);
    if (m) {
      m.index += this.#start;
      return m;
    }
    if (!this.#spans) {
      const nl = this.#window.lastIndexOf('\n');
      if (nl >= 0) {
        this.#start += nl + 1;
        this.#window = this.#window.slice(nl + 1);
      }
    }
    return undefined;
  }
}
