#!/bin/bash
# The C kernels built for arm64 and checked under qemu-user (check.c says what is checked), then
# the same checker natively. Needs Debian's gcc-aarch64-linux-gnu and qemu-user-static:
#   apt-get install -y gcc-aarch64-linux-gnu qemu-user-static
#   tools/arm64-check/run.sh
set -euo pipefail
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
k="$repo/Sources/CKVKernels"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# -Wall -Wextra -Werror: a warning on the other architecture is a finding too.
aarch64-linux-gnu-gcc -O2 -static -Wall -Wextra -Werror -I"$k/include" -I"$k" "$k"/*.c "$repo/tools/arm64-check/check.c" -o "$work/check-arm64" -lm
file "$work/check-arm64" | cut -d, -f1-2
qemu-aarch64-static "$work/check-arm64"
"$(dirname "$(command -v swift)")/clang" -O2 -Wall -Wextra -Werror -I"$k/include" -I"$k" "$k"/*.c "$repo/tools/arm64-check/check.c" -o "$work/check-native" -lm
"$work/check-native"
