#!/usr/bin/env python3
"""A batch with a bank of extra negatives (a memory bank): simclr_loss.torch beside the PyTorch
formulations a lightly / MoCo user runs, same data, same machine, each step in a fresh process.

    OMP_NUM_THREADS=2 python3 benchmarks/bench_memory_bank.py [--batch 256] [--bank 65536]
        [--dim 128] [--threads 2] [--repeat 5] [--python PY]

Three steps on a batch of `batch` pairs and a bank of `bank` rows (float32, forward + backward):

  simclr      simclr_loss.torch.simclr_loss(za, zb, reduction="sum", negatives=bank): TF Similarity's
              loss (both directions, in-batch negatives) with the bank's rows added as negatives,
              streamed in tiles, closed-form backward.
  same-math   the same loss in PyTorch autograd: logits [h1 h2^T | h1 h1^T - 1e9 I | h1 bank^T] / T
              for both directions, cross-entropy, backward. What a user writes to get this loss.
  lightly     lightly's NTXentLoss(memory_bank_size=K) formulation (MoCo): one direction, logits
              [h1 . h2 | h1 bank^T] / T with the positive in column 0, no in-batch negatives, mean
              cross-entropy, backward. A different, smaller loss (n x (1 + K) logits against
              2n x (2n + K)); its cost is shown for scale.

Each runs in its own process: the time is the median of `repeat` steps after a warm-up, and the
memory is one step's peak resident set above the resident set just before it (the high-water mark
reset through /proc/self/clear_refs, so Linux only; inputs and bank already allocated). The bank is an input in all three (detached, not updated):
the steps compare the loss, not the queue's bookkeeping.
"""
import argparse
import json
import os
import subprocess
import sys

COMMON = r'''
import json, sys, time
import torch
import torch.nn.functional as F
n, K, d, threads, repeat = (int(x) for x in sys.argv[1:6])
torch.set_num_threads(threads)
torch.manual_seed(1)
za = torch.randn(n, d, requires_grad=True)
zb = torch.randn(n, d, requires_grad=True)
bank = F.normalize(torch.randn(K, d), dim=1)
T = 0.1
def status_mib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
'''

TAIL = r'''
step()  # warm-up
# The step's own peak: the resident set's high-water mark, reset (Linux: clear_refs 5) just before
# one step, minus the resident set then.
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status_mib("VmRSS")
step()
step_peak = status_mib("VmHWM") - before
times = []
for _ in range(repeat):
    t0 = time.perf_counter(); value = step(); times.append(time.perf_counter() - t0)
times.sort()
print(json.dumps({"ms_median": 1e3 * times[len(times) // 2], "ms_min": 1e3 * times[0],
                  "step_peak_mib": step_peak, "loss": value,
                  "torch": torch.__version__, "threads": torch.get_num_threads()}))
'''

STEPS = {
    "simclr": r'''
import simclr_loss.torch as st
def step():
    loss = st.simclr_loss(za, zb, temperature=T, reduction="sum", negatives=bank)
    za.grad = None; zb.grad = None
    loss.backward()
    return float(loss)
''',
    "same-math": r'''
def step():
    a = F.normalize(za, dim=1, eps=1e-6)
    b = F.normalize(zb, dim=1, eps=1e-6)
    labels = torch.arange(n)
    mask = torch.eye(n) * 1e9
    def contrast(h1, h2):
        logits = torch.cat([h1 @ h2.T, h1 @ h1.T - mask * T, h1 @ bank.T], dim=1) / T
        return F.cross_entropy(logits, labels, reduction="none")
    loss = (contrast(a, b) + contrast(b, a)).sum()
    za.grad = None; zb.grad = None
    loss.backward()
    return float(loss)
''',
    "lightly": r'''
def step():
    a = F.normalize(za, dim=1)
    b = F.normalize(zb, dim=1)
    pos = (a * b).sum(dim=1, keepdim=True)
    logits = torch.cat([pos, a @ bank.T], dim=1) / T
    loss = F.cross_entropy(logits, torch.zeros(n, dtype=torch.long))
    za.grad = None; zb.grad = None
    loss.backward()
    return float(loss)
''',
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--bank", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    results = {}
    for name, body in STEPS.items():
        script = COMMON + body + TAIL
        cmd = [args.python, "-c", script, str(args.batch), str(args.bank), str(args.dim),
               str(args.threads), str(args.repeat)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[name]
        print(f"{name:10s} {r['ms_median']:9.1f} ms  step peak +{r['step_peak_mib']:7.1f} MiB"
              f"  loss {r['loss']:.6g}  (torch {r['torch']}, {r['threads']} threads)")
    if "simclr" in results and "same-math" in results:
        s, p = results["simclr"], results["same-math"]
        print(f"same-math / simclr: time {p['ms_median'] / s['ms_median']:.2f}x, "
              f"loss agrees to {abs(p['loss'] - s['loss']) / abs(p['loss']):.1e} relative")
    print(json.dumps({"batch": args.batch, "bank": args.bank, "dim": args.dim,
                      "threads": args.threads, "results": results}))


if __name__ == "__main__":
    main()
