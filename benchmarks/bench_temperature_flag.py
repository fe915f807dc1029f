"""What asking for dJ/dT costs a step (CallOptions::temperature_gradient, docs/math.md section 4.6):
the numpy front end's value_and_gradient with and without temperature_gradient, float32, d = 128.

    OMP_NUM_THREADS=2 python3 benchmarks/bench_temperature_flag.py [--bank K] [n ...]

Prints the median of 7 calls of each, best of two rounds (interleaved, so that a busy machine weighs
on both alike). The flag adds 2 n d multiply-adds to a backward of about 3 (2n)^2 d, so the difference
should be lost in the noise. With --bank K the calls also take K extra negatives (a memory bank): the
flag then also sums m s over the bank's columns of the tiles the backward walks anyway (docs/math.md
section 4.7), one multiply-add per logit against the d of the products.
"""

import argparse

import time

import numpy as np

import simclr_loss


def median_ms(fn, repeats=7):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[repeats // 2]


def main(sizes, bank_rows):
    rng = np.random.default_rng(0)
    loss = simclr_loss.SimCLRLoss(temperature=0.1)
    extra = {}
    if bank_rows:
        extra["negatives"] = rng.standard_normal((bank_rows, 128), dtype=np.float32)
    for n in sizes:
        za = rng.standard_normal((n, 128), dtype=np.float32)
        zb = rng.standard_normal((n, 128), dtype=np.float32)
        default = lambda: loss.value_and_gradient(za, zb, **extra)  # noqa: E731
        flagged = lambda: loss.value_and_gradient(za, zb, temperature=0.1,  # noqa: E731
                                                  temperature_gradient=True, **extra)
        default(), flagged()  # warm up
        rounds = [(median_ms(default), median_ms(flagged)) for _ in range(2)]
        print(f"n={n} d=128 bank={bank_rows} float32: default {min(r[0] for r in rounds):.1f} ms, "
              f"with dJ/dT {min(r[1] for r in rounds):.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bank", type=int, default=0)
    parser.add_argument("sizes", type=int, nargs="*")
    args = parser.parse_args()
    main(args.sizes or [1024, 4096], args.bank)
