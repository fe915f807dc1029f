#!/usr/bin/env bash
# Multi-host run on one machine: three fake hosts (h1, h2, h3) in network namespaces, joined by veth
# pairs to a bridge in a fourth, "switch" namespace; addresses only in 10.77.0.0/24 and only inside the
# namespaces. Open MPI runs across them over TCP (btl tcp,self), its launch agent entering a host's
# namespace (and giving it its own hostname). Then:
#   1. the MPI tests (distributed loss, reliability) with one rank per host;
#   2. simclr_fault_inject steps: distributed steps until h3's link is cut mid-run (ip link set down,
#      from outside); the ranks report a clear CommError within the timeout.
# Needs root / CAP_NET_ADMIN; otherwise exits 77 (CTest SKIP_RETURN_CODE) with one line. The
# namespaces are always removed (trap). Every mpirun is bounded by `timeout`.
# Usage: tests/scripts/multihost.sh [BUILD_DIR]   (default build; it must hold the MPI test binaries)
set -uo pipefail
cd "$(dirname "$0")/../.."
build=$(cd "${1:-build}" && pwd)
bin=$build/bin
pfx=simclr$$
hosts=(h1 h2 h3)
subnet=10.77.0.0/24
timeout_ms=3000

for b in simclr_mpi_tests simclr_reliability_mpi_tests simclr_fault_inject; do
  [ -x "$bin/$b" ] || { echo "multihost: $bin/$b is missing (build the tests first)"; exit 1; }
done
if ! command -v ip >/dev/null || ! ip netns add "${pfx}probe" 2>/dev/null; then
  echo "multihost: SKIPPED: cannot create network namespaces here (needs root / CAP_NET_ADMIN and iproute2)"
  exit 77
fi
ip netns del "${pfx}probe"

work=$(mktemp -d)
cleanup() {
  for ns in "${hosts[@]}" sw; do
    # Processes we started inside our namespaces (orted and ranks left by a cut link).
    for pid in $(ip netns pids "$pfx$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
    ip netns del "$pfx$ns" 2>/dev/null
  done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

set -e
ip netns add "${pfx}sw"
ip -n "${pfx}sw" link add br0 type bridge
ip -n "${pfx}sw" link set br0 up
i=0
for h in "${hosts[@]}"; do
  i=$((i + 1))
  ip netns add "$pfx$h"
  # Created inside the host's namespace, the peer end moved to the switch: nothing in the root one.
  ip -n "$pfx$h" link add eth0 type veth peer name "p$h" netns "${pfx}sw"
  ip -n "$pfx$h" addr add "10.77.0.$i/24" dev eth0
  ip -n "$pfx$h" link set lo up
  ip -n "$pfx$h" link set eth0 up
  ip -n "${pfx}sw" link set "p$h" master br0
  ip -n "${pfx}sw" link set "p$h" up
done
set +e

# Launch agent: `agent HOST command...` runs the command in HOST's namespace under HOST's hostname.
cat >"$work/agent" <<AGENT
#!/bin/sh
host=\$1
shift
exec ip netns exec "$pfx\$host" unshare --uts sh -c "hostname \$host && exec \$*"
AGENT
chmod +x "$work/agent"
printf '%s slots=1\n' "${hosts[@]}" >"$work/hostfile"

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
mpi=(mpirun --hostfile "$work/hostfile" -np 3 --map-by node --bind-to none
     --mca plm_rsh_agent "$work/agent" --mca btl tcp,self --mca btl_tcp_if_include "$subnet"
     --mca oob_tcp_if_include "$subnet" --mca pml ob1 --mca routed direct
     -x OMP_NUM_THREADS -x ASAN_OPTIONS -x LSAN_OPTIONS -x UBSAN_OPTIONS)
in_h1=(ip netns exec "${pfx}h1")
fail=0

for t in simclr_mpi_tests simclr_reliability_mpi_tests; do
  if timeout -k 5 240 "${in_h1[@]}" "${mpi[@]}" "$bin/$t" --gtest_color=no >"$work/$t.log" 2>&1; then
    echo "multihost: ok $t on 3 hosts ($(grep -c '^\[       OK \]' "$work/$t.log") test results, 3 ranks)"
  else
    echo "multihost: FAIL $t on 3 hosts"; tail -40 "$work/$t.log"; fail=1
  fi
done
# Every rank really ran on its own host.
if ! timeout -k 5 60 "${in_h1[@]}" "${mpi[@]}" sh -c 'hostname' 2>/dev/null | sort | tr '\n' ' ' | grep -q "^h1 h2 h3 $"; then
  echo "multihost: FAIL: ranks did not run one per fake host"; fail=1
fi

# Cut h3's link after some good steps.
log=$work/cut.log
timeout -k 5 120 "${in_h1[@]}" "${mpi[@]}" "$bin/simclr_fault_inject" steps "$timeout_ms" >"$log" 2>&1 &
runner=$!
for _ in $(seq 1 300); do grep -q "^step 40 ok" "$log" && break; sleep 0.1; done
if grep -q "^step 40 ok" "$log"; then
  ip -n "${pfx}sw" link set ph3 down
  echo "multihost: cut h3's link after $(grep '^step' "$log" | tail -1)"
  for _ in $(seq 1 $(( timeout_ms / 100 * 3 + 100 ))); do
    [ "$(grep -c '^SURVIVOR rank [01] ' "$log")" = 2 ] && break
    sleep 0.1
  done
  for r in 0 1; do
    line=$(grep "^SURVIVOR rank $r " "$log")
    if [[ "$line" == *"timed out on rank $r of 3 after"*"(timeout $timeout_ms ms)"* ]]; then
      echo "multihost: ok $line"
    else
      echo "multihost: FAIL rank $r did not report a CommError after the cut"; fail=1
    fi
  done
else
  echo "multihost: FAIL the steps did not start"; fail=1
fi
kill "$runner" 2>/dev/null
wait "$runner" 2>/dev/null
[ "$fail" = 0 ] || { echo "--- cut run log"; cat "$log"; }
exit "$fail"
