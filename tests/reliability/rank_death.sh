#!/usr/bin/env bash
# A rank exits (without MPI_Finalize) while the others wait in a timed collective.
#  1. Open MPI 4 default: mpirun notices the improper exit and tears the whole job down, usually before
#     the survivors' timeout; we check only that the job ends (no hang) with a non-zero status.
#  2. mpirun --enable-recovery: the job is kept; every survivor raises CommError naming the
#     collective, its rank and the time waited, within the timeout.
# Usage: rank_death.sh MPIEXEC SIMCLR_FAULT_INJECT
set -uo pipefail
mpiexec=$1
prog=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
# An ASan build: the dying rank skips the leak check by design (_exit); nothing else changes.
common=(-np 3 --oversubscribe --bind-to none)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
fail=0

timeout -k 5 60 "$mpiexec" "${common[@]}" "$prog" die 2000 >"$log" 2>&1
rc=$?
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  echo "FAIL default: the job hung after a rank died"; cat "$log"; fail=1
elif [ "$rc" = 0 ]; then
  echo "FAIL default: mpirun reported success although a rank exited without MPI_Finalize"; cat "$log"; fail=1
else
  echo "ok default: Open MPI ended the job (status $rc) after rank 2 exited"
fi

timeout -k 5 60 "$mpiexec" "${common[@]}" --enable-recovery "$prog" die 2000 >"$log" 2>&1
rc=$?
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  echo "FAIL recovery: the survivors hung"; cat "$log"; fail=1
fi
for r in 0 1; do
  line=$(grep "^SURVIVOR rank $r " "$log" || true)
  if [[ "$line" =~ "mpi: barrier timed out on rank $r of 3 after "[0-9]+" ms (timeout 2000 ms)" ]]; then
    echo "ok recovery: $line"
  else
    echo "FAIL recovery: rank $r did not report the CommError"; cat "$log"; fail=1
  fi
done
if grep -q "unexpected" "$log"; then echo "FAIL: a barrier completed without the dead rank"; fail=1; fi
exit "$fail"
