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
#   build/workloads/                resize-bench's memory-phase program
#                                   (images/workloads); with Debian's xz in
#                                   the guest's /perfvmm
#   build/openmp/                   the OpenMP test programs (images/openmp) and
#                                   the OMPT tool (guest-hints/ompt), built with
#                                   Debian's clang-14; in the guest they are in
#                                   /perfvmm with libomp.so.5 and glibc beside
#                                   the dynamic loader's default paths
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
  # The hostile guest (images/hostile): a module that attacks perfvmm.
  local hdir=$out/hostile
  mkdir -p "$hdir"
  cp "$here/hostile/hostile.c" "$hdir/"
  echo 'obj-m := hostile.o' > "$hdir/Makefile"
  if ! make -s -C "$hdr" M="$hdir" modules >"$hdir/build.log" 2>&1; then
    cat "$hdir/build.log" >&2
    echo "images: building hostile.ko failed" >&2
    exit 1
  fi
  cp "$hdir/hostile.ko" "$gdir/extra/"
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

# True when $1 is missing or older than any of the other files.
stale() {
  local target=$1 dep
  shift
  [ -e "$target" ] || return 0
  for dep in "$@"; do
    [ "$dep" -nt "$target" ] && return 0
  done
  return 1
}

# Copies the shared libraries ELF file $1 loads (as ldd resolves them here)
# into $2 under the paths the guest's loader looks in: the interpreter at
# its PT_INTERP path, the libraries in /lib/x86_64-linux-gnu (a default
# search directory, so the guest needs no ld.so.cache).
copy_shared_libs() {
  local elf=$1 sysroot=$2 interp line name path
  interp=$(readelf -l "$elf" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
  if [ -n "$interp" ]; then
    mkdir -p "$sysroot$(dirname "$interp")"
    cp -L "$interp" "$sysroot$interp"
  fi
  mkdir -p "$sysroot/lib/x86_64-linux-gnu"
  ldd "$elf" | while read -r line; do
    case $line in
      *" => not found"*) echo "images: $elf needs a library this host lacks: $line" >&2; return 1 ;;
      *" => /"*)
        name=${line%% =>*}
        path=${line#*=> }
        path=${path%% (*}
        cp -L "$path" "$sysroot/lib/x86_64-linux-gnu/$name"
        ;;
    esac
  done
}

# A static CPUID reader, for the CPU template's test (images/cpuid).
build_cpuid() {
  static_c "$here/cpuid/cpuid.c" "$out/cpuid"
  # The guest's onliner of hot-added vCPUs (images/cpu-onliner).
  static_c "$here/cpu-onliner/cpu-onliner.c" "$out/cpuid"
}

# Builds C file $1 into a static program in directory $2 (when stale) and
# puts it in the guest's /perfvmm.
static_c() {
  local src=$1 odir=$2 name
  name=$(basename "$src" .c)
  mkdir -p "$odir"
  if stale "$odir/$name" "$src" "$here/build.sh"; then
    gcc -O2 -Wall -Werror -static "$src" -o "$odir/$name"
  fi
  cp "$odir/$name" "$gdir/extra/"
}

# OpenMP in the guest: the test programs, the OMPT tool, and what they load.
build_openmp() {
  local cc=clang-14 odir=$out/openmp src=$here/openmp
  if ! command -v "$cc" >/dev/null || [ ! -e /usr/lib/llvm-14/lib/libomp.so.5 ]; then
    echo "images: $cc and libomp-14-dev are needed (scripts/setup-host.sh installs them)" >&2
    exit 1
  fi
  mkdir -p "$odir"
  # An ordinary OpenMP program (no perfhint code).
  if stale "$odir/omp-work" "$src/omp-work.c" "$here/build.sh"; then
    "$cc" -O2 -Wall -Werror -fopenmp "$src/omp-work.c" -o "$odir/omp-work"
  fi
  # Loops parallelised by the compiler alone: Polly (linked into Debian's
  # clang-14) with libomp's own ABI (__kmpc_fork_call). See
  # docs/derived-hints-ompt.md for why -polly-position=early.
  if stale "$odir/autopar" "$src/autopar.c" "$here/build.sh"; then
    "$cc" -O3 -Wall -Werror -mllvm -polly -mllvm -polly-position=early \
      -mllvm -polly-parallel -mllvm -polly-omp-backend=LLVM -fopenmp \
      "$src/autopar.c" -o "$odir/autopar"
    if ! nm -D "$odir/autopar" | grep -q __kmpc_fork_call; then
      rm -f "$odir/autopar"
      echo "images: Polly did not parallelise images/openmp/autopar.c" >&2
      exit 1
    fi
  fi
  # The same loops parallelised by GCC (-ftree-parallelize-loops=4 emits
  # GOMP_parallel calls), linked against libomp's GOMP ABI: Debian's
  # /usr/lib/llvm-14/lib/libgomp.so is libomp.
  if stale "$odir/autopar-gcc" "$src/autopar.c" "$here/build.sh"; then
    gcc -O2 -Wall -Werror -ftree-parallelize-loops=4 "$src/autopar.c" \
      -L/usr/lib/llvm-14/lib -o "$odir/autopar-gcc"
    if ! readelf -d "$odir/autopar-gcc" | grep -q 'NEEDED.*libomp\.so\.5' ||
       ! nm -D "$odir/autopar-gcc" | grep -q GOMP_parallel; then
      rm -f "$odir/autopar-gcc"
      echo "images: autopar-gcc is not a libomp program calling GOMP_parallel" >&2
      exit 1
    fi
  fi
  # The OMPT tool, with libperfhint linked in statically (only the static
  # library: a cdylib cannot be built with crt-static).
  local tdir=$out/static-target
  (cd "$top" && RUSTFLAGS="-C target-feature=+crt-static" cargo rustc -q --release \
      --target x86_64-unknown-linux-gnu --target-dir "$tdir" -p perfhint-capi --lib --crate-type staticlib)
  make -s -C "$top/guest-hints/ompt" OUT="$odir" \
    PERFHINT_A="$tdir/x86_64-unknown-linux-gnu/release/libperfhint.a"
  strip --strip-unneeded -o "$gdir/extra/libperfhint_ompt.so" "$odir/libperfhint_ompt.so"
  cp "$odir/omp-work" "$odir/autopar" "$odir/autopar-gcc" "$gdir/extra/"
  rm -rf "$gdir/sysroot"
  local elf
  for elf in "$odir/omp-work" "$odir/autopar" "$odir/autopar-gcc" "$odir/libperfhint_ompt.so"; do
    copy_shared_libs "$elf" "$gdir/sysroot"
  done
}

# Derived hints: perfhintd; the demo with its profile-derived schedule
# (step 1, `perfhint profile`, on this host; step 2, `perfhint embed`, into a
# copy); and coreutils' sort, a multi-threaded program from a Debian
# package for the guest to profile and run under perfhintd. After
# build_openmp, which starts the sysroot afresh.
build_derived() {
  local tdir=$out/static-target rel
  rel=$tdir/x86_64-unknown-linux-gnu/release
  (cd "$top" && RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release \
      --target x86_64-unknown-linux-gnu --target-dir "$tdir" -p perfhintd --bin perfhintd)
  cp "$rel/perfhintd" "$gdir/extra/"
  if stale "$gdir/extra/demo-workload-scheduled" "$rel/demo-workload" "$rel/perfhint"; then
    echo "images: profiling the demo workload (about 13 s)"
    "$rel/perfhint" profile -o "$out/demo.profile.json" -- "$rel/demo-workload" >/dev/null
    "$rel/perfhint" embed "$rel/demo-workload" "$out/demo.profile.json" \
      -o "$gdir/extra/demo-workload-scheduled"
  fi
  cp -L /usr/bin/sort "$gdir/extra/sort"
  copy_shared_libs /usr/bin/sort "$gdir/sysroot"
  # sort's input: 520 000 lines, enough for it to sort on 4 threads
  # (coreutils splits only runs of 128 Ki lines or more).
  if [ ! -e "$gdir/extra/sort-input" ]; then
    awk 'BEGIN { srand(7); for (i = 0; i < 520000; i++) printf "%08d\n", int(rand() * 1e8) }' \
      > "$gdir/extra/sort-input"
  fi
}

# resize-bench's workload set beside the demo and the OpenMP kernel: a
# memory-phase program (images/workloads) and a parallel compressor from
# Debian (xz, reading /perfvmm/sort-input); a `make -j` build of a small C
# project with Debian's make and tcc; and the sampler that measures them.
# After build_openmp.
build_workloads() {
  static_c "$here/workloads/hashjoin.c" "$out/workloads"
  # The live-migration test's memory writer.
  static_c "$here/workloads/memwrite.c" "$out/workloads"
  # The guest-side sampler of demand and allocation (images/sampler).
  static_c "$here/sampler/sampler.c" "$out/workloads"
  cp -L /usr/bin/xz "$gdir/extra/xz"
  copy_shared_libs /usr/bin/xz "$gdir/sysroot"
  # The `make -j` workload: Debian's make and tcc, and the project
  # (images/workloads/make-project), which includes no header.
  local prog
  for prog in make tcc; do
    cp -L "/usr/bin/$prog" "$gdir/extra/$prog"
    copy_shared_libs "/usr/bin/$prog" "$gdir/sysroot"
  done
  mkdir -p "$gdir/sysroot/usr/bin"
  ln -sf /perfvmm/tcc "$gdir/sysroot/usr/bin/tcc"
  rm -rf "$gdir/extra/make-project"
  cp -r "$here/workloads/make-project" "$gdir/extra/make-project"
  # perfvmm predict's validation workload, with libperfhint (built by
  # build_openmp) for its phase hints.
  local a=$out/static-target/x86_64-unknown-linux-gnu/release/libperfhint.a
  if stale "$out/workloads/predict-work" "$here/workloads/predict-work.c" "$a" "$here/build.sh"; then
    gcc -O2 -Wall -Werror -static "$here/workloads/predict-work.c" "$a" -lpthread -ldl -lm \
      -o "$out/workloads/predict-work"
  fi
  cp "$out/workloads/predict-work" "$gdir/extra/"
  # Its build for Coz (docs/predict.md, "Coz against the model"): dynamic,
  # for libcoz's LD_PRELOAD, and with DWARF 4 line tables from clang, the
  # only kind Debian's libcoz (libelfin) reads; the line of each function
  # alongside, for COZ_FIXED_LINE.
  local src=$here/workloads/predict-work.c
  if stale "$out/workloads/predict-work-coz" "$src" "$a" "$here/build.sh"; then
    clang-14 -O2 -gdwarf-4 -Wall -Werror "$src" "$a" -lpthread -ldl -lm \
      -o "$out/workloads/predict-work-coz"
  fi
  cp "$out/workloads/predict-work-coz" "$gdir/extra/"
  grep -n '^__attribute__((noinline)) static void ' "$src" |
    sed 's/^\([0-9]*\):.* void \([a-z_]*\)(.*/\2=\1/' > "$gdir/extra/predict-work-coz.lines"
  copy_shared_libs "$out/workloads/predict-work-coz" "$gdir/sysroot"
  mkdir -p "$gdir/sysroot/usr/lib/coz-profiler"
  cp /usr/lib/coz-profiler/libcoz.so "$gdir/sysroot/usr/lib/coz-profiler/"
  copy_shared_libs /usr/lib/coz-profiler/libcoz.so "$gdir/sysroot"
}

build_guest_initramfs() {
  local dest=$gdir/initramfs.cpio.gz
  local stamp
  stamp=$( (cat "$here/guest-init" "$here/build.sh" "$kdir/abi" "$gdir"/extra/* 2>/dev/null
            find "$gdir/sysroot" -type f 2>/dev/null | LC_ALL=C sort | xargs -r cat) | sha256sum | cut -c1-16)
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
  # Shared libraries for the OpenMP programs (build_openmp).
  if [ -d "$gdir/sysroot" ]; then
    cp -a "$gdir/sysroot/." "$root/"
  fi
  pack_cpio "$root" "$dest" gz
  rm -rf "$root"
  echo "$stamp" >"$gdir/stamp"
  echo "images: guest initramfs ready ($(du -h "$dest" | cut -f1))"
}

fetch_kernel
build_module
build_guest_programs
build_openmp
build_derived
build_workloads
build_cpuid
build_guest_initramfs
