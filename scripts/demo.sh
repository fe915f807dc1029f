#!/usr/bin/env bash
# The demo from a clean clone: install what is missing (Debian/Ubuntu), build simclr-train, train it on
# 2 MPI ranks (1 process when no MPI launcher is installed), and say where the outputs went.
#
#   scripts/demo.sh [OUT_DIR]          default OUT_DIR: out/demo
#   scripts/demo.sh --pytorch [OUT_DIR] the PyTorch demo instead: SimCLR on scikit-learn's 8x8 digits
#                                      with DistributedDataParallel and simclr_loss.torch on 2 ranks
#                                      (examples/python/simclr_digits.py); default OUT_DIR: out/digits
#
# Environment: SIMCLR_DEMO_NO_INSTALL=1 skips the package step; SIMCLR_BUILD_DIR (default build/);
# SIMCLR_DEMO_RANKS (default 2). Extra training flags: SIMCLR_DEMO_ARGS="--epochs 40 --seed 3".
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${1:-}" == "--pytorch" ]]; then
  shift
  exec "$root/scripts/demo_pytorch.sh" "$@"
fi
build="${SIMCLR_BUILD_DIR:-$root/build}"
out="${1:-$root/out/demo}"
ranks="${SIMCLR_DEMO_RANKS:-2}"
read -r -a train_args <<< "${SIMCLR_DEMO_ARGS:-}"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# ---- 1. packages: only what is missing, nothing at all when everything is there ----
required=(cmake g++ make libeigen3-dev nlohmann-json3-dev libopenmpi-dev openmpi-bin)
optional=(gnuplot-nox)  # for the loss-curve PNG; the demo runs without it
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
if [[ "${SIMCLR_DEMO_NO_INSTALL:-0}" != 1 ]] && command -v dpkg-query > /dev/null &&
   command -v apt-get > /dev/null; then
  missing=()
  for p in "${required[@]}"; do installed "$p" || missing+=("$p"); done
  # gnuplot only when no gnuplot at all is installed (any flavour will do).
  if ! command -v gnuplot > /dev/null; then
    for p in "${optional[@]}"; do installed "$p" || missing+=("$p"); done
  fi
  if ((${#missing[@]})); then
    sudo=()
    if [[ $(id -u) != 0 ]]; then sudo=(sudo); fi
    say "installing ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    # The optional package may be unavailable; the required ones may not.
    if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        "${missing[@]}"; then
      required_missing=()
      for p in "${required[@]}"; do installed "$p" || required_missing+=("$p"); done
      if ((${#required_missing[@]})); then
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
          "${required_missing[@]}"
      fi
    fi
  else
    say "packages: all present"
  fi
else
  say "packages: not managed here (no apt-get, or SIMCLR_DEMO_NO_INSTALL=1)"
fi

# ---- 2. configure + build just what the demo runs ----
jobs="$(nproc 2> /dev/null || echo 2)"
if [[ -f "$build/CMakeCache.txt" ]]; then
  say "configuring $build (existing cache kept)"
  cmake -S "$root" -B "$build" > /dev/null
else
  # Tests and benchmarks need GoogleTest / Google Benchmark, which the demo does not install.
  say "configuring $build"
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release \
    -DSIMCLR_BUILD_TESTS=OFF -DSIMCLR_BUILD_BENCHMARKS=OFF > /dev/null
fi
say "building simclr-train (-j$jobs)"
cmake --build "$build" --target simclr-train -j"$jobs"
train="$build/bin/simclr-train"

# ---- 3. train ----
mkdir -p "$out"
launch=()
if [[ "$ranks" -gt 1 ]] && command -v mpirun > /dev/null; then
  launch=(mpirun -np "$ranks")
  if mpirun --version 2>&1 | grep -q -E 'Open MPI|OpenRTE'; then
    # Containers run as root, and a small machine may have fewer cores than ranks.
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    launch+=(--oversubscribe)
    if [[ "$jobs" -lt "$ranks" ]]; then launch+=(--bind-to none); fi
  fi
  say "training on $ranks MPI ranks: ${launch[*]} $train --out $out ${train_args[*]}"
else
  say "training in one process (no mpirun): $train --out $out ${train_args[*]}"
fi
"${launch[@]}" "$train" --out "$out" "${train_args[@]}"

say "outputs in $out"
ls -1 "$out" | sed 's/^/    /'
