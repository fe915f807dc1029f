#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (core, command, MPI at 1-4 ranks, package,
# the Python package on the oldest supported releases: tests/scripts/python_test.sh, its TensorFlow /
# Keras 2 front end: tests/scripts/tf_test.sh, and every front end on the current releases:
# tests/scripts/current_test.sh).
# Usage: scripts/test.sh [--sanitize] [ctest args...]
#   BUILD_DIR (default build) picks the build folder; JOBS the parallelism (default: nproc).
set -euo pipefail
cd "$(dirname "$0")/.."
sanitize=0
if [ "${1:-}" = "--sanitize" ]; then sanitize=1; shift; fi
scripts/deps.sh
jobs=${JOBS:-$(nproc)}
# Open MPI refuses to run as root without these; CI and containers run as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
build=${BUILD_DIR:-build}
# The current-release environment first: its jax's FFI headers let the CMake build compile (nvcc)
# and emulate the JAX GPU handlers.
tests/scripts/current_test.sh --install
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DSIMCLR_WARNINGS_AS_ERRORS=ON \
  -DSIMCLR_BUILD_TESTS=ON -DSIMCLR_BUILD_TOOLS=ON -DSIMCLR_BUILD_BENCHMARKS=ON \
  -DSIMCLR_BUILD_RELIABILITY_TESTS=ON \
  -DSIMCLR_JAX_PYTHON="$PWD/${VENV_CURRENT:-build/venv-current}/bin/python" >/dev/null
cmake --build "$build" -j "$jobs"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
(cd "$build" && ctest --output-on-failure --no-tests=error -j "$jobs" "$@") | tee "$log"
# The Python package (pip install . into build/venv, pytest, the mpirun runs); its counts join the total.
pylog=$(mktemp)
trap 'rm -f "$log" "$pylog"' EXIT
tests/scripts/python_test.sh | tee "$pylog"
tflog=$(mktemp)
trap 'rm -f "$log" "$pylog" "$tflog"' EXIT
tests/scripts/tf_test.sh | tee "$tflog"
curlog=$(mktemp)
trap 'rm -f "$log" "$pylog" "$tflog" "$curlog"' EXIT
tests/scripts/current_test.sh | tee "$curlog"
if [ "$sanitize" = 1 ] && [ -x tests/scripts/sanitize.sh ]; then
  tests/scripts/sanitize.sh
fi
# The suite's count, last, in the plain form CI summaries read (a failure above already exited non-zero).
total=$(sed -n 's/.*tests failed out of \([0-9]*\).*/\1/p' "$log" | tail -n 1)
skipped=$(grep -c '(Skipped)$' "$log" || true)
py_summary=$(grep '^python tests: ' "$pylog" | tail -n 1)
py_passed=$(echo "$py_summary" | sed -n 's/.* \([0-9]*\) passed.*/\1/p')
py_skipped=$(echo "$py_summary" | sed -n 's/.* \([0-9]*\) skipped.*/\1/p')
tf_summary=$(grep '^tensorflow tests: ' "$tflog" | tail -n 1)
tf_passed=$(echo "$tf_summary" | sed -n 's/.* \([0-9]*\) passed.*/\1/p')
tf_skipped=$(echo "$tf_summary" | sed -n 's/.* \([0-9]*\) skipped.*/\1/p')
cur_summary=$(grep '^current releases tests: ' "$curlog" | tail -n 1)
cur_passed=$(echo "$cur_summary" | sed -n 's/.* \([0-9]*\) passed.*/\1/p')
cur_skipped=$(echo "$cur_summary" | sed -n 's/.* \([0-9]*\) skipped.*/\1/p')
if [ -z "$py_passed" ] || [ "$py_passed" -eq 0 ] || [ -z "$tf_passed" ] || [ "$tf_passed" -eq 0 ] ||
   [ -z "$cur_passed" ] || [ "$cur_passed" -eq 0 ]; then
  echo "the Python, TensorFlow or current-release tests reported no passed tests" >&2
  exit 1
fi
# The conformance table's share of those counts, per runner (tests/conformance/README.md).
c_api=$(grep -cE 'Test +#[0-9]+: [a-z_.]*conformance[a-z_.0-9]* .*Passed' "$log" || true)
conf_line() { grep -h "^conformance ($1" "$2" | tail -n 1 | sed -n 's/.*: \([0-9]*\) passed.*/\1/p'; }
echo "conformance: C API ${c_api:-0} runs passed (ctest: 1, 2 and 3 ranks), python front ends" \
  "$(conf_line 'python front ends' "$pylog") passed, tensorflow / keras 2" \
  "$(conf_line 'tensorflow' "$tflog") passed, mpi4py at 1-4 ranks within the mpi pytest count;" \
  "current releases $(grep -h '^current releases, conformance' "$curlog" |
    sed -n 's/.*: \([0-9]*\) passed.*/\1/p' | awk '{s += $1} END {print s + 0}') passed (Keras 3 on each backend)"
# Which releases each environment tested (the oldest supported, and PyPI's newest).
grep -h '^python releases\|^tensorflow releases\|^current releases: [a-z]' "$pylog" "$tflog" "$curlog" || true
echo "tests: $(( ${total:-0} - skipped + py_passed + tf_passed + cur_passed )) passed, 0 failed," \
  "$(( skipped + ${py_skipped:-0} + ${tf_skipped:-0} + ${cur_skipped:-0} )) skipped"
