#!/usr/bin/env bash
# Measures the OMPT tool's overhead on a region-heavy program (regions.c:
# COUNT parallel regions of WORK array elements each) in alternating runs:
#   none   no tool
#   empty  a tool registering the same callbacks, doing nothing (empty_tool.c):
#          what libomp's OMPT machinery itself costs
#   idle   the same, plus a thread that only sleeps (as the tool's timer
#          thread mostly does): what a second thread costs a program that had
#          one (glibc's malloc, which libomp calls per region, then locks)
#   tool   libperfhint_ompt.so
#   trace  libperfhint_ompt.so with PERFHINT_TRACE writing every region to a file
# and prints each run and the medians. See docs/derived-hints-ompt.md.
#
#   guest-hints/ompt/bench/bench.sh [RUNS [COUNT [WORK]]]   (default 11 100000 0)
#
# OMP_NUM_THREADS is passed through (unset: libomp's default, the CPUs online).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../../.." && pwd)
runs=${1:-11}
count=${2:-100000}
work=${3:-0}
target=${CARGO_TARGET_DIR:-$top/target}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

(cd "$top" && cargo build -q --release -p perfhint-capi --lib)
make -s -C "$here/.." OUT="$out" PERFHINT_A="$target/release/libperfhint.a"
clang-14 -O2 -fopenmp "$here/regions.c" -o "$out/regions"
clang-14 -O2 -fPIC -shared "$here/empty_tool.c" -o "$out/empty_tool.so"
clang-14 -O2 -fPIC -shared -DIDLE_THREAD "$here/empty_tool.c" -o "$out/idle_tool.so" -lpthread

run() { # mode
  local prog=("$out/regions" "$count" "$work")
  case $1 in
    none) env -u OMP_TOOL_LIBRARIES -u PERFHINT_TRACE "${prog[@]}" ;;
    empty) env -u PERFHINT_TRACE OMP_TOOL_LIBRARIES="$out/empty_tool.so" "${prog[@]}" ;;
    idle) env -u PERFHINT_TRACE OMP_TOOL_LIBRARIES="$out/idle_tool.so" "${prog[@]}" ;;
    tool) env -u PERFHINT_TRACE OMP_TOOL_LIBRARIES="$out/libperfhint_ompt.so" "${prog[@]}" ;;
    trace) rm -f "$out/trace.jsonl"
           OMP_TOOL_LIBRARIES="$out/libperfhint_ompt.so" PERFHINT_TRACE="$out/trace.jsonl" \
             "${prog[@]}" 2>/dev/null ;;
  esac | sed -n 's/.*seconds=//p'
}

modes=(none empty idle tool trace)
run none >/dev/null # warm up (page cache, CPU frequency)
for ((i = 0; i < runs; i++)); do
  for m in "${modes[@]}"; do
    t=$(run "$m")
    echo "$m $t" >>"$out/times"
    echo "run $i $m ${t}s"
  done
done
median() { grep "^$1 " "$out/times" | cut -d' ' -f2 | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
fastest() { grep "^$1 " "$out/times" | cut -d' ' -f2 | sort -g | head -n 1; }
base=$(median none)
base_min=$(fastest none)
echo "$runs runs, $count regions of $work elements," \
  "OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}, $(getconf _NPROCESSORS_ONLN) CPUs online:"
echo "         median                         fastest run"
for m in "${modes[@]}"; do
  awk -v m="$m" -v t="$(median "$m")" -v b="$base" -v f="$(fastest "$m")" -v bf="$base_min" -v n="$count" \
    'BEGIN { printf "  %-5s %.4f s %7.1f ns/region %+6.2f %%   %.4f s %7.1f ns/region %+6.2f %%\n",
             m, t, t / n * 1e9, (t - b) / b * 100, f, f / n * 1e9, (f - bf) / bf * 100 }'
done
