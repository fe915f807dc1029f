#!/usr/bin/env bash
# simclr-gpu-bench, built on the CPU emulation, run end to end at a small size: it must exit 0 and
# print the JSON line scripts/device_check.sh reads, with the float32 check against the CPU path
# within the 1e-5 bar, parsed the way device_check.sh parses it.
# Usage: bench_smoke.sh BENCH_BINARY
set -euo pipefail
# G = 256, d = 4, 32 x 32 tiles: the [2G, 2G] float32 logits alone would take 1 MiB, everything the
# step keeps (inputs, gradients, U, O(G) vectors, one tile) about 0.06 MiB.
out=$("$1" --batch 256 --dim 4 --dtype float32 --repeat 1 --warmup 0 --tile-rows 32 --tile-cols 32 --check)
echo "$out"
field() { sed -n "s/.*\"$1\":\([0-9.eE+-]*\).*/\1/p" <<< "$out"; }
for f in seconds_median tflops cublas_tflops fraction_of_cublas forward_gemm_equivalents peak_device_mib check_loss_rel_err check_grad_rel_err; do
  [ -n "$(field "$f")" ] || { echo "bench_smoke: no numeric field $f"; exit 1; }
done
gerr=$(field check_grad_rel_err) lerr=$(field check_loss_rel_err)
awk "BEGIN{exit !($gerr <= 1e-5 && $lerr <= 1e-5)}" || { echo "bench_smoke: parity $lerr / $gerr above 1e-5"; exit 1; }
# The single-process forward takes the symmetric path: 16 blocks of 32 rows, 136 of 256 tiles.
fge=$(field forward_gemm_equivalents)
awk "BEGIN{exit !($fge > 0.53 && $fge < 0.532)}" || { echo "bench_smoke: forward GEMM-equivalents $fge, not 136/256"; exit 1; }
# Peak device memory: inputs, gradients, U, the tile workspace and O(n) vectors, never [2G, 2G] logits.
peak=$(field peak_device_mib)
awk "BEGIN{exit !($peak > 0 && $peak < 0.25)}" || { echo "bench_smoke: peak device memory $peak MiB"; exit 1; }
echo "bench_smoke: ok (loss $lerr, gradient $gerr, peak $peak MiB)"
