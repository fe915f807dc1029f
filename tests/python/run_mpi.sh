#!/usr/bin/env bash
# Runs tests/python/test_mpi4py.py and the distributed conformance cases
# (tests/conformance/test_conformance_mpi4py.py) under mpirun at each rank count (default 1 2 3 4), every rank a
# pytest process writing its own log. Prints rank 0's summary per count (every rank's log on a
# failure) and, last, "mpi pytest: P passed, F failed, S skipped" summed over the counts (rank 0's).
# Usage: tests/python/run_mpi.sh [PYTHON]   (RANKS="2 4" to choose the counts)
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-python3}
ranks=${RANKS:-1 2 3 4}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
extra=()
if mpirun --version 2>/dev/null | grep -q "Open MPI\|OpenRTE"; then
  extra=(--oversubscribe --bind-to none)
fi
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
passed=0 skipped=0 failed=0 status=0
for n in $ranks; do
  mkdir -p "$logs/np$n"
  # Each rank's output goes to its own file; the rank comes from the launcher's environment.
  rc=0
  timeout 900 mpirun -np "$n" "${extra[@]}" sh -c \
    'exec "$0" -m pytest -q -p no:cacheprovider tests/python/test_mpi4py.py \
       tests/conformance/test_conformance_mpi4py.py \
       > "$1/rank${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-0}}.log" 2>&1' "$python" "$logs/np$n" || rc=$?
  summary=$(tail -n 1 "$logs/np$n/rank0.log" 2>/dev/null || true)
  echo "mpirun -np $n: ${summary:-no output}"
  count() { echo "$summary" | grep -o "[0-9]* $1" | grep -o "[0-9]*" || echo 0; }
  p=$(count passed) s=$(count skipped) f=$(count failed) e=$(count error)
  if [ "$rc" -ne 0 ] || [ "$p" -eq 0 ] || [ "$f" -ne 0 ] || [ "$e" -ne 0 ]; then
    echo "mpirun -np $n failed (exit $rc); every rank's log:"
    for log in "$logs/np$n"/rank*.log; do echo "==== $log"; tail -n 60 "$log"; done
    status=1
    f=$(( f + e + (p == 0 ? 1 : 0) ))
  fi
  passed=$((passed + p)) skipped=$((skipped + s)) failed=$((failed + f))
done
echo "mpi pytest: $passed passed, $failed failed, $skipped skipped"
exit "$status"
