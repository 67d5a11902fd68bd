#!/bin/sh
# PID 1 of the busybox dom0 built by `cargo xtask xen-image`.
# Brings up the minimal Xen toolstack (xenstored, xen-init-dom0, xenconsoled
# logging every guest console to /var/log/xen/console/guest-<name>.log),
# starts the installed portcullis-host.service the way systemd would
# (/portcullis/service: its ExecStart, Restart=on-failure), runs
# /portcullis/test.sh, and hands its exit code to QEMU through the
# isa-debug-exit device at port 0xf4 (QEMU exits with 2*code+1).
# Kernel argument `portcullis.shell` gives a shell on hvc0 before exiting.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
up() { cut -d' ' -f1 /proc/uptime; }
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts   # xenconsoled needs ptys
mount -t tmpfs run /run
mount -t tmpfs varrun /var/run
mkdir -p /var/run/xen /var/run/xenstored
echo "dom0-init: start at $(up) s"
for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs \
         loop dm-mod dm-crypt ecb xts af_alg algif_skcipher; do
    # absent: built into this kernel (xtask checked modules.builtin)
    [ -e /modules/$m.ko ] || continue
    insmod /modules/$m.ko || echo "dom0-init: insmod $m failed"
done
mount -t xenfs xenfs /proc/xen
xenstored --pid-file /var/run/xenstored.pid || echo "dom0-init: xenstored failed"
i=0
while ! xenstore-read /local >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
xen-init-dom0 >/dev/null || echo "dom0-init: xen-init-dom0 failed"
xenconsoled --pid-file=/var/run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console \
    || echo "dom0-init: xenconsoled failed"
echo "dom0-init: toolstack up at $(up) s"
/portcullis/service start
rc=1
if [ -x /portcullis/test.sh ]; then
    /portcullis/test.sh
    rc=$?
fi
echo "dom0-init: done at $(up) s, tests exit code $rc"
if grep -q portcullis.shell /proc/cmdline; then
    setsid sh -c 'exec sh </dev/hvc0 >/dev/hvc0 2>&1'
fi
printf "\\$(printf %o $rc)" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
reboot -f
