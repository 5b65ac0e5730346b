// The test host's initramfs: static busybox, the debian kernel's modules, and /init, which mounts the outer root
// over 9p, binds the devices to vfio-pci, runs the command chrooted into the outer root and powers off.
import { createHash } from 'node:crypto';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import type { KernelImage } from './kernel.js';
import { ensurePackages } from './packages.js';
import { cacheDir, type Logger, mustExec, stderrLog, TestHostError } from './util.js';

export const BUSYBOX = '/bin/busybox';

/*
 * Protocol with the outer side (all files in the per-run dir R, shared read-write over 9p as tag "tsvmmrun"
 * and mounted at the same path inside):
 *   kernel cmdline: tsvmm.run=R tsvmm.timeout=SECONDS (budget counted from boot)
 *   R/mounts.conf   "tag path ro|rw" extra 9p shares (e.g. a project under /tmp, which the host's tmpfs hides)
 *   R/devices.conf  "name path vendor:device vfio(0|1)" (see devices.ts)
 *   R/inner.sh      run as `chroot /host /bin/sh R/inner.sh`, stdout/stderr to R/stdout, R/stderr
 *   written back:   R/devices.json, R/started (uptime), R/heartbeat (uptime, every 5 s while the command runs),
 *                   R/status (exit code), R/timedout, R/init-error
 */
export const INIT_SCRIPT = String.raw`#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /host /tmp /bin
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs dev /dev
exec 0</dev/console 1>/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
ip link set lo up # loopback for tests that talk TCP on 127.0.0.1 (migration over tcp:)
say() { read u _ < /proc/uptime; echo "[$u] tsvmm-init: $*"; }
die() {
  say "FATAL: $*"
  [ -n "$D" ] && [ -d "$D" ] && echo "$*" > "$D/init-error"
  sync; poweroff -f; sleep 10
}
if [ -f /modules.order ]; then
  for m in $(cat /modules.order); do insmod "/modules/$m" || say "insmod $m failed"; done
fi
R=; T=600; D=
for a in $(cat /proc/cmdline); do
  case "$a" in
    tsvmm.run=*) R="${'$'}{a#tsvmm.run=}";;
    tsvmm.timeout=*) T="${'$'}{a#tsvmm.timeout=}";;
  esac
done
[ -n "$R" ] || die "no tsvmm.run= on the kernel command line"
# msize: the 8 KiB default makes node's many small reads crawl; cache=loose is safe for the read-only root.
O=trans=virtio,version=9p2000.L,msize=262144
say "modules loaded"
mount -t 9p -o $O,ro,cache=loose hostroot /host || die "cannot mount the outer root over 9p"
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/shm /host/dev/pts
mount -t tmpfs shm /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmp /host/tmp
mount -t tmpfs run /host/run
mkdir -p "/host$R" 2>/dev/null
mount -t 9p -o $O,rw tsvmmrun "/host$R" || die "cannot mount the run dir $R"
D="/host$R"
if [ -f "$D/mounts.conf" ]; then
  while read tag path mode; do
    [ -n "$tag" ] || continue
    mkdir -p "/host$path" 2>/dev/null
    mount -t 9p -o $O,$mode "$tag" "/host$path" || die "cannot mount $tag at $path"
  done < "$D/mounts.conf"
fi

q() { if [ -n "$1" ]; then printf '"%s"' "$1"; else printf null; fi; }
json=; sep=
while read name path id vfio; do
  [ -n "$name" ] || continue
  case "$path" in
    */*) bdf=$(ls -d /sys/bus/pci/devices/0000:00:${'$'}{path%/*}/0000:*:${'$'}{path#*/} 2>/dev/null | head -n 1); bdf=${'$'}{bdf##*/};;
    *) bdf="0000:00:$path";;
  esac
  s=/sys/bus/pci/devices/$bdf
  { [ -n "$bdf" ] && [ -e "$s" ]; } || die "device $name ($id) not found at $path"
  got="$(cut -c3- $s/vendor):$(cut -c3- $s/device)"
  [ "$got" = "$id" ] || die "device $name at $bdf is $got, expected $id"
  if [ "$vfio" = 1 ]; then
    echo vfio-pci > $s/driver_override
    [ -e $s/driver ] && echo $bdf > $s/driver/unbind
    echo $bdf > /sys/bus/pci/drivers_probe
  fi
  g=$(readlink $s/iommu_group); g=${'$'}{g##*/}
  drv=$(readlink $s/driver); drv=${'$'}{drv##*/}
  [ "$vfio" = 1 ] && [ "$drv" != vfio-pci ] && die "binding $name ($bdf) to vfio-pci failed (driver: ${'$'}{drv:-none})"
  vg=; [ "$drv" = vfio-pci ] && vg=/dev/vfio/$g
  # vfio-dev/ exists in sysfs even without CONFIG_VFIO_DEVICE_CDEV; only the /dev node says the cdev is there.
  c=$(ls $s/vfio-dev 2>/dev/null | head -n 1)
  if [ -n "$c" ] && [ -c "/dev/vfio/devices/$c" ]; then c=/dev/vfio/devices/$c; else c=; fi
  json="$json$sep\"$name\":{\"bdf\":\"$bdf\",\"id\":\"$id\",\"group\":${'$'}{g:-null},\"driver\":$(q "$drv"),\"vfioGroup\":$(q "$vg"),\"vfioCdev\":$(q "$c")}"
  sep=,
done < "$D/devices.conf"
echo "{$json}" > "$D/devices.json"
say "devices bound"

read up rest < /proc/uptime
echo "$up" > "$D/started"
left=$((T - ${'$'}{up%.*}))
[ "$left" -lt 5 ] && left=5
say "running the command (time limit ${'$'}{left}s)"
# Own session, so a timeout kills the whole tree (node --test spawns workers).
setsid chroot /host /bin/sh "$R/inner.sh" > "$D/stdout" 2> "$D/stderr" < /dev/null &
pid=$!
( sleep $left; echo "$left" > "$D/timedout"; say "time limit reached, killing the command"
  kill -TERM -$pid 2>/dev/null; sleep 5; kill -KILL -$pid 2>/dev/null ) &
wd=$!
# A heartbeat the outside watches: it stops only when this kernel stops running its timers (a frozen host).
( while :; do cat /proc/uptime > "$D/heartbeat"; sleep 5; done ) &
hb=$!
wait $pid
rc=$?
kill $wd $hb 2>/dev/null
echo $rc > "$D/status.tmp" && mv "$D/status.tmp" "$D/status"
say "command exited with $rc"
sync
poweroff -f
sleep 10
`;

