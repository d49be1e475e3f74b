#!/usr/bin/env bash
# Builds one libFuzzer harness and runs it for SECONDS on one core.
#   tools/fuzz/run.sh TARGET SECONDS [extra libFuzzer flags]
# TARGET: record | store | trace | meta. Corpora live in tools/fuzz/corpus/TARGET (seeded on first
# run from real records and traces; not committed), crashes in tools/fuzz/artifacts/TARGET/.
# Replay one input: tools/fuzz/run.sh TARGET 0 path/to/crash-…
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${1:?usage: run.sh TARGET SECONDS [libFuzzer flags]}"
seconds="${2:?usage: run.sh TARGET SECONDS [libFuzzer flags]}"
shift 2
case "$target" in record|store|trace|meta) ;; *) echo "unknown target $target (record, store, trace, meta)" >&2; exit 2 ;; esac

# SwiftPM names a path package by its directory: a clone in a directory called "fuzz" would
# clash with this package (tools/fuzz). Such a clone is built from a mirror of its sources.
pkg="$here"
if [ "$(basename "$root")" = fuzz ]; then
    mirror="/tmp/prefixkv-fuzz-mirror"
    mkdir -p "$mirror"
    # Fresh sources each time; the mirror's tools/fuzz/.build (the instrumented build) is kept.
    find "$mirror" -mindepth 1 -maxdepth 1 ! -name tools -exec rm -rf {} +
    rm -rf "$mirror/tools/fuzz/Sources" "$mirror/tools/fuzz/Package.swift"
    (cd "$root" && tar --exclude=./.git --exclude='./.build*' --exclude=./tools/fuzz/.build \
        --exclude=./tools/fuzz/corpus --exclude=./tools/fuzz/artifacts -cf - .) | (cd "$mirror" && tar -xf -)
    pkg="$mirror/tools/fuzz"
fi

# -sanitize=fuzzer,address for every Swift module (coverage of the library code, not only the
# harness), -enable-testing so harnesses can `@testable import` KVSpill's internal decoders.
# The root package stays free of unsafeFlags.
swift build --package-path "$pkg" -c release --product "fuzz-$target" \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -enable-testing -Xswiftc -g >&2
bin="$(swift build --package-path "$pkg" -c release --show-bin-path \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -enable-testing -Xswiftc -g)/fuzz-$target"

corpus="$here/corpus/$target"
artifacts="$here/artifacts/$target"
mkdir -p "$corpus" "$artifacts"
export PREFIXKV_TRACE_DIR="${PREFIXKV_TRACE_DIR:-$root/../shared/traces}"
[ -d "$PREFIXKV_TRACE_DIR" ] || PREFIXKV_TRACE_DIR=/work/shared/traces
# Records and stores go to memory when there is a /dev/shm (the store harness opens LMDB per input).
[ -d /dev/shm ] && export TMPDIR=/dev/shm
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"
# Swift's own backtracer and ASan fight over a crash: leave reporting to ASan and libFuzzer.
export SWIFT_BACKTRACE="${SWIFT_BACKTRACE:-enable=no}"

if [ "$seconds" = 0 ] && [ $# -gt 0 ]; then
    exec "$bin" "$@"   # replay the given inputs
fi
# The first run writes the seeds (harness LLVMFuzzerInitialize) into the corpus.
if [ -z "$(ls -A "$corpus")" ]; then export PREFIXKV_FUZZ_SEED_DIR="$corpus"; fi
maxlen=4096
[ "$target" = trace ] && maxlen=8192
# The store logs every damaged record it drops: keep its stderr out of libFuzzer's (replay an
# input with `run.sh store 0 FILE` to see it).
extra=()
[ "$target" = store ] && extra=(-close_fd_mask=2)
# JSON tokens and boundary integers for the JSON decoders.
[ -f "$here/$target.dict" ] && extra+=(-dict="$here/$target.dict")
exec "$bin" "$corpus" -max_total_time="$seconds" -max_len="$maxlen" -timeout=10 -rss_limit_mb=4096 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 "${extra[@]}" "$@"
