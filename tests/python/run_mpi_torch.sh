#!/usr/bin/env bash
# Runs simclr_loss.torch's multi-process checks directly under mpirun, without pytest: torch_mpi_worker.py at
# each rank count (default 1 2 3 4: every split, errors on one rank, the autograd reference),
# torch_mpi_errors_worker.py at 2 and 3 ranks (one rank's input error raised on every rank, promptly) and
# torch_ddp_worker.py at 2 and 3 ranks in float32 and float64 (DDP against one process). pytest runs
# the same through tests/python/test_torch_mpi.py (part of tests/scripts/python_test.sh); this is for a
# quick run by hand. Last line: "mpi torch: P passed, F failed".
# Usage: tests/python/run_mpi_torch.sh [PYTHON]   (RANKS="2 4" to choose the worker's counts)
set -uo pipefail
cd "$(dirname "$0")/../.."
python=${1:-python3}
ranks=${RANKS:-1 2 3 4}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
extra=()
if mpirun --version 2>/dev/null | grep -q "Open MPI\|OpenRTE"; then
  extra=(--oversubscribe --bind-to none)
fi
store=$(mktemp -d)
trap 'rm -rf "$store"' EXIT
passed=0 failed=0 run=0
launch() {  # launch NAME RANKS SCRIPT ARGS...: a new file:// store for every run
  local name=$1 n=$2 script=$3
  shift 3
  run=$((run + 1))
  if out=$(timeout 900 mpirun -np "$n" "${extra[@]}" "$python" "tests/python/$script" \
      "file://$store/run$run" "$@" 2>&1); then
    echo "$(echo "$out" | grep -E '^torch_(mpi|mpi_errors|ddp)_worker: OK' | tail -n 1)"
    passed=$((passed + 1))
  else
    echo "FAILED: $name (mpirun -np $n $script $*)"
    echo "$out" | tail -n 40
    failed=$((failed + 1))
  fi
}
for n in $ranks; do launch "splits and errors" "$n" torch_mpi_worker.py; done
for n in 2 3; do launch "errors of one rank" "$n" torch_mpi_errors_worker.py; done
for n in 2 3; do
  for dtype in float32 float64; do launch "DDP" "$n" torch_ddp_worker.py "$dtype"; done
done
echo "mpi torch: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
