#!/usr/bin/env bash
# scripts/device_check.sh [OUTDIR]
#
# The GPU path's check on a machine with an NVIDIA GPU (docs/gpu.md): configures a fresh build, builds
# only the GPU targets, then, in this order: (1) a subset of the device tests with
# CUDA_LAUNCH_BLOCKING=1 under compute-sanitizer --tool memcheck; (2) the C++ device tests against
# the CPU path (ctest -L gpu); (3) the PyTorch CUDA route against the CPU path, local and over a
# one-rank NCCL process group (tests/device/device_torch_check.py parity, distributed; needs torch and
# nanobind); (3b) simclr_loss.jax's CUDA handlers against its CPU ones under jit and shard_map
# (tests/device/device_jax_check.py; needs jax with CUDA); (4) the benchmark: bfloat16,
# G=65536, d=256, as a fraction of the cuBLAS rate measured in the same run, with and without the
# symmetry, then the peak device memory at G=262144 and G=1048576 with the workspace the API
# reports; (5) the CUDA route side by side with the PyTorch peer formulation (autograd, bfloat16
# autocast) up to the largest G the peer holds. OUTDIR (default ./device-check-out) gets
# summary.json and logs.tar.gz (every log), and the summary is printed. Needs the CUDA toolkit, NCCL, a C++ compiler and
# cmake; Eigen3, nlohmann_json (required by the core), GoogleTest and MPI are found, installed with
# apt-get when that works, vendored (GoogleTest from /usr/src/googletest), or skipped (MPI, tests).
# Extra prefixes to search: SIMCLR_DEPS_PREFIX (a ;-list, passed as CMAKE_PREFIX_PATH).
#
# Machines that cannot install packages (no network): stage the header/static dependencies here first,
#   scripts/device_check.sh --dry-run               (the stages and their time caps; runs nothing)
#   scripts/device_check.sh --stage-deps [DIR]     (default DIR: <repo>/.device-deps, about 13 MB)
# which copies this machine's Eigen3, nlohmann_json and GoogleTest (headers, static libraries, CMake
# package files) into DIR; the check then uses <repo>/.device-deps automatically when it exists (git
# ignores it; copy it to the GPU machine with the checkout). NCCL is looked for in the
# CUDA toolkit, NCCL_ROOT, and the Python package nvidia-nccl-cu13/cu12 when one is installed.
#
# Exit status: 0 when everything that could run passed (also when no GPU is visible: the summary says
# "no GPU"), 1 when a build, test or benchmark failed, 2 when a required dependency is missing.
# Runs in under 8 minutes on a 16-core machine; each step has its own timeout.

