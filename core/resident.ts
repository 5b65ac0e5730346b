// The process's own start-up pages. A node process maps its executable and libraries privately and
// read-only; what start-up touched (the module loader, the config checks, VFIO set-up, V8's
// compiler for code that ran once) stays mapped for the process's life and counts in its RSS,
// though the VM never runs it again. Dropping those mappings (madvise MADV_DONTNEED) leaves the
// pages in the page cache and unmaps them from this process; whatever the VM still runs comes back
// on first touch, from the page cache. Only read-only private file mappings with no private
// (copy-on-write) pages are dropped: for them DONTNEED cannot lose data, and everything else —
// guest RAM, heap, relocated data, device BARs, memfds — is left alone. The list is read and acted
// on in one synchronous stretch, and a node process does not unmap its executable or libraries (no
// dlclose), so an address read from smaps still holds the same file when it is dropped.
import { readFileSync } from 'node:fs';
import { MADV_DONTNEED, native } from './native.js';

export interface Mapping {
  start: bigint;
  end: bigint;
  perms: string;
  path: string;
  rssKiB: number;
  anonymousKiB: number;
}

/** The mappings of /proc/<pid>/smaps, with the fields this module needs. */
export function parseSmaps(text: string): Mapping[] {
  const out: Mapping[] = [];
  let cur: Mapping | undefined;
  for (const line of text.split('\n')) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (head) {
      cur = {
        start: BigInt(`0x${head[1]}`),
        end: BigInt(`0x${head[2]}`),
        perms: head[3]!,
        path: head[4]!,
        rssKiB: 0,
        anonymousKiB: 0,
      };
      out.push(cur);
      continue;
    }
    const field = /^(Rss|Anonymous):\s+(\d+) kB/.exec(line);
    if (field && cur) cur[field[1] === 'Rss' ? 'rssKiB' : 'anonymousKiB'] = Number(field[2]);
  }
  return out;
}

/** Whether dropping `m`'s pages can only unmap clean file pages (see the top of this file). */
export function droppable(m: Mapping): boolean {
  return (
    m.perms[1] === '-' && // not writable
    m.perms[3] === 'p' && // private
    m.anonymousKiB === 0 && // no copy-on-write page of its own
    m.rssKiB > 0 &&
    m.path.startsWith('/') &&
    !m.path.startsWith('/dev/') &&
    !m.path.startsWith('/memfd:') &&
    !m.path.endsWith(' (deleted)')
  );
}

/**
 * Unmaps the clean file pages of this process's read-only private mappings (its executable and
 * libraries). Returns the KiB that were resident in them. Best effort, never throws: without a
 * readable /proc/self/smaps nothing is dropped, and a mapping the kernel refuses (e.g. locked) is
 * skipped.
 */
export function dropCleanFilePages(): number {
  let kib = 0;
  let smaps: string, n: ReturnType<typeof native>;
  try {
    smaps = readFileSync('/proc/self/smaps', 'utf8');
    n = native();
  } catch {
    return 0;
  }
  for (const m of parseSmaps(smaps)) {
    if (!droppable(m)) continue;
    try {
      n.madvise(m.start, m.end - m.start, MADV_DONTNEED);
      kib += m.rssKiB;
    } catch {
      // e.g. EINVAL on a locked mapping: leave it
    }
  }
  return kib;
}
