#!/usr/bin/env python3
"""simclr-loss bench beside a PyTorch implementation of the same step, and simclr's own PyTorch front
end (simclr_loss.torch), same machine, same run.

The peer is TensorFlow Similarity's SimCLRLoss formulation written in PyTorch with autograd (what a
Python user of lightly / pytorch-metric-learning style losses runs): L2-normalise both views, logits
[h1 h2^T | h1 h1^T] / T with the self entry pushed to -1e9, softmax cross-entropy in both directions,
summed, then loss.backward(). The front end is `simclr_loss.torch.simclr_loss(za, zb, reduction="sum")`
then loss.backward() on torch tensors (the library's closed-form backward behind autograd), timed the
same way as the peer. Each measurement runs in a fresh process, so peak RSS is that step's.

    benchmarks/bench_vs_torch.py [--batch 8192] [--dim 128] [--threads 2] [--repeat 3]
                              [--sweep 1024,2048,4096,8192] [--out DIR] [--install]
                              [--simclr-python PY]

--install apt-installs python3-torch (Debian's PyTorch 1.13) when it is missing. The PyTorch side runs
under /usr/bin/python3 (where Debian installs torch) unless --python says otherwise. simclr_loss.torch
runs under --simclr-python (default: .venv/bin/python of the repository when it exists, made by
`python3 -m venv --system-site-packages .venv && .venv/bin/pip install .`, else --python); it is
skipped with a note when that interpreter cannot import simclr_loss.torch.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PEER = r'''
import json, resource, sys, time
import torch
import torch.nn.functional as F
G, d, threads, repeat = (int(x) for x in sys.argv[1:5])
torch.set_num_threads(threads)
torch.manual_seed(1)
za = torch.randn(G, d, requires_grad=True)
zb = torch.randn(G, d, requires_grad=True)
T = 0.05
def step():
    a = F.normalize(za, dim=1, eps=1e-6)   # tf.math.l2_normalize: rsqrt(max(sum x^2, 1e-12))
    b = F.normalize(zb, dim=1, eps=1e-6)
    labels = torch.arange(G)
    mask = torch.eye(G) * 1e9
    def contrast(h1, h2):
        logits = torch.cat([h1 @ h2.T / T, h1 @ h1.T / T - mask], dim=1)
        return F.cross_entropy(logits, labels, reduction="none")
    loss = (contrast(a, b) + contrast(b, a)).sum()
    za.grad = None; zb.grad = None
    loss.backward()
    return float(loss)
step()
times = []
for _ in range(repeat):
    t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
times.sort()
print(json.dumps({"seconds_median": times[len(times) // 2], "seconds_min": times[0],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                  "torch": torch.__version__, "threads": torch.get_num_threads()}))
'''


FRONTEND = r'''
import json, resource, sys, time
import torch
import simclr_loss.torch as st
G, d, threads, repeat = (int(x) for x in sys.argv[1:5])
torch.set_num_threads(threads)
torch.manual_seed(1)
za = torch.randn(G, d, requires_grad=True)
zb = torch.randn(G, d, requires_grad=True)
def step():
    loss = st.simclr_loss(za, zb, temperature=0.05, reduction="sum")
    za.grad = None; zb.grad = None
    loss.backward()
    return float(loss)
step()
times = []
for _ in range(repeat):
    t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
times.sort()
print(json.dumps({"seconds_median": times[len(times) // 2], "seconds_min": times[0],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                  "torch": torch.__version__, "threads": torch.get_num_threads()}))
'''


def run_json(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def ensure_torch(python, install):
    ok = subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0
    if ok:
        return
    if not install:
        sys.exit(f"error: {python} cannot import torch; run with --install (apt-get install python3-torch)")
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(prefix + ["apt-get", "update", "-q"], check=True)
    subprocess.run(prefix + ["apt-get", "install", "-y", "-q", "python3-torch"], check=True,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sweep", default="", help="comma-separated G values (overrides --batch)")
    ap.add_argument("--ranks", type=int, default=0, help="also run simclr-loss under mpirun -np RANKS, 1 thread each")
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "bin", "simclr-loss"))
    ap.add_argument("--python", default="/usr/bin/python3")
    venv_python = os.path.join(ROOT, ".venv", "bin", "python")
    ap.add_argument("--simclr-python", default=venv_python if os.access(venv_python, os.X_OK) else "",
                    help="interpreter that imports simclr_loss.torch (default: .venv/bin/python, else --python)")
    ap.add_argument("--out", default="")
    ap.add_argument("--install", action="store_true")
    args = ap.parse_args()
    ensure_torch(args.python, args.install)
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"error: {args.bin} not found; build first (scripts/test.sh or cmake --build build)")
    frontend_python = args.simclr_python or args.python
    has_frontend = subprocess.run([frontend_python, "-c", "import simclr_loss.torch"],
                                  capture_output=True).returncode == 0
    if not has_frontend:
        print(f"note: {frontend_python} cannot import simclr_loss.torch; simclr_loss.torch is not timed "
              f"(python3 -m venv --system-site-packages .venv && .venv/bin/pip install .)", file=sys.stderr)
    batches = [int(g) for g in args.sweep.split(",")] if args.sweep else [args.batch]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    rows = []
    for g in batches:
        ours = run_json([args.bin, "bench", "--batch", str(g), "--dim", str(args.dim), "--dtype", "float32",
                         "--threads", str(args.threads), "--repeat", str(args.repeat)], env=env)
        peer = run_json([args.python, "-c", PEER, str(g), str(args.dim), str(args.threads), str(args.repeat)], env=env)
        row = {"batch": g, "dim": args.dim, "threads": args.threads,
               "simclr_seconds": ours["seconds_median"], "torch_seconds": peer["seconds_median"],
               "simclr_peak_rss_mib": ours["peak_rss_mib"], "torch_peak_rss_mib": peer["peak_rss_mib"],
               "speedup": peer["seconds_median"] / ours["seconds_median"],
               "rss_ratio": ours["peak_rss_mib"] / peer["peak_rss_mib"],
               "simclr_gflops": ours["gflops"], "gemm_gflops": ours.get("gemm_gflops"),
               "fraction_of_gemm": ours.get("fraction_of_gemm"), "torch": peer["torch"]}
        if has_frontend:
            front = run_json([frontend_python, "-c", FRONTEND, str(g), str(args.dim), str(args.threads),
                              str(args.repeat)], env=env)
            row["simclr_torch_seconds"] = front["seconds_median"]
            row["simclr_torch_peak_rss_mib"] = front["peak_rss_mib"]
            row["simclr_torch_over_simclr"] = front["seconds_median"] / ours["seconds_median"]
            row["simclr_torch_speedup"] = peer["seconds_median"] / front["seconds_median"]
        if args.ranks:
            mpirun = shutil.which("mpirun")
            if mpirun:
                dist = run_json([mpirun, "-np", str(args.ranks), "--oversubscribe", "--allow-run-as-root",
                                 "--bind-to", "none", args.bin, "bench", "--batch", str(g), "--dim", str(args.dim),
                                 "--threads", "1", "--repeat", str(args.repeat), "--no-gemm"],
                                env=dict(env, OMP_NUM_THREADS="1"))
                row["mpi_ranks"] = args.ranks
                row["mpi_seconds"] = dist["seconds_median"]
                row["mpi_peak_rss_mib"] = dist["peak_rss_mib"]
                row["mpi_over_single"] = dist["seconds_median"] / ours["seconds_median"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print("| G | d | threads | simclr s | torch s | speedup | simclr RSS MiB | torch RSS MiB | RSS ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['dim']} | {r['threads']} | {r['simclr_seconds']:.3f} | {r['torch_seconds']:.3f} | "
              f"{r['speedup']:.1f}x | {r['simclr_peak_rss_mib']:.0f} | {r['torch_peak_rss_mib']:.0f} | "
              f"{100 * r['rss_ratio']:.1f}% |")
    if has_frontend:
        print()
        print("| G | d | threads | simclr_loss.torch s | simclr s | simclr_loss.torch / simclr | torch s | speedup | "
              "simclr_loss.torch RSS MiB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['batch']} | {r['dim']} | {r['threads']} | {r['simclr_torch_seconds']:.3f} | "
                  f"{r['simclr_seconds']:.3f} | {r['simclr_torch_over_simclr']:.3f} | {r['torch_seconds']:.3f} | "
                  f"{r['simclr_torch_speedup']:.1f}x | {r['simclr_torch_peak_rss_mib']:.0f} |")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        csv = os.path.join(args.out, "bench_vs_torch.csv")
        with open(csv, "w") as f:
            f.write("batch,simclr_seconds,torch_seconds,simclr_rss_mib,torch_rss_mib\n")
            for r in rows:
                f.write(f"{r['batch']},{r['simclr_seconds']},{r['torch_seconds']},{r['simclr_peak_rss_mib']},{r['torch_peak_rss_mib']}\n")
        if shutil.which("gnuplot"):
            png = os.path.join(args.out, "bench_vs_torch.png")
            script = f'''set terminal pngcairo size 1100,420 font ",10"
set output "{png}"
set datafile separator ","
set key top left
set logscale xy 2
set xlabel "global batch G (d = {args.dim}, float32, {args.threads} threads)"
set multiplot layout 1,2
set ylabel "seconds per forward+backward"
plot "{csv}" using 1:2 skip 1 with linespoints title "simclr", "" using 1:3 skip 1 with linespoints title "PyTorch (TF Similarity formulation)"
set ylabel "peak RSS (MiB)"
plot "{csv}" using 1:4 skip 1 with linespoints title "simclr", "" using 1:5 skip 1 with linespoints title "PyTorch"
unset multiplot
'''
            subprocess.run(["gnuplot"], input=script, text=True, check=True)
            print(f"plot: {png}")
        print(f"csv: {csv}")


if __name__ == "__main__":
    main()
