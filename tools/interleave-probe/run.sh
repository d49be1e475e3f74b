#!/bin/bash
# Interleave probe (see probe.c): builds CKVKernels with hooks.patch into a temporary folder and
# runs the probe. Environment: REPS, OWN, EVERY, LPS, LAG, STRIDE, SKIP, HEAD.
#   tools/interleave-probe/run.sh
#   STRIDE=64 SKIP=8 LPS=1 tools/interleave-probe/run.sh     # one prefetch per own page, same pace
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
CC=${CC:-$(dirname "$(command -v swift)")/clang}
cp -r "$repo/Sources/CKVKernels" "$work/k"
patch -s -d "$work/k" -p1 < "$here/hooks.patch"
"$CC" -O2 -I"$work/k/include" -I"$work/k" "$work"/k/*.c "$here/probe.c" -o "$work/probe" -lm
"$work/probe"
