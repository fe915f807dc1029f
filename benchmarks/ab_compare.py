#!/usr/bin/env python3
"""Two builds of the library, alternated round by round in one run: `simclr-loss bench` of each, and
a `simclr_loss.torch` step in each build's Python environment (G x d float32, reduction sum, forward and
backward, the median of 3 timed steps after a warm-up). Prints one line per run and the medians and
the median of the paired ratios (B / A), the figures docs/performance.md quotes.

    python3 benchmarks/ab_compare.py --bin-a OLD/build/bin/simclr-loss --bin-b build/bin/simclr-loss \\
        --python-a OLD/venv/bin/python --python-b build/venv/bin/python [--rounds 5]
"""

import argparse
import json
import statistics
import subprocess
import sys

TORCH_STEP = r"""
import json, time, sys
import torch, simclr_loss.torch as st
G, d = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
za = torch.randn(G, d, requires_grad=True)
zb = torch.randn(G, d, requires_grad=True)
crit = st.SimCLRLoss(temperature=0.1, reduction="sum")
def step():
    za.grad = zb.grad = None
    crit(za, zb).backward()
step()
times = []
for _ in range(3):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
print(json.dumps({"seconds_median": sorted(times)[1]}))
"""


def bench(binary, args):
    out = subprocess.run([binary, "bench", "--batch", str(args.batch), "--dim", str(args.dim),
                          "--threads", str(args.threads), "--repeat", "3", "--no-gemm"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds_median"]


def torch_step(python, args):
    out = subprocess.run([python, "-c", TORCH_STEP, str(args.batch), str(args.dim)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds_median"]


def report(name, a, b):
    ratio = statistics.median(y / x for x, y in zip(a, b))
    print(f"{name}: A {statistics.median(a):.3f} s, B {statistics.median(b):.3f} s, "
          f"B/A paired median {ratio:.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin-a", required=True)
    ap.add_argument("--bin-b", required=True)
    ap.add_argument("--python-a")
    ap.add_argument("--python-b")
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    runs = {"bench": ([], []), "torch": ([], [])}
    for r in range(args.rounds):
        for side, (binary, python) in enumerate(((args.bin_a, args.python_a),
                                                 (args.bin_b, args.python_b))):
            runs["bench"][side].append(bench(binary, args))
            if python:
                runs["torch"][side].append(torch_step(python, args))
            print(f"round {r + 1} {'AB'[side]}: bench {runs['bench'][side][-1]:.3f} s"
                  + (f", torch {runs['torch'][side][-1]:.3f} s" if python else ""), flush=True)
    report("simclr-loss bench", *runs["bench"])
    if args.python_a and args.python_b:
        report("simclr_loss.torch step", *runs["torch"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