/** Build (or reuse) the initramfs for a kernel; cached by the content that goes into it. */
export async function ensureInitramfs(
  kernel: KernelImage,
  log: Logger = stderrLog,
): Promise<{ path: string; built: boolean }> {
  if (!existsSync(BUSYBOX)) await ensurePackages(['busybox-static'], log);
  await ensurePackages(['cpio'], log);
  if (!existsSync(BUSYBOX)) throw new TestHostError(`${BUSYBOX} missing after installing busybox-static`);
  const h = createHash('sha256').update(INIT_SCRIPT).update(readFileSync(BUSYBOX));
  for (const m of kernel.modules) h.update(basename(m)).update(readFileSync(m));
  const path = join(cacheDir(), `initramfs-${kernel.id}-${h.digest('hex').slice(0, 12)}.cpio.gz`);
  if (existsSync(path)) return { path, built: false };

  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-initramfs-'));
  try {
    const root = join(dir, 'root');
    for (const d of ['bin', 'dev', 'proc', 'sys', 'host', 'tmp', 'modules'])
      mkdirSync(join(root, d), { recursive: true });
    copyFileSync(BUSYBOX, join(root, 'bin/busybox'));
    chmodSync(join(root, 'bin/busybox'), 0o755);
    writeFileSync(join(root, 'init'), INIT_SCRIPT, { mode: 0o755 });
    if (kernel.modules.length) {
      for (const m of kernel.modules) copyFileSync(m, join(root, 'modules', basename(m)));
      writeFileSync(join(root, 'modules.order'), kernel.modules.map((m) => basename(m)).join('\n') + '\n');
    }
    const tmpOut = `${path}.${process.pid}.tmp`;
    await mustExec('sh', ['-c', `find . | cpio -o -H newc -R 0:0 --quiet | gzip -1 > '${tmpOut}'`], { cwd: root });
    renameSync(tmpOut, path);
    // Older images for this kernel (an earlier /init) are dead weight.
    for (const f of readdirSync(cacheDir())) {
      if (f.startsWith(`initramfs-${kernel.id}-`) && join(cacheDir(), f) !== path)
        rmSync(join(cacheDir(), f), { force: true });
    }
    return { path, built: true };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
