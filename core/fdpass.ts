// Fd passing between a privileged manager and an unprivileged VMM (libvirt's model): the
// manager opens what needs privilege and sends the fds over a UNIX socket with SCM_RIGHTS,
// with a JSON description of each. The VMM checks every fd is what the description and its
// own config say before using it: a wrong fd is refused, never trusted.
import { TsvmmError, type TsvmmErrorOptions } from './errors.js';
import { closeSync, fstatSync, readlinkSync, realpathSync } from 'node:fs';
import { native } from './native.js';

export type PassedFdKind = 'kvm' | 'vfio-group' | 'iommufd' | 'vfio-cdev';
/** group: of a vfio-group fd; device: the BDF or mdev UUID of a vfio-cdev fd. */
export interface PassedFdInfo {
  name: string;
  kind: PassedFdKind;
  group?: number;
  device?: string;
}
export interface PassedFd extends PassedFdInfo {
  fd: number;
}

/** Which passed fd: by name, or by kind (and group / device for VFIO fds). */
export type PassedFdQuery = string | { kind: PassedFdKind; group?: number; device?: string };

/**
 * The one owner of the fds a manager passed (at start, or at run time before a device_add): each
 * fd is held here until something takes it (take() transfers ownership: the taker closes it,
 * even when what it does with it fails), and close() closes whatever no one took.
 */
export class PassedFds {
  private readonly held: PassedFd[];

  constructor(fds: Iterable<PassedFd> = []) {
    this.held = [...fds];
  }

  /** What is still held (descriptions and fds; the fds stay owned here). */
  get list(): readonly PassedFd[] {
    return this.held;
  }

  find(q: PassedFdQuery): PassedFd | undefined {
    return this.held.find((p) =>
      typeof q === 'string'
        ? p.name === q
        : p.kind === q.kind &&
          (q.group === undefined || p.group === q.group) &&
          (q.device === undefined || p.device === q.device),
    );
  }

  has(q: PassedFdQuery): boolean {
    return this.find(q) !== undefined;
  }

  /** Hands the fd over: it is the caller's from now on (undefined when none matches). */
  take(q: PassedFdQuery): number | undefined {
    const p = this.find(q);
    if (!p) return undefined;
    this.held.splice(this.held.indexOf(p), 1);
    return p.fd;
  }

  /** Holds more fds (passed at run time). */
  add(fds: Iterable<PassedFd>): void {
    for (const p of fds) this.held.push(p);
  }

  /** Closes the given fds that are still held (no one took them: a failed hot-plug). */
  closeUntaken(fds: Iterable<number>): void {
    const drop = new Set(fds);
    for (const p of this.held.filter((x) => drop.has(x.fd))) {
      this.held.splice(this.held.indexOf(p), 1);
      closeSync(p.fd);
    }
  }

  /** Closes every fd no one took. */
  close(): void {
    for (const p of this.held.splice(0)) closeSync(p.fd);
  }
}

export class FdPassError extends TsvmmError {
  constructor(message: string, opts?: TsvmmErrorOptions) {
    super('ERR_FD_PASSING', message, opts);
  }
}

const MAX_FDS = 64;
const KVM_MAJOR = 10,
  KVM_MINOR = 232; // misc device 10:232

/** Manager side: sends the fds and their description in one message. */
export function sendPassedFds(socketFd: number, fds: PassedFd[]): void {
  if (fds.length > MAX_FDS) throw new FdPassError(`too many fds to pass (${fds.length} > ${MAX_FDS})`);
  const info: PassedFdInfo[] = fds.map(({ name, kind, group, device }) => ({
    name,
    kind,
    ...(group !== undefined ? { group } : {}),
    ...(device !== undefined ? { device } : {}),
  }));
  native().sendFds(
    socketFd,
    Buffer.from(JSON.stringify({ tsvmm: 1, fds: info })),
    fds.map((f) => f.fd),
  );
}

