#!/bin/bash
# Interleave probe (see probe.c): builds CKVKernels with hooks.patch into a temporary folder and
# runs the probe. Environment: REPS, OWN, EVERY, LPS, LAG.
#   tools/interleave-probe/run.sh
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
