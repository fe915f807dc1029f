#!/usr/bin/env bash
# One process with T threads against `mpirun -np P` with T/P threads per rank under each schedule,
# alternated round by round so that a change of the machine's load hits every configuration alike.
# Prints each run's JSON line and, at the end, the median over rounds of each configuration's
# median step time and CPU time (all ranks and threads) and their ratios to the single process.
#   benchmarks/bench_schedules.sh [--batch G] [--dim d] [--ranks P] [--threads T] [--rounds R]
#                              [--repeat r] [--bin path/to/simclr-loss]
set -euo pipefail
batch=8192 dim=128 ranks=2 threads=2 rounds=5 repeat=3 bin=build/bin/simclr-loss
while [[ $# -gt 0 ]]; do
  case "$1" in
    --batch) batch=$2 ;;
    --dim) dim=$2 ;;
    --ranks) ranks=$2 ;;
    --threads) threads=$2 ;;
    --rounds) rounds=$2 ;;
    --repeat) repeat=$2 ;;
    --bin) bin=$2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
  shift 2
done
per_rank=$((threads / ranks > 0 ? threads / ranks : 1))
common=(bench --batch "$batch" --dim "$dim" --repeat "$repeat" --warmup 1 --no-gemm)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for ((i = 0; i < rounds; ++i)); do
  echo "single $("$bin" "${common[@]}" --threads "$threads")" | tee -a "$out"
  for schedule in balanced own_rows; do
    echo "$schedule $(mpirun -np "$ranks" "$bin" "${common[@]}" --threads "$per_rank" \
      --schedule "$schedule")" | tee -a "$out"
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, text = line.split(" ", 1)
    runs.setdefault(name, []).append(json.loads(text))
single = statistics.median(r["seconds_median"] for r in runs["single"])
single_cpu = statistics.median(r["cpu_seconds_median"] for r in runs["single"])
for name, rs in runs.items():
    t = statistics.median(r["seconds_median"] for r in rs)
    c = statistics.median(r["cpu_seconds_median"] for r in rs)
    print(f"{name:9s} median {t:.4f} s  ratio {t / single:.3f}  "
          f"CPU {c:.4f} s  ratio {c / single_cpu:.3f}  "
          f"GEMM-equivalents {rs[0]['gemm_equivalents']:.3f}  "
          f"rank flops max/min {rs[0]['rank_flops_max'] / max(rs[0]['rank_flops_min'], 1):.3f}")
PY