/** VMM side: receives the fds, checks each is what it claims to be, closes them all on any error. */
export function receivePassedFds(socketFd: number): PassedFd[] {
  const msg = native().recvFds(socketFd, 64 * 1024, MAX_FDS);
  const fds = msg.fds;
  try {
    if (msg.truncated) throw new FdPassError('the manager sent more fds than tsvmm accepts (message truncated)');
    if (msg.data.length === 0) throw new FdPassError('the manager closed the fd socket before sending anything');
    let parsed: { tsvmm?: number; fds?: PassedFdInfo[] };
    try {
      parsed = JSON.parse(Buffer.from(msg.data).toString('utf8'));
    } catch {
      throw new FdPassError('the fd socket carried malformed JSON');
    }
    if (parsed.tsvmm !== 1 || !Array.isArray(parsed.fds))
      throw new FdPassError('the fd socket message is not a tsvmm fd description');
    if (parsed.fds.length !== fds.length)
      throw new FdPassError(`the manager described ${parsed.fds.length} fds but sent ${fds.length}`);
    const out = parsed.fds.map((d, i) => ({ ...d, fd: fds[i]! }));
    for (const p of out) identify(p);
    return out;
  } catch (e) {
    for (const fd of fds) closeSync(fd);
    throw e;
  }
}

/** Checks an fd against its description (fstat and /proc/self/fd), so a wrong one is refused. */
export function identify(p: PassedFd): void {
  const st = fstatSync(p.fd);
  const where = `passed fd '${p.name}' (fd ${p.fd})`;
  if (p.kind === 'kvm') {
    if (!st.isCharacterDevice() || major(st.rdev) !== KVM_MAJOR || minor(st.rdev) !== KVM_MINOR)
      throw new FdPassError(`${where} should be /dev/kvm but is ${describeFd(p.fd)}`);
    return;
  }
  if (p.kind === 'vfio-group') {
    const target = describeFd(p.fd);
    const m = /^\/dev\/vfio\/(\d+)$/.exec(target);
    if (!st.isCharacterDevice() || !m)
      throw new FdPassError(`${where} should be a VFIO group (/dev/vfio/N) but is ${target}`);
    if (p.group !== undefined && Number(m[1]) !== p.group)
      throw new FdPassError(`${where} is VFIO group ${m[1]}, not group ${p.group}`);
    native().vfioGroupGetStatus(p.fd); // a real group answers
    return;
  }
  if (p.kind === 'iommufd') {
    const dev = st.isCharacterDevice() ? charDevSysfs(st.rdev) : undefined;
    if (!dev || !/\/misc\/iommu$/.test(dev))
      throw new FdPassError(`${where} should be /dev/iommu but is ${describeFd(p.fd)}`);
    return;
  }
  if (p.kind === 'vfio-cdev') {
    // The char device's sysfs node is <device>/vfio-dev/vfioN: that names the device it opens.
    const dev = st.isCharacterDevice() ? charDevSysfs(st.rdev) : undefined;
    const m = dev ? /\/([^/]+)\/vfio-dev\/vfio\d+$/.exec(dev) : null;
    if (!m)
      throw new FdPassError(
        `${where} should be a VFIO device cdev (/dev/vfio/devices/vfioN) but is ${describeFd(p.fd)}`,
      );
    if (p.device !== undefined && m[1] !== p.device)
      throw new FdPassError(`${where} is the cdev of ${m[1]}, not of ${p.device}`);
    p.device = m[1];
    return;
  }
  throw new FdPassError(`${where} has unknown kind ${JSON.stringify((p as PassedFdInfo).kind)}`);
}

/** /sys/dev/char/MAJ:MIN resolved: the sysfs device node of a character device. */
function charDevSysfs(rdev: number): string | undefined {
  try {
    return realpathSync(`/sys/dev/char/${major(rdev)}:${minor(rdev)}`);
  } catch {
    return undefined;
  }
}

function describeFd(fd: number): string {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return `fd ${fd} (closed?)`;
  }
}
const major = (dev: number) => Number((BigInt(dev) >> 8n) & 0xfffn);
const minor = (dev: number) => Number((BigInt(dev) & 0xffn) | ((BigInt(dev) >> 12n) & 0xfff00n));
