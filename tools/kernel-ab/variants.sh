#!/bin/bash
# Kernel variants in one process: CKVKernels at a git revision (the first build) against the
# working tree compiled once per NAME:FLAGS argument, e.g. a macro a probe patch reads:
#   tools/kernel-ab/variants.sh HEAD base: t64:-DKVK_TILE=64 hout:-DKVK_HEADS_OUTER
#   HOT=1 HEADS=1 TOKENS=2048 tools/kernel-ab/variants.sh HEAD base: o3:-O3
# At most eight builds in all (ab.c's limit), the revision's included; ROUNDS=2 lists every build
# twice (two medians each, as ab.sh does). The rest of the environment is ab.c's (HEADS, TOKENS,
# SEQS, REPS, HOT, ISA, DTYPE, MATH). Builds are -O2 with no machine flags, as SwiftPM's.
# HARNESS=step runs step.c instead (the b = 32 step's GEMM items on 1 and 2 threads).
set -euo pipefail
rev=${1:?usage: variants.sh REV NAME:FLAGS...}
shift
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
CC=${CC:-$(dirname "$(command -v swift)")/clang}
mkdir -p "$work/a"
git -C "$repo" archive "$rev" Sources/CKVKernels | tar -x -C "$work/a" --strip-components=2
build() { local dir=$1 out=$2; shift 2; "$CC" -O2 -fPIC -shared -Wl,-Bsymbolic "$@" -I"$dir/include" -I"$dir" "$dir"/*.c -o "$out" -lm; }
build "$work/a" "$work/A-${rev//\//_}.so" &
pids=($!)
builds=("$work/A-${rev//\//_}.so")
for v in "$@"; do
    name=${v%%:*} flags=${v#*:}
    # shellcheck disable=SC2086  # flags split into words on purpose
    build "$repo/Sources/CKVKernels" "$work/$name.so" $flags &
    pids+=($!)
    builds+=("$work/$name.so")
done
for pid in "${pids[@]}"; do wait "$pid"; done  # a build that fails stops the script (set -e)
"$CC" -O2 -I"$repo/Sources/CKVKernels/include" "$repo/tools/kernel-ab/${HARNESS:-ab}.c" -o "$work/ab" -ldl -lm -lpthread
runs=()
for _ in $(seq "${ROUNDS:-1}"); do runs+=("${builds[@]}"); done
"$work/ab" "${runs[@]}"
