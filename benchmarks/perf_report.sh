#!/usr/bin/env bash
# Regenerates the measurements of docs/performance.md on this machine (about 5 minutes on 2 cores):
# the PyTorch comparison with its plot, the simclr-loss sweep, the MPI runs, and the kernel benchmarks.
# Usage: benchmarks/perf_report.sh [OUTDIR]   (default docs/perf)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/perf}
mkdir -p "$out"
scripts/deps.sh libopenblas-dev gnuplot-nox
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target simclr-loss simclr_kernel_bench simclr_gemm_backends
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun=(mpirun --oversubscribe --bind-to none)
{
  echo "# machine"
  lscpu | grep -E "Model name|^CPU\(s\)|Thread|MHz|L1d|L2|L3" || true
  free -g | head -2
  echo "# date: $(date -u +%Y-%m-%dT%H:%MZ)"
} > "$out/machine.txt"
python3 benchmarks/bench_vs_torch.py --install --sweep 1024,2048,4096,8192 --repeat 3 --ranks 2 --out "$out" \
  | tee "$out/bench_vs_torch.txt"
build/bin/simclr-loss bench --sweep --batch 1024,2048,4096,8192,16384 --repeat 3 | tee "$out/sweep_single.md"
OMP_NUM_THREADS=1 "${mpirun[@]}" -np 2 build/bin/simclr-loss bench --sweep --batch 4096,8192,16384,32768 \
  --threads 1 --repeat 1 --no-gemm | tee "$out/sweep_mpi2.md"
OMP_NUM_THREADS=1 build/bin/simclr_gemm_backends --benchmark_min_time=0.2 | tee "$out/gemm_backends.txt"
build/bin/simclr_kernel_bench --benchmark_filter='batch:8192' --benchmark_min_time=0.5 | tee "$out/kernels.txt"
echo "wrote $out"
