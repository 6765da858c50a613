#!/usr/bin/env bash
# Installs everything perfvmm's build, demo and tests need on a fresh Debian
# bookworm machine, from Debian's packages only. Idempotent: a second run
# installs nothing new.
set -euo pipefail

need_pkgs=(busybox-static acpica-tools cpio kmod)
# OpenMP in the demo guest (images/openmp, guest-hints/ompt): clang 14 with
# libomp 14 (omp-tools.h, libomp.so.5) and Polly (auto-parallelised loops).
need_pkgs+=(clang-14 libomp-14-dev libpolly-14-dev)
# resize-bench's parallel compressor and its `make -j` build (make, tcc),
# copied into the demo guest.
need_pkgs+=(xz-utils make tcc)
# Coz (causal profiling), run in the demo guest to compare its virtual
# speed-ups with perfvmm predict's what-ifs (issue 13).
need_pkgs+=(coz-profiler)
# QEMU 10 from bookworm-backports: it runs the nested-KVM harness (TCG + SVM).
bpo_pkgs=(qemu-system-x86)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${need_pkgs[@]}" "${bpo_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "setup-host: all host packages present"
  exit 0
fi

. /etc/os-release
if ! grep -rqs "${VERSION_CODENAME}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deb http://deb.debian.org/debian ${VERSION_CODENAME}-backports main" |
    as_root tee /etc/apt/sources.list.d/perfvmm-backports.list >/dev/null
fi
export DEBIAN_FRONTEND=noninteractive
as_root apt-get update -qq
as_root apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
as_root apt-get install -y -qq --no-install-recommends -t "${VERSION_CODENAME}-backports" "${bpo_pkgs[@]}" >/dev/null
echo "setup-host: installed ${missing[*]}"
