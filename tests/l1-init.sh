#!/bin/busybox sh
# /init of the nested harness's L1 host: load KVM, run the perfvmm command the
# harness wrote to /run/cmd, report its exit status, power off.
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp && mount -t tmpfs tmpfs /tmp
# devtmpfs has no /dev/std* links (udev makes them on a full system).
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr

if [ "$(cat /run/load-kvm)" = 1 ]; then
  insmod /lib/modules/irqbypass.ko
  insmod /lib/modules/kvm.ko
  if grep -q svm /proc/cpuinfo; then
    insmod /lib/modules/kvm-amd.ko
  else
    insmod /lib/modules/kvm-intel.ko
  fi
  [ -c /dev/kvm ] || echo "L1: /dev/kvm did not appear"
fi

echo "L1: starting perfvmm"
sh /run/cmd
rc=$?
# Files the test asked for, printed between markers (see GuestRun::fetch).
while read -r mode name; do
  [ -n "$name" ] || continue
  echo "=== PERFVMM-FILE $name ==="
  if [ "$mode" = tail ]; then tail -n 1 "/files/$name"; else cat "/files/$name"; fi
  echo "=== PERFVMM-END ==="
done < /run/fetch
echo "PERFVMM_EXIT=$rc"
poweroff -f