set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Every stage of a run, in order, with its cap in seconds (each is also clipped to what is left of
# the run's deadline, SIMCLR_DEVICE_CHECK_SECONDS, default 450 s, so the whole check fits one call
# of 8 minutes). `stage NAME` below marks where each one starts; --dry-run prints this table and
# touches nothing (tests/scripts/device_check_dry_run.sh holds the two to each other).
STAGES=(
  "gpu_probe 10 nvidia-smi and nvcc: the GPU, the driver and the toolkit"
  "dependencies 150 Eigen, nlohmann_json, GoogleTest, MPI, NCCL: probe, apt-get or .device-deps"
  "configure 180 a fresh CMake build with SIMCLR_WITH_CUDA=ON"
  "build 420 the GPU targets only (simclr-gpu-bench, the GPU tests)"
  "memcheck 90 compute-sanitizer memcheck on tests/gpu/memcheck_filter.txt (a pattern matching no test fails)"
  "ctest_gpu 200 ctest -L gpu: the C++ device tests against the CPU path, a one-rank NcclCommunicator from an ncclUniqueId"
  "torch_build 240 simclr_loss._core and simclr_loss._device"
  "torch_parity 90 device_torch_check.py parity"
  "torch_distributed 120 device_torch_check.py distributed (a one-rank NCCL group)"
  "jax 150 simclr_loss._jax_ffi_cuda built, device_jax_check.py parity (jit and shard_map on one GPU)"
  "bench_f32_parity 90 simclr-gpu-bench --check, float32, against the CPU path"
  "bench_bf16 150 simclr-gpu-bench G=65536 d=256 bfloat16 against the cuBLAS rate"
  "bench_bf16_no_symmetry 60 the same without the symmetry"
  "bench_bf16_tiles_2048 45 the same with 2048 x 2048 tiles (only with over 240 s left)"
  "torch_memory 100 device_torch_check.py memory (G=262144, 1048576)"
  "torch_peer 150 device_torch_check.py peer"
)
if [ "${1:-}" = "--dry-run" ]; then
  echo "scripts/device_check.sh: the stages of a run, in order (cap in seconds; each is clipped to" \
    "what is left of the ${SIMCLR_DEVICE_CHECK_SECONDS:-450} s deadline)"
  i=0
  for entry in "${STAGES[@]}"; do
    i=$((i + 1))
    read -r name cap what <<< "$entry"
    printf '%2d. %-24s %4ss  %s\n' "$i" "$name" "$cap" "$what"
  done
  echo "deadline: ${SIMCLR_DEVICE_CHECK_SECONDS:-450} s in all; nothing was run (--dry-run)"
  exit 0
fi

if [ "${1:-}" = "--stage-deps" ]; then
  DEST="${2:-$ROOT/.device-deps}"
  mkdir -p "$DEST/include" "$DEST/share" "$DEST/lib/cmake" || exit 2
  copy() { [ -e "$1" ] && cp -a "$1" "$2" && echo "staged $1"; }
  copy /usr/include/eigen3 "$DEST/include/" || { echo "no /usr/include/eigen3"; exit 2; }
  copy /usr/share/eigen3 "$DEST/share/" || copy /usr/lib/cmake/eigen3 "$DEST/lib/cmake/"
  copy /usr/include/nlohmann "$DEST/include/" || { echo "no /usr/include/nlohmann"; exit 2; }
  copy /usr/share/cmake/nlohmann_json "$DEST/lib/cmake/" || copy /usr/lib/cmake/nlohmann_json "$DEST/lib/cmake/"
  if [ -d /usr/include/gtest ]; then
    copy /usr/include/gtest "$DEST/include/"
    copy /usr/include/gmock "$DEST/include/"
    # Debian's layout kept: GTestTargets.cmake finds the prefix 4 levels up from itself.
    mkdir -p "$DEST/lib/x86_64-linux-gnu/cmake"
    for f in /usr/lib/x86_64-linux-gnu/libgtest*.a /usr/lib/x86_64-linux-gnu/libgmock*.a; do
      copy "$f" "$DEST/lib/x86_64-linux-gnu/"
    done
    copy /usr/lib/x86_64-linux-gnu/cmake/GTest "$DEST/lib/x86_64-linux-gnu/cmake/"
  fi
  du -sh "$DEST"
  exit 0
fi
OUT="$(mkdir -p "${1:-./device-check-out}" && cd "${1:-./device-check-out}" && pwd)"
BUILD="${SIMCLR_DEVICE_CHECK_BUILD:-$ROOT/build-device-check}"
JOBS="${SIMCLR_DEVICE_CHECK_JOBS:-16}"
BENCH_BATCH="${SIMCLR_BENCH_BATCH:-65536}"
BENCH_DIM="${SIMCLR_BENCH_DIM:-256}"
START=$(date +%s)
export NCCL_SOCKET_IFNAME=lo  # one machine: NCCL's bootstrap stays on the loopback interface
DEADLINE=$((START + ${SIMCLR_DEVICE_CHECK_SECONDS:-450}))  # 7.5 minutes for everything
SUMMARY="$OUT/summary.json"
: > "$OUT/device_check.log"

log() { echo "[device_check $(($(date +%s) - START))s] $*" | tee -a "$OUT/device_check.log" >&2; }
left() { echo $((DEADLINE - $(date +%s))); }
stage() { log "stage $1 ($(left)s left)"; }
# JSON string escaping for short values (quotes, backslashes, control characters dropped).
jstr() { printf '"%s"' "$(printf '%s' "$1" | tr -d '\000-\037' | sed 's/\\/\\\\/g; s/"/\\"/g')"; }

STATUS="ok"
NOTES=()
declare -A FIELDS=()
note() { NOTES+=("$1"); log "$1"; }

write_summary() {
  local elapsed=$(($(date +%s) - START)) notes="" k fields=""
  for k in "${NOTES[@]+"${NOTES[@]}"}"; do notes+="${notes:+,}$(jstr "$k")"; done
  for k in "${!FIELDS[@]}"; do fields+=",\"$k\":${FIELDS[$k]}"; done
  printf '{"status":%s,"elapsed_seconds":%d,"outdir":%s%s,"notes":[%s]}\n' \
    "$(jstr "$STATUS")" "$elapsed" "$(jstr "$OUT")" "$fields" "$notes" > "$SUMMARY"
  cat "$SUMMARY"
}
finish() {  # finish STATUS EXIT_CODE
  STATUS="$1"
  write_summary > /dev/null
  # Every log in one tarball beside summary.json (the files that come back are few).
  (cd "$OUT" && find . -maxdepth 1 -type f ! -name summary.json ! -name logs.tar.gz -printf '%P\n' |
    tar -czf logs.tar.gz -T - 2> /dev/null && find . -maxdepth 1 -type f ! -name summary.json \
    ! -name logs.tar.gz -delete)
  cat "$SUMMARY"
  exit "$2"
}

# ---- 1. the GPU and the toolkit ----
stage gpu_probe
if [ -d /usr/local/cuda/bin ] && [[ ":$PATH:" != *":/usr/local/cuda/bin:"* ]]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
if ! command -v nvidia-smi > /dev/null 2>&1; then
  note "nvidia-smi not found: no NVIDIA driver on this machine"
  FIELDS[gpu]='"none"'
  finish "no GPU" 0
fi
if ! nvidia-smi -L > "$OUT/nvidia-smi.txt" 2>&1 || ! grep -q '^GPU ' "$OUT/nvidia-smi.txt"; then
  note "nvidia-smi sees no GPU: $(head -c 200 "$OUT/nvidia-smi.txt")"
  FIELDS[gpu]='"none"'
  finish "no GPU" 0
fi
nvidia-smi >> "$OUT/nvidia-smi.txt" 2>&1 || true
FIELDS[gpus]=$(grep -c '^GPU ' "$OUT/nvidia-smi.txt")
FIELDS[gpu]=$(jstr "$(grep -m1 '^GPU ' "$OUT/nvidia-smi.txt" | sed 's/^GPU [0-9]*: //; s/ (UUID.*//')")
FIELDS[driver]=$(jstr "$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)")
if ! command -v nvcc > /dev/null 2>&1; then
  note "nvcc not found (looked in PATH and /usr/local/cuda/bin)"
  finish "missing-dependencies" 2
fi
# CMake and a build tool: Makefiles where make exists, else Ninja.
if ! command -v cmake > /dev/null 2>&1; then
  note "cmake not found"
  finish "missing-dependencies" 2
fi
GEN=()
if ! command -v make > /dev/null 2>&1; then
  if command -v ninja > /dev/null 2>&1; then
    GEN=(-G Ninja)
  else
    note "neither make nor ninja found: CMake has no build tool"
    finish "missing-dependencies" 2
  fi
fi
NVCC_VERSION=$(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
FIELDS[nvcc]=$(jstr "$NVCC_VERSION")
log "GPU ${FIELDS[gpu]}, driver ${FIELDS[driver]}, nvcc ${FIELDS[nvcc]}, $(nproc) cores, $(left)s left"

# ---- 2. dependencies: probe with CMake's own find logic ----
PREFIX_PATH="${SIMCLR_DEPS_PREFIX:-}"
if [ -d "$ROOT/.device-deps" ]; then
  PREFIX_PATH="${PREFIX_PATH:+$PREFIX_PATH;}$ROOT/.device-deps"
  log "using staged dependencies in $ROOT/.device-deps"
fi
# NCCL: the toolkit's, NCCL_ROOT, else a pip wheel's (nvidia/nccl/{include,lib}; only libnccl.so.2).
if [ -z "${NCCL_ROOT:-}" ] && [ ! -f "$(dirname "$(dirname "$(command -v nvcc)")")/include/nccl.h" ] &&
   command -v python3 > /dev/null 2>&1; then
  nccl_dir=$(timeout 30 python3 -c 'import nvidia.nccl as m, os; print(os.path.dirname(m.__file__) if m.__file__ else list(m.__path__)[0])' 2> /dev/null)
  if [ -n "$nccl_dir" ] && [ -f "$nccl_dir/include/nccl.h" ]; then
    export NCCL_ROOT="$nccl_dir"
    log "NCCL from the Python package in $nccl_dir"
  fi
fi
probe() {
  local dir="$BUILD/_probe"
  rm -rf "$dir" && mkdir -p "$dir"
  cat > "$dir/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.25)
project(probe LANGUAGES CXX)
find_package(Eigen3 3.3 NO_MODULE QUIET)
find_package(nlohmann_json 3.9 QUIET)
find_package(GTest QUIET)
find_package(MPI COMPONENTS CXX QUIET)
find_package(OpenMP COMPONENTS CXX QUIET)
message(STATUS "PROBE eigen=${Eigen3_FOUND} json=${nlohmann_json_FOUND} gtest=${GTest_FOUND} mpi=${MPI_CXX_FOUND} openmp=${OpenMP_CXX_FOUND}")
EOF
  cmake "${GEN[@]+"${GEN[@]}"}" -S "$dir" -B "$dir/build" -DCMAKE_PREFIX_PATH="$PREFIX_PATH" 2>&1 | tee -a "$OUT/probe.log" |
    sed -n 's/.*PROBE //p' | tail -1
}
have() {
  # Test knobs to exercise the fallbacks on a machine that has everything.
  [ "$1" = gtest ] && [ "${SIMCLR_DEVICE_CHECK_NO_SYSTEM_GTEST:-0}" = 1 ] && [[ "$PREFIX_PATH" != *_gtest_prefix* ]] && return 1
  [ "$1" = mpi ] && [ "${SIMCLR_DEVICE_CHECK_NO_MPI:-0}" = 1 ] && return 1
  [[ " $PROBE " == *" $1=1 "* || " $PROBE " == *" $1=TRUE "* || " $PROBE " == *" $1=ON "* ]]
}
mkdir -p "$BUILD"
PROBE=$(probe)
log "dependencies: $PROBE"

missing_pkgs=()
have eigen || missing_pkgs+=(libeigen3-dev)
have json || missing_pkgs+=(nlohmann-json3-dev)
have gtest || [ -f /usr/src/googletest/CMakeLists.txt ] || missing_pkgs+=(libgtest-dev)
have mpi || missing_pkgs+=(libopenmpi-dev openmpi-bin)
# The package mirror apt would use, resolved first: an offline machine (the usual GPU machine) then
# skips apt-get in a second instead of waiting out its timeout.
apt_reachable() {
  local host
  # A proxy resolves for apt: then only trying tells.
  apt-config dump 2> /dev/null | grep -qi 'Acquire::.*Proxy' && return 0
  host=$(grep -hoE '^(deb|URIs:)[^#]*https?://[^/ ]+' /etc/apt/sources.list \
    /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2> /dev/null |
    grep -oE 'https?://[^/ ]+' | head -n 1 | sed -E 's#https?://##')
  [ -n "$host" ] && timeout 5 getent hosts "$host" > /dev/null 2>&1
}
if [ ${#missing_pkgs[@]} -gt 0 ] && [ "${SIMCLR_DEVICE_CHECK_NO_APT:-0}" != 1 ] && ! apt_reachable; then
  note "missing ${missing_pkgs[*]}; the package mirror does not resolve (offline), so apt-get is not tried"
elif [ ${#missing_pkgs[@]} -gt 0 ] && [ "${SIMCLR_DEVICE_CHECK_NO_APT:-0}" != 1 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo > /dev/null 2>&1 && sudo -n true 2> /dev/null && SUDO="sudo -n"
  if command -v apt-get > /dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
    log "trying apt-get install ${missing_pkgs[*]} (offline machines fail here quickly)"
    # Capped by what is left of the deadline, so a slow mirror cannot eat the build's time.
    if timeout $(( $(left) / 6 < 60 ? $(left) / 6 + 1 : 60 )) $SUDO apt-get update -qq >> "$OUT/apt.log" 2>&1 &&
       DEBIAN_FRONTEND=noninteractive timeout $(( $(left) / 3 < 150 ? $(left) / 3 + 1 : 150 )) $SUDO apt-get install -y -qq --no-install-recommends \
         "${missing_pkgs[@]}" >> "$OUT/apt.log" 2>&1; then
      note "installed with apt-get: ${missing_pkgs[*]}"
      PROBE=$(probe)
      log "dependencies after apt-get: $PROBE"
    else
      note "apt-get could not install ${missing_pkgs[*]} (offline?); see apt.log"
    fi
  else
    note "missing ${missing_pkgs[*]} and apt-get is not usable here"
  fi
fi
if ! have eigen || ! have json || ! have openmp; then
  have eigen || note "Eigen3 (>= 3.3) not found: the core needs it (install libeigen3-dev or set SIMCLR_DEPS_PREFIX)"
  have json || note "nlohmann_json (>= 3.9) not found: the core needs it (install nlohmann-json3-dev or set SIMCLR_DEPS_PREFIX)"
  have openmp || note "OpenMP for C++ not found: the core needs it"
  finish "missing-dependencies" 2
fi

# GoogleTest: the package, else built from /usr/src/googletest into the build tree, else no tests.
BUILD_TESTS=ON
if ! have gtest; then
  if [ -f /usr/src/googletest/CMakeLists.txt ]; then
    log "building GoogleTest from /usr/src/googletest"
    if timeout 180 cmake "${GEN[@]+"${GEN[@]}"}" -S /usr/src/googletest -B "$BUILD/_gtest" -DCMAKE_BUILD_TYPE=Release \
         -DCMAKE_INSTALL_PREFIX="$BUILD/_gtest_prefix" -DBUILD_GMOCK=OFF > "$OUT/gtest.log" 2>&1 &&
       timeout 180 cmake --build "$BUILD/_gtest" -j "$JOBS" >> "$OUT/gtest.log" 2>&1 &&
       cmake --install "$BUILD/_gtest" >> "$OUT/gtest.log" 2>&1; then
      PREFIX_PATH="${PREFIX_PATH:+$PREFIX_PATH;}$BUILD/_gtest_prefix"
      note "GoogleTest built from /usr/src/googletest"
    else
      BUILD_TESTS=OFF
      note "GoogleTest could not be built from /usr/src/googletest (gtest.log): GPU tests skipped"
    fi
  else
    BUILD_TESTS=OFF
    note "GoogleTest not found: GPU tests skipped (the benchmark's float32 parity check still runs)"
  fi
fi
stage dependencies
WITH_MPI=AUTO
if ! have mpi; then
  WITH_MPI=OFF
  note "MPI not found: built without simclr_nccl; the NCCL tests are skipped"
fi

# ---- 3. configure a fresh build and build only the GPU targets ----
stage configure
rm -rf "$BUILD/CMakeCache.txt" "$BUILD/CMakeFiles"
log "configuring $BUILD"
if ! timeout 180 cmake "${GEN[@]+"${GEN[@]}"}" -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DSIMCLR_WITH_CUDA=ON \
     -DSIMCLR_WITH_MPI="$WITH_MPI" -DSIMCLR_BUILD_TESTS="$BUILD_TESTS" -DSIMCLR_BUILD_TOOLS=ON \
     -DSIMCLR_BUILD_BENCHMARKS=OFF -DSIMCLR_BUILD_RELIABILITY_TESTS=OFF -DSIMCLR_BUILD_FUZZERS=OFF \
     -DCMAKE_PREFIX_PATH="$PREFIX_PATH" > "$OUT/configure.log" 2>&1; then
  note "configure failed: $(grep -m1 -i 'error' "$OUT/configure.log" | head -c 300)"
  FIELDS[configure]='"failed"'
  finish "configure-failed" 1
fi
FIELDS[configure]='"ok"'
stage build
targets=(simclr-gpu-bench)
[ "$BUILD_TESTS" = ON ] && targets+=(simclr_gpu_tests simclr_c_api_device_test)
[ "$BUILD_TESTS" = ON ] && grep -q 'simclr_nccl_tests' "$BUILD/tests/gpu/CTestTestfile.cmake" 2> /dev/null &&
  targets+=(simclr_nccl_tests)
log "building ${targets[*]} with -j$JOBS"
if ! timeout $(( $(left) > 60 ? $(left) - 30 : 30 )) cmake --build "$BUILD" -j "$JOBS" --target "${targets[@]}" \
     > "$OUT/build.log" 2>&1; then
  note "build failed: $(grep -m1 -E 'error' "$OUT/build.log" | head -c 300)"
  FIELDS[build]='"failed"'
  finish "build-failed" 1
fi
FIELDS[build]='"ok"'
FIELDS[build_warnings]=$(grep -c -i 'warning' "$OUT/build.log" || true)

# ---- 4. GPU tests: (1) memcheck on a subset with blocking launches, (2) all of them ----
FAILED=0
stage memcheck
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2> /dev/null || true)
if [ "$BUILD_TESTS" = ON ] && [ -n "$SANITIZER" ]; then
  log "compute-sanitizer memcheck on a subset ($(left)s left)"
  # tests/gpu/memcheck_filter.txt; a pattern that matches no test fails the check.
  if ! MEMCHECK_FILTER=$("$ROOT/tests/gpu/check_filter.sh" "$BUILD/bin/simclr_gpu_tests" \
         "$ROOT/tests/gpu/memcheck_filter.txt" 2> "$OUT/memcheck.log"); then
    FIELDS[memcheck]='"failed"'
    FAILED=1
    note "memcheck filter: $(head -c 300 "$OUT/memcheck.log")"
  elif CUDA_LAUNCH_BLOCKING=1 timeout 90 "$SANITIZER" --tool memcheck --error-exitcode 9 \
       "$BUILD/bin/simclr_gpu_tests" --gtest_filter="$MEMCHECK_FILTER" \
       > "$OUT/memcheck.log" 2>&1; then
    FIELDS[memcheck]='"ok"'
  else
    FIELDS[memcheck]='"failed"'
    FAILED=1
    note "compute-sanitizer memcheck failed: $(grep -m1 -E 'ERROR|Invalid|FAILED' "$OUT/memcheck.log" | head -c 300)"
  fi
elif [ "$BUILD_TESTS" = ON ]; then
  # Not a failure of the check: the tool is not part of every CUDA installation.
  FIELDS[memcheck]='"not available"'
  note "compute-sanitizer not found: memcheck skipped"
fi
stage ctest_gpu
if [ "$BUILD_TESTS" = ON ]; then
  log "running the GPU tests ($(left)s left)"
  timeout $(( $(left) > 200 ? 200 : $(left) )) ctest --test-dir "$BUILD" -L gpu --output-on-failure \
    --timeout 180 > "$OUT/ctest.log" 2>&1
  tests=""
  while read -r name result; do
    tests+="${tests:+,}$(jstr "$name"):$(jstr "$result")"
    [ "$result" = "Passed" ] || [ "$result" = "Skipped" ] || FAILED=1
    # np2 skips on a one-GPU machine by design; any other skip means the runtime saw no device.
    if [ "$result" = "Skipped" ] && [[ "$name" != *.np2 || "${FIELDS[gpus]}" -ge 2 ]]; then
      FAILED=1
      note "$name skipped although nvidia-smi sees ${FIELDS[gpus]} GPU(s): run it by hand to see why"
    fi
  done < <(sed -n 's/^ *[0-9]*\/[0-9]* Test *#[0-9]*: \([^ ]*\) \.*[* ]*\([A-Za-z]*\).*/\1 \2/p' "$OUT/ctest.log")
  FIELDS[tests]="{${tests}}"
  [ -z "$tests" ] && { FAILED=1; note "ctest ran no test (timeout?): see ctest.log"; }
  [ $FAILED -eq 1 ] && note "a GPU test failed: see ctest.log"
fi

NO_RUNTIME_DEVICE=0
PY_READY=0
# ---- 5. the PyTorch CUDA route: build simclr_loss._core and simclr_loss._device into the same tree ----
pycheck() {  # pycheck NAME TIMEOUT: tests/device/device_torch_check.py NAME, its JSON line as a field
  local name=$1 limit=$2 rc=0
  if [ "$(left)" -lt 20 ]; then note "torch $name skipped: out of time"; return; fi
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  log "torch $name"
  PYTHONPATH="$PYSTAGE" timeout "$limit" python3 "$ROOT/tests/device/device_torch_check.py" "$name" \
    > "$OUT/torch_$name.json" 2> "$OUT/torch_$name.log" || rc=$?
  if [ -s "$OUT/torch_$name.json" ]; then FIELDS["torch_$name"]=$(tail -1 "$OUT/torch_$name.json"); fi
  if [ $rc -ne 0 ]; then
    FAILED=1
    note "torch $name failed (exit $rc): $(tail -c 300 "$OUT/torch_$name.log")"
  fi
}
stage torch_build
PYSTAGE="$BUILD/pystage"
if [ "$NO_RUNTIME_DEVICE" = 0 ] && python3 -c 'import torch, nanobind; assert torch.cuda.is_available()' \
     > "$OUT/torch_probe.log" 2>&1; then
  log "building simclr_loss._core and simclr_loss._device ($(left)s left)"
  if timeout 120 cmake -S "$ROOT" -B "$BUILD" -DSIMCLR_BUILD_PYTHON=ON \
       -DPython_EXECUTABLE="$(command -v python3)" >> "$OUT/configure.log" 2>&1 &&
     timeout $(( $(left) > 150 ? 120 : $(left) / 2 )) cmake --build "$BUILD" -j "$JOBS" \
       --target _core _device > "$OUT/build_python.log" 2>&1; then
    rm -rf "$PYSTAGE" && mkdir -p "$PYSTAGE/simclr_loss"
    cp "$ROOT"/python/simclr_loss/*.py "$PYSTAGE/simclr_loss/"
    find "$BUILD/python" -maxdepth 1 -name '_core*.so' -o -maxdepth 1 -name '_device*.so' |
      xargs -r cp -t "$PYSTAGE/simclr_loss/"
    PY_READY=1
  else
    FAILED=1
    note "the Python extension did not build: $(grep -m1 -E 'rror' "$OUT/build_python.log" "$OUT/configure.log" | head -c 300)"
  fi
else
  note "torch with CUDA or nanobind not importable: the torch route is not checked ($(tail -c 200 "$OUT/torch_probe.log"))"
fi

stage torch_parity
[ "$PY_READY" = 1 ] && pycheck parity 90
# The distributed route (process_group) on a one-rank NCCL group: NCCL takes one rank per GPU, so
# more ranks need more GPUs.
stage torch_distributed
[ "$PY_READY" = 1 ] && pycheck distributed 120

# ---- 5b. simclr_loss.jax on the GPU: the CUDA handlers against the CPU ones ----
stage jax
if [ "$NO_RUNTIME_DEVICE" = 0 ] && [ "$(left)" -gt 60 ] &&
   python3 -c 'import jax, nanobind; assert jax.devices("gpu")' > "$OUT/jax_probe.log" 2>&1; then
  log "building simclr_loss._core, _jax_ffi and _jax_ffi_cuda ($(left)s left)"
  JAXSTAGE="$BUILD/jaxstage"
  if timeout 60 cmake -S "$ROOT" -B "$BUILD" -DSIMCLR_BUILD_PYTHON=ON \
       -DPython_EXECUTABLE="$(command -v python3)" >> "$OUT/configure.log" 2>&1 &&
     timeout 90 cmake --build "$BUILD" -j "$JOBS" --target _core _jax_ffi _jax_ffi_cuda \
       > "$OUT/build_jax.log" 2>&1; then
    rm -rf "$JAXSTAGE" && mkdir -p "$JAXSTAGE/simclr_loss"
    cp "$ROOT"/python/simclr_loss/*.py "$JAXSTAGE/simclr_loss/"
    find "$BUILD/python" -maxdepth 1 \( -name '_core*.so' -o -name '_jax_ffi*.so' \) |
      xargs -r cp -t "$JAXSTAGE/simclr_loss/"
    rc=0
    PYTHONPATH="$JAXSTAGE" timeout $(( $(left) > 60 ? 60 : $(left) )) python3 \
      "$ROOT/tests/device/device_jax_check.py" parity > "$OUT/jax_parity.json" \
      2> "$OUT/jax_parity.log" || rc=$?
    [ -s "$OUT/jax_parity.json" ] && FIELDS[jax_parity]=$(tail -1 "$OUT/jax_parity.json")
    if [ $rc -ne 0 ]; then
      FAILED=1
      note "jax parity failed (exit $rc): $(tail -c 300 "$OUT/jax_parity.log")"
    fi
  else
    FAILED=1
    note "the JAX GPU handlers did not build: $(grep -m1 -E 'rror' "$OUT/build_jax.log" "$OUT/configure.log" | head -c 300)"
  fi
else
  note "jax with a GPU or nanobind not importable, or no time: simclr_loss.jax on the GPU is not checked ($(tail -c 200 "$OUT/jax_probe.log" 2> /dev/null))"
fi

# ---- 6. benchmark: a small float32 parity run, the target run, and a tile sweep ----
BENCH="$BUILD/bin/simclr-gpu-bench"
bench() {  # bench NAME TIMEOUT ARGS...
  local name=$1 limit=$2
  shift 2
  if [ "$NO_RUNTIME_DEVICE" = 1 ]; then return; fi
  if [ "$(left)" -lt 20 ]; then note "bench $name skipped: out of time"; return; fi
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  log "bench $name: $*"
  local rc=0
  timeout "$limit" "$BENCH" "$@" > "$OUT/bench_$name.json" 2> "$OUT/bench_$name.log" || rc=$?
  if [ $rc -eq 0 ]; then
    FIELDS["bench_$name"]=$(tail -1 "$OUT/bench_$name.json")
    return
  fi
  FAILED=1
  if [ $rc -eq 3 ]; then
    NO_RUNTIME_DEVICE=1
    note "the CUDA runtime sees no device although nvidia-smi does (driver too old for CUDA $NVCC_VERSION?): $(tail -c 200 "$OUT/bench_$name.log")"
  elif [ $rc -eq 124 ]; then
    note "bench $name timed out after ${limit}s"
  else
    note "bench $name failed (exit $rc): $(tail -c 300 "$OUT/bench_$name.log")"
  fi
}
stage bench_f32_parity
bench f32_parity 90 --batch 2048 --dim 128 --dtype float32 --repeat 3 --check
stage bench_bf16
bench bf16 150 --batch "$BENCH_BATCH" --dim "$BENCH_DIM" --dtype bfloat16 --repeat 5
stage bench_bf16_no_symmetry
# The same without using the symmetry of S and M: what it buys on this GPU.
bench bf16_no_symmetry 60 --batch "$BENCH_BATCH" --dim "$BENCH_DIM" --dtype bfloat16 --repeat 3 \
  --no-symmetry
# One tile size beside the default (the square 2048 tiles whose float32 logits stay in L2), if time.
stage bench_bf16_tiles_2048
[ "$(left)" -gt 240 ] && bench bf16_tiles_2048 45 --batch "$BENCH_BATCH" --dim "$BENCH_DIM" \
  --dtype bfloat16 --repeat 3 --tile-rows 2048 --tile-cols 2048
if [ -n "${FIELDS[bench_bf16]:-}" ]; then
  frac=$(sed -n 's/.*"fraction_of_cublas":\([0-9.eE+-]*\).*/\1/p' <<< "${FIELDS[bench_bf16]}")
  FIELDS[fraction_of_cublas]=${frac:-null}
  FIELDS[target_fraction]=0.4
  if [ -n "$frac" ] && awk "BEGIN{exit !($frac >= 0.4)}"; then FIELDS[target_met]=true; else FIELDS[target_met]=false; fi
fi
if [ -n "${FIELDS[bench_f32_parity]:-}" ]; then
  gerr=$(sed -n 's/.*"check_grad_rel_err":\([0-9.eE+-]*\).*/\1/p' <<< "${FIELDS[bench_f32_parity]}")
  lerr=$(sed -n 's/.*"check_loss_rel_err":\([0-9.eE+-]*\).*/\1/p' <<< "${FIELDS[bench_f32_parity]}")
  if [ -n "$gerr" ] && [ -n "$lerr" ] && awk "BEGIN{exit !($gerr <= 1e-5 && $lerr <= 1e-5)}"; then
    FIELDS[f32_parity_ok]=true
  else
    FIELDS[f32_parity_ok]=false
    FAILED=1
    note "float32 parity above 1e-5: loss $lerr, gradient $gerr"
  fi
fi

# ---- 7. memory at large G with the API's workspace; the peer formulation side by side ----
if [ "$PY_READY" = 1 ]; then
  stage torch_memory
  pycheck memory 100
  stage torch_peer
  pycheck peer 150
fi

[ $FAILED -eq 0 ] && finish "ok" 0
finish "failed" 1
