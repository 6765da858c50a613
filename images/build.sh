#!/usr/bin/env bash
# Builds the demo guest from Debian's packages into build/ (ignored by git):
#   build/kernel/vmlinuz            the stock Debian cloud kernel (bzImage)
#   build/kernel/modules/           its modules tree (virtio, kvm, ...)
#   build/guest/initramfs.cpio.gz   busybox-static initramfs whose /init loads
#                                   the virtio modules and the perf-hint driver,
#                                   prints a boot marker, and runs the demo
#                                   workload or a test scenario (guest-init)
#   build/module/                   virtio_perfhint.ko, built against Debian's
#                                   linux-headers for the same ABI
# A second run reuses what is already there.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
out=${PERFVMM_BUILD_DIR:-$top/build}
. "$here/kernel.env"
abi=${PERFVMM_KERNEL_ABI:-$KERNEL_ABI}

kdir=$out/kernel
gdir=$out/guest
mkdir -p "$kdir" "$gdir"

pkg_available() { apt-cache show "$1" >/dev/null 2>&1; }

fetch_kernel() {
  if [ -f "$kdir/vmlinuz" ] && [ "$(cat "$kdir/abi" 2>/dev/null)" = "$abi" ]; then
    return
  fi
  local image="linux-image-${abi}-cloud-amd64-unsigned"
  if ! pkg_available "$image"; then
    echo "images: $image is not in apt's lists (run 'apt-get update', or set PERFVMM_KERNEL_ABI / images/kernel.env to an ABI your mirror has: apt-cache search linux-headers | grep cloud-amd64)" >&2
    exit 1
  fi
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -q "$image" >/dev/null 2>&1) || {
    echo "images: 'apt-get download $image' failed" >&2
    exit 1
  }
  rm -rf "$kdir/modules" "$kdir/extract"
  dpkg-deb -x "$tmp"/*.deb "$kdir/extract"
  cp "$kdir/extract/boot/vmlinuz-${abi}-cloud-amd64" "$kdir/vmlinuz"
  mv "$kdir/extract/lib/modules/${abi}-cloud-amd64" "$kdir/modules"
  rm -rf "$kdir/extract" "$tmp"
  echo "$abi" >"$kdir/abi"
  echo "images: kernel ${abi}-cloud-amd64 ready"
}

# Writes a newc cpio of directory $1 to $2 (gzip'd when $3 = gz).
pack_cpio() {
  local dir=$1 dest=$2 compress=${3:-}
  if [ "$compress" = gz ]; then
    (cd "$dir" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --owner=0:0 | gzip -6) >"$dest.tmp"
  else
    (cd "$dir" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --owner=0:0) >"$dest.tmp"
  fi
  mv "$dest.tmp" "$dest"
}

headers_dir() { echo "/usr/src/linux-headers-${abi}-cloud-amd64"; }

# The perf-hint driver, built against the headers of exactly this kernel.
build_module() {
  local hdr
  hdr=$(headers_dir)
  if [ ! -d "$hdr" ]; then
    local pkg="linux-headers-${abi}-cloud-amd64"
    echo "images: installing $pkg"
    if [ "$(id -u)" = 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
    else
      sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
    fi
  fi
  local mdir=$out/module
  mkdir -p "$mdir"
  cp "$here/virtio_perfhint/virtio_perfhint.c" "$here/virtio_perfhint/Makefile" "$mdir/"
  if ! make -s -C "$mdir" KDIR="$hdr" >"$mdir/build.log" 2>&1; then
    cat "$mdir/build.log" >&2
    echo "images: building virtio_perfhint.ko failed" >&2
    exit 1
  fi
  mkdir -p "$gdir/extra"
  cp "$mdir/virtio_perfhint.ko" "$gdir/extra/"
}

# Static guest programs: the perfhint CLI and the demo workload.
build_guest_programs() {
  local tdir=$out/static-target
  (cd "$top" && RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release \
      --target x86_64-unknown-linux-gnu --target-dir "$tdir" \
      -p perfhint -p demo-workload --bin perfhint --bin demo-workload)
  mkdir -p "$gdir/extra"
  cp "$tdir/x86_64-unknown-linux-gnu/release/perfhint" "$tdir/x86_64-unknown-linux-gnu/release/demo-workload" "$gdir/extra/"
  cp "$here/guest-scenario" "$gdir/extra/scenario"
  chmod 755 "$gdir/extra/scenario"
}

build_guest_initramfs() {
  local dest=$gdir/initramfs.cpio.gz
  local stamp
  stamp=$(cat "$here/guest-init" "$here/build.sh" "$kdir/abi" "$gdir"/extra/* 2>/dev/null | sha256sum | cut -c1-16)
  if [ -f "$dest" ] && [ "$(cat "$gdir/stamp" 2>/dev/null)" = "$stamp" ]; then
    return
  fi
  local root
  root=$(mktemp -d)
  mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp,lib/modules,usr/bin,usr/sbin,etc,perfvmm}
  cp /bin/busybox "$root/bin/busybox"
  cp "$here/guest-init" "$root/init"
  chmod 755 "$root/init"
  for m in drivers/virtio/virtio.ko drivers/virtio/virtio_ring.ko \
           drivers/virtio/virtio_mmio.ko drivers/virtio/virtio_balloon.ko \
           drivers/virtio/virtio_mem.ko; do
    cp "$kdir/modules/kernel/$m" "$root/lib/modules/"
  done
  # Extra guest payload (the perf-hint driver, perfhint CLI, demo workload)
  # is added by later build steps under $gdir/extra.
  if [ -d "$gdir/extra" ]; then
    cp -a "$gdir/extra/." "$root/perfvmm/"
  fi
  pack_cpio "$root" "$dest" gz
  rm -rf "$root"
  echo "$stamp" >"$gdir/stamp"
  echo "images: guest initramfs ready ($(du -h "$dest" | cut -f1))"
}

fetch_kernel
build_module
build_guest_programs
build_guest_initramfs
