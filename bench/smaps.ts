// /proc/<pid>/smaps, read from outside the VMM: what the bench needs to say which memory a host pays
// for (private pages and PSS), and which mapping is guest RAM.
export interface Mapping {
  start: bigint;
  end: bigint;
  perms: string;
  path: string;
  rssKiB: number;
  pssKiB: number;
  /** Private_Clean + Private_Dirty: pages no other process shares. */
  privateKiB: number;
  anonymousKiB: number;
}

const FIELDS: Record<string, keyof Mapping> = { Rss: 'rssKiB', Pss: 'pssKiB', Anonymous: 'anonymousKiB' };

/** The mappings of /proc/<pid>/smaps, with the fields above. */
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
        pssKiB: 0,
        privateKiB: 0,
        anonymousKiB: 0,
      };
      out.push(cur);
      continue;
    }
    const field = /^(\w+):\s+(\d+) kB/.exec(line);
    if (!field || !cur) continue;
    const kib = Number(field[2]);
    if (field[1] === 'Private_Clean' || field[1] === 'Private_Dirty') cur.privateKiB += kib;
    const key = FIELDS[field[1]!];
    if (key) (cur[key] as number) = kib;
  }
  return out;
}

/** A mapping backed by no file, or by shmem (a memfd, /dev/shm, SysV): memory only RAM (or swap) holds. */
export function anonOrShmem(m: Mapping): boolean {
  return (
    !m.path.startsWith('/') ||
    m.path.startsWith('/memfd:') ||
    m.path.startsWith('/dev/shm/') ||
    m.path.startsWith('/SYSV')
  );
}
