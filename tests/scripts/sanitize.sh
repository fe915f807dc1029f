#!/usr/bin/env bash
# Sanitizer runs of the test suite, then the fuzzers:
#   build-asan  gcc, ASan + UBSan: every test (core, command, docs snippets, MPI at 1-4 ranks, the
#               reliability tests incl. a rank that dies, the GPU tests on the CPU emulation but the
#               one large batch, which takes minutes there). Open MPI's own allocations at MPI_Init are
#               leaks LeakSanitizer cannot tell from ours: tests/sanitizers/lsan.supp names them.
#   build-tsan  clang + LLVM's libomp, ThreadSanitizer: the core and reliability tests with
#               OMP_NUM_THREADS=2 (the engine's OpenMP paths). libomp reports its synchronisation to
#               TSan through libarcher (OMP_TOOL_LIBRARIES), so OpenMP barriers and reductions are
#               understood; MPI is not built here (Open MPI is not instrumented).
#   tests/scripts/fuzz.sh  the libFuzzer targets, FUZZ_SECONDS (default 20) each.
# Not run under sanitizers: the install-and-consume package test, the GPU tests on a GPU, the
# multi-host test.
# Usage: tests/scripts/sanitize.sh [asan] [tsan] [fuzz]   (default: all three); JOBS (default 2).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
scripts/deps.sh clang-14 libclang-rt-14-dev libomp-14-dev
jobs=${JOBS:-2}
steps=${*:-asan tsan fuzz}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
common=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g" -DSIMCLR_NATIVE=OFF
        -DSIMCLR_WITH_CUDA=OFF -DSIMCLR_BUILD_BENCHMARKS=OFF -DSIMCLR_WARNINGS_AS_ERRORS=OFF)
t0=$SECONDS
phase() { echo "== sanitize: $1 done after $((SECONDS - t0)) s"; }

if [[ " $steps " == *" asan "* ]]; then
  san="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all"
  cmake -S . -B build-asan "${common[@]}" -DCMAKE_CXX_FLAGS="$san" -DCMAKE_EXE_LINKER_FLAGS="$san" \
    -DCMAKE_SHARED_LINKER_FLAGS="$san" >/dev/null
  cmake --build build-asan -j "$jobs"
  # Leak checks on, with full malloc stacks (fast_unwind_on_malloc=0: Open MPI has no frame pointers)
  # so the suppressions can name Open MPI's libraries; the first report of any kind fails the test.
  ASAN_OPTIONS=detect_leaks=1:fast_unwind_on_malloc=0:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1 \
  LSAN_OPTIONS="suppressions=$root/tests/sanitizers/lsan.supp:print_suppressions=0" \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan --output-on-failure -j "$jobs" -LE "multihost|gpu" \
      -E "^package|^emulated\..*LargerBatch"
  phase asan
fi

if [[ " $steps " == *" tsan "* ]]; then
  cxx=$(command -v clang++-14 || command -v clang++)
  # The C compiler too (the C API test is C): a gcc next to clang++ would add gcc's libtsan.
  cc=$(command -v clang-14 || command -v clang)
  san="-fsanitize=thread -fno-omit-frame-pointer"
  cmake -S . -B build-tsan "${common[@]}" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_FLAGS="$san" \
    -DCMAKE_EXE_LINKER_FLAGS="$san" -DSIMCLR_WITH_MPI=OFF -DSIMCLR_BUILD_TOOLS=OFF >/dev/null
  cmake --build build-tsan -j "$jobs" --target simclr_tests simclr_reliability_tests simclr_c_api_test simclr_c_api_step_test \
    simclr_conformance_c_api
  archer=$(dirname "$("$cxx" -print-file-name=libomp.so)")/libarcher.so
  [ -f "$archer" ] || archer=/usr/lib/llvm-14/lib/libarcher.so
  OMP_NUM_THREADS=2 OMP_TOOL_LIBRARIES="$archer" ARCHER_OPTIONS=verbose=0 \
  TSAN_OPTIONS="halt_on_error=1:ignore_noninstrumented_modules=1:second_deadlock_stack=1:suppressions=$root/tests/sanitizers/tsan.supp" \
    ctest --test-dir build-tsan --output-on-failure -j 1 -L "core|reliability"
  phase tsan
fi

if [[ " $steps " == *" fuzz "* ]]; then
  JOBS=$jobs tests/scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
  phase fuzz
fi
echo "sanitize: all passed in $((SECONDS - t0)) s"
