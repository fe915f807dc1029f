#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/) with clang, ASan and UBSan, and runs each for a bounded time
# with leak detection, starting from the committed seeds in fuzz/corpus/<target>/. Any crash, leak,
# sanitizer report or timeout fails the script; the input that caused it is left in
# $build/artifacts/ (add it to fuzz/corpus/<target>/ and a case to tests/reliability/ once fixed).
# Usage: tests/scripts/fuzz.sh [seconds per target, default 20]
#   FUZZ_BUILD_DIR (default build-fuzz), JOBS (default 2), FUZZ_TARGETS (default "npy config cli").
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-${FUZZ_SECONDS:-20}}
build=${FUZZ_BUILD_DIR:-build-fuzz}
jobs=${JOBS:-2}
targets=${FUZZ_TARGETS:-npy config cli}
scripts/deps.sh clang-14 libclang-rt-14-dev libomp-14-dev
cxx=$(command -v clang++-14 || command -v clang++)
san="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all"
cmake -S . -B "$build" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" -DCMAKE_CXX_FLAGS="$san -fsanitize=fuzzer-no-link" \
  -DCMAKE_EXE_LINKER_FLAGS="$san" -DSIMCLR_NATIVE=OFF -DSIMCLR_WITH_MPI=OFF -DSIMCLR_WITH_CUDA=OFF \
  -DSIMCLR_BUILD_TESTS=OFF -DSIMCLR_BUILD_BENCHMARKS=OFF -DSIMCLR_BUILD_FUZZERS=ON >/dev/null
cmake --build "$build" -j "$jobs" --target $(printf 'fuzz_%s ' $targets)
mkdir -p "$build/artifacts"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:symbolize=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
status=0
for t in $targets; do
  # New inputs go to a scratch corpus; the committed seeds are read only.
  work="$build/corpus/$t"
  mkdir -p "$work"
  echo "fuzz_$t: ${seconds}s"
  if ! "$build/bin/fuzz_$t" -max_total_time="$seconds" -detect_leaks=1 -timeout=10 -rss_limit_mb=2048 \
       -max_len=4096 -print_final_stats=1 -artifact_prefix="$build/artifacts/$t-" \
       "$work" "fuzz/corpus/$t" >"$build/fuzz_$t.log" 2>&1; then
    status=1
    echo "fuzz_$t FAILED (log: $build/fuzz_$t.log, inputs: $build/artifacts/$t-*)"
    grep -E "ERROR|runtime error|SUMMARY" "$build/fuzz_$t.log" | head -5 || true
  else
    grep -E "stat::number_of_executed_units" "$build/fuzz_$t.log" | sed "s/^/fuzz_$t: /" || true
  fi
done
exit "$status"
