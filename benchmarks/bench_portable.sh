#!/usr/bin/env bash
# The portable build (x86-64-v2 + run-time dispatch, the default) against a -march=native build of
# the same source, on this machine: `simclr-loss bench` of each, alternating, ROUNDS rounds, then the
# median of each build's per-run medians. Usage:
#   benchmarks/bench_portable.sh [G=8192] [ROUNDS=5]
# Builds build-portable/ and build-native/ (simclr-loss only) unless they exist already; set
# PORTABLE_BUILD / NATIVE_BUILD to use other build folders.
set -euo pipefail
cd "$(dirname "$0")/.."
G=${1:-8192}
ROUNDS=${2:-5}
portable=${PORTABLE_BUILD:-build-portable}
native=${NATIVE_BUILD:-build-native}
jobs=${JOBS:-2}
common=(-DCMAKE_BUILD_TYPE=Release -DSIMCLR_WITH_CUDA=OFF -DSIMCLR_BUILD_TESTS=OFF -DSIMCLR_BUILD_BENCHMARKS=OFF)
[ -f "$portable/CMakeCache.txt" ] || cmake -S . -B "$portable" "${common[@]}" -DSIMCLR_NATIVE=OFF >/dev/null
[ -f "$native/CMakeCache.txt" ] || cmake -S . -B "$native" "${common[@]}" -DSIMCLR_NATIVE=ON >/dev/null
cmake --build "$portable" --target simclr-loss -j"$jobs" >/dev/null
cmake --build "$native" --target simclr-loss -j"$jobs" >/dev/null

args=(bench --batch "$G" --dim 128 --dtype float32 --threads 2 --warmup 1 --repeat 5 --no-gemm)
echo "# simclr-loss ${args[*]}, $ROUNDS rounds alternating native / portable"
# Per run: the bench's own median step time, and the process's CPU seconds (user + system, all
# threads), which a busy shared machine disturbs less than wall time.
python3 - "$native/bin/simclr-loss" "$portable/bin/simclr-loss" "$ROUNDS" "${args[@]}" <<'PY'
import json, resource, statistics, subprocess, sys
native, portable, rounds, args = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
wall, cpu = {"native": [], "portable": []}, {"native": [], "portable": []}
def child_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
for _ in range(rounds):
    for build, exe in (("native", native), ("portable", portable)):
        before = child_cpu()
        line = subprocess.run([exe] + args, check=True, capture_output=True, text=True).stdout
        cpu[build].append(child_cpu() - before)
        result = json.loads(line.strip().splitlines()[-1])
        wall[build].append(result["seconds_median"])
        print(build, line.strip(), flush=True)
for name, runs in (("step seconds (median of 5 steps)", wall), ("process CPU seconds", cpu)):
    med = {b: statistics.median(v) for b, v in runs.items()}
    for b, v in runs.items():
        print(f"{name}, {b}: median {med[b]:.3f} of " + ", ".join(f"{x:.3f}" for x in v))
    print(f"{name}: portable / native = {med['portable'] / med['native']:.3f}")
PY
