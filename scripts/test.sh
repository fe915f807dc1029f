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
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log=$work/ctest.log
(cd "$build" && ctest --output-on-failure --no-tests=error -j "$jobs" "$@") | tee "$log"
# The sub-suites, each ending in "LABEL tests: P passed, F failed, S skipped"; their counts join the
# total. suite NAME LABEL SCRIPT...: runs SCRIPT into $work/NAME.log and checks it passed something.
passed_total=0 skipped_total=0
suite() {
  local name=$1 label=$2
  shift 2
  "$@" | tee "$work/$name.log"
  local line
  line=$(grep "^$label tests: " "$work/$name.log" | tail -n 1)
  local p s
  p=$(echo "$line" | sed -n 's/.* \([0-9]*\) passed.*/\1/p')
  s=$(echo "$line" | sed -n 's/.* \([0-9]*\) skipped.*/\1/p')
  if [ -z "$p" ] || [ "$p" -eq 0 ]; then
    echo "$* reported no passed tests" >&2
    exit 1
  fi
  passed_total=$((passed_total + p)) skipped_total=$((skipped_total + ${s:-0}))
}
# The Python package on the oldest supported releases (build/venv: pytest, the mpirun runs), its
# TensorFlow 2.15 / Keras 2 front end (build/venv-tf), every front end on the current releases
# (build/venv-current), the wheel in a clean environment without build tools, and the isolated
# build's refusal.
suite python python tests/scripts/python_test.sh
suite tensorflow tensorflow tests/scripts/tf_test.sh
suite current "current releases" tests/scripts/current_test.sh
suite wheel wheel tests/scripts/wheel_test.sh
suite isolated "isolated build" tests/scripts/isolated_build_test.sh
if [ "$sanitize" = 1 ] && [ -x tests/scripts/sanitize.sh ]; then
  tests/scripts/sanitize.sh
fi
# The suite's count, last, in the plain form CI summaries read (a failure above already exited non-zero).
total=$(sed -n 's/.*tests failed out of \([0-9]*\).*/\1/p' "$log" | tail -n 1)
skipped=$(grep -c '(Skipped)$' "$log" || true)
# The conformance table's share of those counts, per runner (tests/conformance/README.md).
c_api=$(grep -cE 'Test +#[0-9]+: [a-z_.]*conformance[a-z_.0-9]* .*Passed' "$log" || true)
conf_line() { grep -h "^conformance ($1" "$2" | tail -n 1 | sed -n 's/.*: \([0-9]*\) passed.*/\1/p'; }
echo "conformance: C API ${c_api:-0} runs passed (ctest: 1, 2 and 3 ranks), python front ends" \
  "$(conf_line 'python front ends' "$work/python.log") passed, tensorflow / keras 2" \
  "$(conf_line 'tensorflow' "$work/tensorflow.log") passed, mpi4py at 1-4 ranks within the mpi" \
  "pytest count; current releases $(grep -h '^current releases, conformance' "$work/current.log" |
    sed -n 's/.*: \([0-9]*\) passed.*/\1/p' | awk '{s += $1} END {print s + 0}') passed" \
  "(Keras 3 on each backend)"
# Which releases each environment tested (the oldest supported, and PyPI's newest).
grep -h '^python releases\|^tensorflow releases\|^current releases: [a-z]' "$work/python.log" \
  "$work/tensorflow.log" "$work/current.log" || true
echo "tests: $(( ${total:-0} - skipped + passed_total )) passed, 0 failed," \
  "$(( skipped + skipped_total )) skipped"
