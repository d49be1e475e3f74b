#!/bin/bash
# Kernel A/B in one process: CKVKernels at a git revision against the working tree.
#   tools/kernel-ab/ab.sh HEAD~1                 # the goal point's GEMM item, LLC flushed
#   SEQS=16 tools/kernel-ab/ab.sh HEAD~1          # b = 16
#   HOT=1 HEADS=1 TOKENS=2048 tools/kernel-ab/ab.sh HEAD~1
#   ISA=1 SEQS=1 HEADS=32 TOKENS=2048 tools/kernel-ab/ab.sh HEAD~1   # the AVX2 variants (ISA: 1 AVX2, 2 AVX-512, 3 +BF16)
#   DTYPE=1 MATH=0 tools/kernel-ab/ab.sh HEAD~1   # fp16 KV, fp32 products (DTYPE: 0 fp32, 1 fp16, 2 bf16; MATH: 0 fp32, 1 bf16)
# Builds each tree into a shared object with the toolchain's clang at -O2 (as SwiftPM's release
# build does, no machine flags), then runs ab.c, which alternates the builds call by call.
set -euo pipefail
rev=${1:?usage: ab.sh REV}
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
CC=${CC:-$(dirname "$(command -v swift)")/clang}
mkdir -p "$work/a"
git -C "$repo" archive "$rev" Sources/CKVKernels | tar -x -C "$work/a" --strip-components=2
build() { "$CC" -O2 -fPIC -shared -Wl,-Bsymbolic -I"$1/include" -I"$1" "$1"/*.c -o "$2" -lm; }
a="$work/A-${rev//\//_}.so" b="$work/B-worktree.so"  # a revision like origin/main names one file
build "$work/a" "$a"
build "$repo/Sources/CKVKernels" "$b"
"$CC" -O2 -I"$repo/Sources/CKVKernels/include" "$repo/tools/kernel-ab/ab.c" -o "$work/ab" -ldl -lm
"$work/ab" "$a" "$b" "$a" "$b"
