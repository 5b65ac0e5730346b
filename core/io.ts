// File I/O shared by the mechanisms and the loaders' checks.
import { readSync } from 'node:fs';

/**
 * Reads `into.length` bytes of `fd` from `position`, in as many preads as the kernel takes (a
 * device region or a file on 9p may return less than asked); stops early only at the end of the
 * file or region. Returns the bytes read.
 */
export function preadFully(fd: number, into: Uint8Array, position: number): number {
  let done = 0;
  while (done < into.length) {
    const n = readSync(fd, into, done, into.length - done, position + done);
    if (n <= 0) break;
    done += n;
  }
  return done;
}
