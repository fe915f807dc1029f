#!/usr/bin/env python3
"""TF Similarity's SimCLRLoss and simclr_loss.keras.SimCLRLoss side by side in one TF Similarity training
script: tensorflow_similarity.models.ContrastiveModel (algorithm "simclr") under
tf.distribute.MirroredStrategy over 2 logical CPUs, trained twice; the only difference between the
two runs is the line that imports SimCLRLoss. Reports the loss curves, the step time, and the peak
memory (ru_maxrss) of a training process per global batch size under the same address-space cap
(RLIMIT_AS) for both, up to the batch where TF Similarity runs out, and past it for this library.

Not part of the tests: it needs tensorflow-similarity 0.17.1, installed as tests/data/README.md says,
in an environment where simclr was built with TensorFlow (docs/python.md, "TensorFlow and Keras").

    python3 benchmarks/keras_side_by_side.py [--out docs/keras_side_by_side.md] [--cap-gib 8]

Each run is a subprocess of its own (a fresh TensorFlow with its 2 logical CPUs, its own memory).
"""

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

IMPORTS = {
    "tfsim": "from tensorflow_similarity.losses import SimCLRLoss",
    "simclr": "from simclr_loss.keras import SimCLRLoss",
}


# ---- the training script (a worker process) ----

def worker(loss_name, batch, steps, dim, features, seed):
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import tensorflow_similarity as tfsim

    # The only line that differs between the two runs.
    exec(IMPORTS[loss_name], globals())

    rng = np.random.default_rng(seed)
    rows = batch * min(steps, 8)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    view_a = x + 0.2 * rng.normal(size=x.shape).astype(np.float32)
    view_b = x + 0.2 * rng.normal(size=x.shape).astype(np.float32)

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        init = tf.keras.initializers.GlorotUniform
        backbone = tf.keras.Sequential(
            [tf.keras.Input((features,)),
             tf.keras.layers.Dense(128, activation="relu", kernel_initializer=init(1))],
            name="backbone")
        projector = tf.keras.Sequential(
            [tf.keras.Input((128,)), tf.keras.layers.Dense(dim, kernel_initializer=init(2))],
            name="projector")
        model = tfsim.models.ContrastiveModel(backbone=backbone, projector=projector,
                                              algorithm="simclr")
        model.compile(optimizer=tf.keras.optimizers.SGD(0.05),
                      loss=SimCLRLoss(temperature=0.1))  # noqa: F821 (the import above)

    class Record(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.losses, self.seconds = [], []

        def on_train_batch_begin(self, batch, logs=None):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.seconds.append(time.perf_counter() - self.t0)
            self.losses.append(float(logs["loss"]))

    data = tf.data.Dataset.from_tensor_slices((view_a, view_b)).batch(batch).repeat()
    record = Record()
    # One step per epoch: each epoch's logged loss is that step's loss.
    model.fit(data, epochs=steps, steps_per_epoch=1, callbacks=[record], verbose=0)
    print(json.dumps({"losses": record.losses, "seconds": record.seconds,
                      "loss_class": SimCLRLoss.__module__ + "." + SimCLRLoss.__name__}))  # noqa: F821


# ---- the driver ----

def run_worker(loss_name, batch, steps, args, cap_bytes=None):
    """(result dict or None, exit status, seconds, peak RSS in MiB, last stderr line on failure)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", loss_name, "--batch", str(batch),
           "--steps", str(steps), "--dim", str(args.dim), "--features", str(args.features)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")

    def limit():
        if cap_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))

    t0 = time.time()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, preexec_fn=limit)
        # wait4: this child's own resource usage (its peak resident set), even when it failed.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.time() - t0
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    result = None
    if proc.returncode == 0:
        for line in stdout.splitlines()[::-1]:
            if line.startswith("{"):
                result = json.loads(line)
                break
    tail = []
    if result is None:
        # The line that names the failure (TensorFlow's error class, or the allocator's), else the last.
        err_lines = [l.strip() for l in stderr.splitlines() if l.strip()]
        named = [l for l in err_lines if re.search(r"OOM when allocating|bad_alloc", l)]
        named = named or [l for l in err_lines if re.search(r"Error:", l)]
        tail = (named or err_lines)[-1:]
    return result, proc.returncode, seconds, usage.ru_maxrss / 1024.0, tail


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=sorted(IMPORTS))
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cap-gib", type=float, default=8.0, help="RLIMIT_AS of each memory run")
    p.add_argument("--batches", default="1024,2048,4096,8192,16384,32768")
    p.add_argument("--past", type=int, default=2,
                   help="batch sizes this library runs past TF Similarity's last one")
    p.add_argument("--out", default=None, help="write the report (markdown) here")
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.batch, args.steps, args.dim, args.features, args.seed)
        return

    started = time.time()
    lines = []

    def say(s=""):
        print(s, flush=True)
        lines.append(s)

    # 1. The loss curves and step times, uncapped.
    curves = {}
    for name in ("tfsim", "simclr"):
        result, rc, seconds, _, tail = run_worker(name, args.batch, args.steps, args)
        if result is None:
            sys.exit("the {} training run failed (exit {}): {}".format(name, rc, tail))
        curves[name] = result
    a = curves["tfsim"]["losses"]
    b = curves["simclr"]["losses"]
    diffs = [abs(x - y) for x, y in zip(a, b)]
    rel = max(d / max(abs(x), 1e-12) for d, x in zip(diffs, a))

    # 2. Peak memory per global batch under the cap, a process per (loss, batch) and one at a time.
    cap = int(args.cap_gib * 2**30)
    memory = []
    tfsim_failed_at = None
    past = 0
    for batch in [int(x) for x in args.batches.split(",")]:
        row = {"batch": batch}
        for name in ("tfsim", "simclr"):
            if name == "tfsim" and tfsim_failed_at is not None:
                row[name] = {"ok": False, "skipped": True}
                continue
            result, rc, seconds, peak, tail = run_worker(name, batch, 3, args, cap)
            row[name] = {"ok": result is not None, "exit": rc, "seconds": round(seconds, 1),
                         "peak_mib": round(peak, 0),
                         "step_s": round(statistics.median(result["seconds"][1:]), 3)
                         if result else None,
                         "error": tail[0][:160] if tail else None}
            print(batch, name, row[name], flush=True)
        memory.append(row)
        if tfsim_failed_at is None and not row["tfsim"]["ok"]:
            tfsim_failed_at = batch
        if tfsim_failed_at is not None:
            past += 1
            if past >= args.past or not row["simclr"]["ok"]:
                break

    # 3. The report.
    import tensorflow as tf  # noqa: E402 (only for the versions)
    import tensorflow_similarity as tfsim  # noqa: E402

    say("# TF Similarity's SimCLRLoss and simclr_loss.keras.SimCLRLoss side by side")
    say()
    say("Written by `python3 {}` ({:.0f} s), in a virtual environment with TF Similarity installed "
        "as tests/data/README.md says and simclr built with TensorFlow (docs/python.md). TensorFlow "
        "{}, TF Similarity {}, Python {}, on {} ({} CPUs). The training script is TF Similarity's `ContrastiveModel` (algorithm "
        "`\"simclr\"`, a Dense(128, relu) backbone and a Dense({}) projector on {} input features, "
        "SGD 0.05, temperature 0.1) under `MirroredStrategy` over 2 logical CPUs; each run is a "
        "process of its own. The two runs differ in one line:".format(
            "benchmarks/keras_side_by_side.py " + " ".join(sys.argv[1:]), time.time() - started,
            tf.__version__, tfsim.__version__, platform.python_version(), platform.node() and
            "the test machine", os.cpu_count(), args.dim, args.features))
    say()
    say("```py")
    say(IMPORTS["tfsim"] + "   # run 1: " + curves["tfsim"]["loss_class"])
    say(IMPORTS["simclr"] + "             # run 2: " + curves["simclr"]["loss_class"])
    say("```")
    say()
    say("## Loss curves (global batch {}, {} steps)".format(args.batch, args.steps))
    say()
    say("Largest difference over the {} steps: {:.3g} (relative {:.3g}).".format(
        len(diffs), max(diffs), rel))
    say()
    say("| step | TF Similarity | simclr_loss.keras | difference |")
    say("|---:|---:|---:|---:|")
    for i, (x, y) in enumerate(zip(a, b)):
        if i < 5 or i % 5 == 4 or i == len(a) - 1:
            say("| {} | {:.6f} | {:.6f} | {:.2g} |".format(i + 1, x, y, x - y))
    say()
    med = {k: statistics.median(v["seconds"][2:]) for k, v in curves.items()}
    say("Step time (median of steps 3 to {}, one run each, a 2-core machine shared with other "
        "jobs): TF Similarity {:.1f} ms, simclr_loss.keras {:.1f} ms.".format(
            args.steps, 1e3 * med["tfsim"], 1e3 * med["simclr"]))
    say()
    say("## Peak memory by global batch (address space capped at {:g} GiB for both)".format(
        args.cap_gib))
    say()
    say("Each cell is one process training 3 steps (global batch split over the 2 replicas) under "
        "`RLIMIT_AS` = {:g} GiB; peak = its `ru_maxrss`, step = the median of steps 2 and 3. The cap "
        "is what \"runs out\" means here: the machine has 24 GiB and is shared, so the cap stands "
        "for a smaller host, and TF Similarity fails where its `[n, 2G]` logits and their "
        "gradients no longer fit under it.".format(args.cap_gib))
    say()
    say("| global batch | TF Similarity: peak MiB | step s | simclr_loss.keras: peak MiB | step s |")
    say("|---:|---:|---:|---:|---:|")

    def cell(c):
        if c.get("skipped"):
            return "not run", ""
        if not c["ok"]:
            return "failed at {:.0f} (exit {})".format(c["peak_mib"], c["exit"]), ""
        return "{:.0f}".format(c["peak_mib"]), "{:.2f}".format(c["step_s"])

    for row in memory:
        t, ts = cell(row["tfsim"])
        s, ss = cell(row["simclr"])
        say("| {} | {} | {} | {} | {} |".format(row["batch"], t, ts, s, ss))
    say()
    for r in memory:
        for name, who in (("tfsim", "TF Similarity"), ("simclr", "simclr_loss.keras")):
            if r[name].get("error"):
                say("{} at {}: the process ended with `{}`.".format(
                    who, r["batch"], r[name]["error"].strip().replace("`", "'")))
                say()
    fits = [r for r in memory if r["tfsim"]["ok"]]
    if fits and len(fits) < len(memory):
        top = fits[-1]
        say("At {}, the largest global batch TF Similarity holds under the cap, simclr_loss.keras peaks at "
            "{:.0f} MiB against {:.0f} MiB; it then trains at {} under the same cap.".format(
                top["batch"], top["simclr"]["peak_mib"], top["tfsim"]["peak_mib"],
                " and ".join(str(r["batch"]) for r in memory[len(fits):] if r["simclr"]["ok"])))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines).rstrip() + "\n")
        print("wrote", args.out)


if __name__ == "__main__":
    main()
