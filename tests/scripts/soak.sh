#!/usr/bin/env bash
# Soak: thousands of distributed steps with random uneven splits on 2, 3 and 4 ranks, every step checked
# against the single-process result, and the resident memory after warm-up (tests/reliability/soak.cpp).
# Bounded: SECONDS_TOTAL (default 120) split over the three rank counts. Not part of the default suite.
# Usage: tests/scripts/soak.sh [total seconds]   BUILD_DIR (default build-rel), JOBS (default 2), SEED (1).
set -euo pipefail
cd "$(dirname "$0")/../.."
total=${1:-${SECONDS_TOTAL:-120}}
build=${BUILD_DIR:-build-rel}
jobs=${JOBS:-2}
scripts/deps.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DSIMCLR_WITH_CUDA=OFF -DSIMCLR_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$build" -j "$jobs" --target simclr_soak >/dev/null
per=$(( total / 3 ))
status=0
for k in 2 3 4; do
  # Hang guard: the run's own length plus a minute.
  if ! timeout -k 10 $(( per + 60 )) mpirun -np "$k" --oversubscribe --bind-to none \
       "$build/bin/simclr_soak" "$per" "${SEED:-1}"; then
    echo "soak: FAILED on $k ranks"
    status=1
  fi
done
exit "$status"
