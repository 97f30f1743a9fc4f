#!/bin/busybox sh
# /init of the cgvm initramfs (see tests/vm/harness.py and docs/testing-vm.md).
#
# Theory of operation: the initramfs holds only this script, a static busybox and the virtio/9p
# modules (load order in /lib/modules/order). We mount the host's root read-only over 9p, put
# fresh proc/sys/dev/tmp/run and a cgroup2 hierarchy over it, mount the read-write job directory
# at the same absolute path it has on the host, chroot in and run job.sh with a clean
# environment. The exit status is reported three ways (rc file, console marker, isa-debug-exit
# port) so the host can cross-check them. Any failure here ends in finish() with status 125,
# which is never a status of a job that ran.
#
# Kernel command line parameters read here:
#   vmjob=/abs/path       job directory (9p tag "job", read-write)
#   vmro=/a,/b            extra read-only shares (tags ro0, ro1, ...) for host paths that the
#                         fresh tmpfs mounts would hide (a repo or venv under /tmp)

/bin/busybox --install -s /bin
export PATH=/bin

log() { echo "[init] $*"; }

finish() {
    rc=$1
    sync
    log "VMPROBE_EXIT=$rc"
    # isa-debug-exit at port 0xf4: qemu exits with (rc << 1) | 1.
    printf "\\$(printf %03o "$rc")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
    # Fallbacks when the device is absent: power off (qemu exits 0, the rc file still tells).
    echo o > /proc/sysrq-trigger 2>/dev/null
    sleep 5
    poweroff -f
}

fail() {
    log "FAIL: $*"
    finish 125
}

mount -t proc proc /proc || fail "mount proc"
mount -t sysfs sysfs /sys || fail "mount sysfs"
mount -t devtmpfs devtmpfs /dev || fail "mount devtmpfs"
log "started"

while read -r mod; do
    [ -n "$mod" ] || continue
    insmod "/lib/modules/$mod.ko" || fail "insmod $mod"
done < /lib/modules/order

JOB=""
RO=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vmjob=*) JOB="${arg#vmjob=}" ;;
        vmro=*) RO="${arg#vmro=}" ;;
    esac
done
[ -n "$JOB" ] || fail "no vmjob= on the kernel command line"

P9="trans=virtio,version=9p2000.L,msize=512000"
mount -t 9p -o "$P9,ro,cache=loose" hostroot /newroot || fail "mount hostroot"

# The host's own /proc, /sys, /dev, /tmp and /run show through the 9p share: cover them.
mount -t proc proc /newroot/proc || fail "mount /newroot/proc"
mount -t sysfs sysfs /newroot/sys || fail "mount /newroot/sys"
mount -t devtmpfs devtmpfs /newroot/dev || fail "mount /newroot/dev"
mkdir -p /newroot/dev/shm /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm || fail "mount /dev/shm"
mount -t devpts devpts /newroot/dev/pts || fail "mount /dev/pts"
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp || fail "mount /newroot/tmp"
mount -t tmpfs -o mode=755 tmpfs /newroot/run || fail "mount /newroot/run"
mount -t cgroup2 -o nsdelegate cgroup2 /newroot/sys/fs/cgroup || fail "mount cgroup2"

if [ -n "$RO" ]; then
    i=0
    IFS=,
    set -- $RO
    unset IFS
    for path in "$@"; do
        mkdir -p "/newroot$path" || fail "mkdir $path"
        mount -t 9p -o "$P9,ro,cache=loose" "ro$i" "/newroot$path" || fail "mount ro$i at $path"
        i=$((i + 1))
    done
fi

mkdir -p "/newroot$JOB" || fail "mkdir $JOB"
mount -t 9p -o "$P9,rw" job "/newroot$JOB" || fail "mount job at $JOB"

# All-or-nothing write first; one by one if some controller is missing.
CG=/newroot/sys/fs/cgroup
if ! echo "+memory +cpuset +hugetlb +pids +cpu +io" > "$CG/cgroup.subtree_control" 2>/dev/null; then
    for c in memory cpuset hugetlb pids cpu io; do
        echo "+$c" > "$CG/cgroup.subtree_control" 2>/dev/null || log "controller $c unavailable"
    done
fi

log "job start"
env -i HOME=/tmp LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    chroot /newroot /bin/sh -c 'cd "$1" && exec /bin/sh ./job.sh' job-sh "$JOB" \
    < /dev/null > "/newroot$JOB/stdout" 2> "/newroot$JOB/stderr"
rc=$?
echo "$rc" > "/newroot$JOB/rc"
finish "$rc"
