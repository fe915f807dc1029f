#!/usr/bin/env python3
"""Generate the golden reference data for the simclr C++ tests from the REAL
TensorFlow Similarity ``SimCLRLoss``.

The JSON files this writes are committed (tests/data/); CI never needs TensorFlow.
This script installs nothing. Before running it, install the pinned environment
(Python 3.11; tensorflow-similarity's declared dependencies pin TensorFlow <= 2.11,
which has no Python 3.11 wheels, so it is installed with --no-deps beside
TensorFlow 2.15.1 (still Keras 2) plus the modules it really imports):

    python3 -m pip install "tensorflow-cpu==2.15.1" "numpy==1.26.4" "protobuf==4.25.9" \
        "pandas==2.2.3" "tensorflow-datasets==4.9.4" "tensorflow-metadata==1.16.1" \
        "googleapis-common-protos==1.63.2" "tabulate==0.10.0" "tqdm==4.70.1" \
        "nmslib==2.1.2" "matplotlib==3.11.2" "umap-learn==0.5.12" "bokeh==3.9.2" \
        "distinctipy==1.3.4"
    python3 -m pip install --no-deps "tensorflow-similarity==0.17.1"

Then:

    python3 tests/data/make_golden.py [OUT_DIR]            # default OUT_DIR: tests/data
    python3 tests/data/make_golden.py OUT_DIR --only single
    python3 tests/data/make_golden.py OUT_DIR --only distributed

It writes OUT_DIR/golden_single.json and OUT_DIR/golden_distributed.json and prints
sanity checks (TF vs an independent float64 numpy implementation of the formulas of
docs/math.md, TF vs the hand-checked values of docs/math.md section 1.5, and distributed vs
single-process).

The distributed file is produced by one subprocess per replica count R (2 and 4),
because the logical CPU devices must be configured before TensorFlow initialises its
runtime and cannot be changed afterwards.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Deterministic, light: the machine is shared.
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

import numpy as np  # noqa: E402

REDUCTIONS = ("auto", "none", "sum", "sum_over_batch_size")


# --------------------------------------------------------------------------- helpers
def rng_for(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def make_inputs(name, n, d, dtype, scaled=True):
    """Seeded standard-normal views; optionally each row scaled so norms are not 1."""
    rng = rng_for(name)
    za = rng.standard_normal((n, d))
    zb = rng.standard_normal((n, d))
    if scaled:
        za *= np.exp(rng.uniform(-2.0, 2.0, size=(n, 1)))
        zb *= np.exp(rng.uniform(-2.0, 2.0, size=(n, 1)))
    return za.astype(dtype), zb.astype(dtype)


def to_list(a):
    """Exact conversion: every float32/float64 value becomes the Python float (double)
    with the same value; json writes it with repr (shortest round-trip)."""
    a = np.asarray(a)
    return np.asarray(a, dtype=np.float64).tolist()


def versions():
    import tensorflow as tf
    import tensorflow_similarity as tfsim
    import keras

    return {
        "tensorflow": tf.__version__,
        "tensorflow_similarity": tfsim.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "keras": keras.__version__,
    }


def write_json(path, generator, cases):
    with open(path, "w") as f:
        f.write('{"generator": ' + json.dumps(generator) + ',\n "cases": [\n')
        f.write(",\n".join(json.dumps(c, separators=(",", ":"), allow_nan=False) for c in cases))
        f.write("\n]}\n")
    print(f"wrote {path}: {len(cases)} cases, {os.path.getsize(path)} bytes")


# ------------------------------------------- float64: TF Similarity cannot run it as is
F64_PATCH = (
    "tensorflow_similarity 0.17.1 SimCLRLoss.contrast builds its labels/masks with tf.one_hot, "
    "whose default dtype is float32, so float64 inputs fail (InvalidArgumentError in "
    "`aa - masks * LARGE_NUM`). float64 cases use the installed contrast() source with only "
    "dtype=hidden1.dtype added to its four tf.one_hot calls; float32 cases use the class unchanged."
)


def float64_capable(SimCLRLoss):
    """Subclass whose contrast() is the installed source text with dtype=hidden1.dtype added
    to each tf.one_hot call (and nothing else changed)."""
    import inspect
    import textwrap
    import tensorflow_similarity.losses.simclr as simclr_mod

    src = textwrap.dedent(inspect.getsource(SimCLRLoss.contrast))
    for old in ("tf.one_hot(labels_idx, enlarged_batch_size * 2)",
                "tf.one_hot(labels_idx, enlarged_batch_size)",
                "tf.one_hot(tf.range(batch_size), batch_size * 2)",
                "tf.one_hot(tf.range(batch_size), batch_size)"):
        assert src.count(old) == 1, old
        src = src.replace(old, old[:-1] + ", dtype=hidden1.dtype)")
    assert src.count("tf.one_hot(") == 4
    ns = {}
    exec(compile(src, "<SimCLRLoss.contrast, one_hot dtype patch>", "exec"), simclr_mod.__dict__, ns)
    return type("SimCLRLossF64", (SimCLRLoss,), {"contrast": ns["contrast"]})


def check_float64_unsupported(SimCLRLoss):
    import tensorflow as tf

    x = tf.constant([[1.0, 0.0], [0.0, 1.0]], tf.float64)
    try:
        SimCLRLoss(temperature=1.0, reduction="none")(x, x)
    except tf.errors.InvalidArgumentError as e:
        return str(e).strip().split("\n")[0][:160]
    raise AssertionError("float64 unexpectedly works with the unpatched SimCLRLoss; drop the patch")


# ------------------------------------------ independent reference (docs/math.md, numpy)
def ref_loss_and_grad(za, zb, T, alpha):
    """float64 implementation of docs/math.md sections 1, 3 and 4.

    Returns per-example loss l [N] and dJ/dza, dJ/dzb for J = sum_i alpha_i * l_i."""
    za = np.asarray(za, np.float64)
    zb = np.asarray(zb, np.float64)
    n = za.shape[0]

    def normalise(x):
        n2 = np.sum(x * x, axis=1)
        inv = 1.0 / np.sqrt(np.maximum(n2, 1e-12))
        return x * inv[:, None], n2

    ah, an2 = normalise(za)
    bh, bn2 = normalise(zb)
    U = np.vstack([ah, bh])
    S = U @ U.T / T
    Sm = S.copy()
    np.fill_diagonal(Sm, -np.inf)
    mx = Sm.max(axis=1)
    lse = mx + np.log(np.sum(np.exp(Sm - mx[:, None]), axis=1))
    pos = (np.arange(2 * n) + n) % (2 * n)
    ce = lse - S[np.arange(2 * n), pos]
    loss = ce[:n] + ce[n:]

    a2 = np.concatenate([alpha, alpha])
    P = np.exp(Sm - lse[:, None])
    Y = np.zeros_like(P)
    Y[np.arange(2 * n), pos] = 1.0
    A = a2[:, None] * (P - Y)
    M = A + A.T
    gU = M @ U / T

    def chain(g, xh, n2):
        out = np.empty_like(g)
        big = n2 >= 1e-12  # tf.maximum's gradient goes to the first argument at a tie
        s = np.sum(xh * g, axis=1)
        out[big] = (g[big] - xh[big] * s[big, None]) / np.sqrt(n2[big])[:, None]
        out[~big] = g[~big] / math.sqrt(1e-12)
        return out

    return loss, chain(gU[:n], ah, an2), chain(gU[n:], bh, bn2)


def ref_alpha(n, reduction, sw):
    """Weight each example gets in reduce_sum(returned loss) (docs/math.md section 4.1, g = 1)."""
    if sw is None:
        w = np.ones(n)
    else:
        v = np.asarray(sw["values"], np.float64).reshape(sw["shape"])
        if v.ndim == 2:  # rank fix-up: [N,1] / [1,1] lose their last axis
            v = v[:, 0]
        w = np.broadcast_to(v, (n,)).astype(np.float64)
    if reduction in ("auto", "sum_over_batch_size"):
        return w / n
    return w


def ref_reduce(loss, reduction, sw):
    n = loss.shape[0]
    alpha_none = ref_alpha(n, "none", sw)
    wl = loss * alpha_none
    if reduction == "none":
        return wl
    s = np.sum(wl)
    return s / n if reduction in ("auto", "sum_over_batch_size") else s


# ----------------------------------------------------------------- single process
def single_case_specs():
    """(id, dtype, T, reduction, za, zb, sample_weight-or-None)."""
    specs = []
    dts = (("float32", np.float32), ("float64", np.float64))

    # 1. grid over N, d, T; every dtype; the reduction cycles so each appears per dtype.
    grid = [
        (1, 2, 0.1), (2, 3, 0.5), (3, 16, 1.0), (5, 33, 0.05), (8, 16, 0.1), (17, 33, 0.01),
        (8, 2, 0.05), (5, 3, 1.0), (17, 16, 0.5), (3, 33, 0.01), (2, 2, 0.05), (1, 16, 1.0),
    ]
    k = 0
    for (n, d, T) in grid:
        for dn, dt in dts:
            red = REDUCTIONS[k % 4]
            k += 1
            cid = f"grid_n{n}_d{d}_t{T}_{dn}_{red}"
            za, zb = make_inputs(cid, n, d, dt, scaled=(k % 3 != 0))
            specs.append((cid, dn, T, red, za, zb, None))

    # 2. one input, every reduction, both dtypes.
    for dn, dt in dts:
        za, zb = make_inputs(f"sweep_{dn}", 5, 16, dt)
        for red in REDUCTIONS:
            specs.append((f"sweep_n5_d16_t0.1_{dn}_{red}", dn, 0.1, red, za, zb, None))

    # 3. sample weights of every accepted shape for a [N] loss (N = 5, d = 3, T = 0.1).
    n = 5
    weights = [
        ("scalar", [], [2.5]),
        ("scalar_zero", [], [0.0]),
        ("vec_nonuniform", [n], [0.5, 2.0, 0.0, 1.25, 3.0]),
        ("vec_zeros_pattern", [n], [1.0, 0.0, 1.0, 0.0, 1.0]),
        ("vec_all_zero", [n], [0.0] * n),
        ("vec_fractional", [n], [0.1, 0.7, 1.3, 0.3, 2.9]),
        ("col_nonuniform", [n, 1], [1.5, 0.25, 4.0, 0.0, 0.75]),
        ("one", [1], [0.7]),
        ("one_zero", [1], [0.0]),
        ("one_one", [1, 1], [1.3]),
    ]
    wred = {"float32": ("sum_over_batch_size", "none"), "float64": ("sum", "auto")}
    for wname, shape, vals in weights:
        for dn, dt in dts:
            za, zb = make_inputs(f"w_{wname}_{dn}", n, 3, dt)
            v = np.asarray(vals, dtype=dt)  # float32 cases: weights are exact float32 values
            sw = {"shape": shape, "values": to_list(v)}
            for red in wred[dn]:
                specs.append((f"weight_{wname}_{dn}_{red}", dn, 0.1, red, za, zb, sw))
    # [N] weights with N = 1 and [N,1] with N = 8 under every reduction
    for dn, dt in dts:
        za, zb = make_inputs(f"w_n1_{dn}", 1, 3, dt)
        specs.append((f"weight_n1_vec_{dn}_sum", dn, 0.5, "sum", za, zb,
                      {"shape": [1], "values": to_list(np.asarray([1.75], dt))}))
        za, zb = make_inputs(f"w_n8col_{dn}", 8, 16, dt)
        v = np.asarray(rng_for(f"w_n8col_{dn}_w").uniform(0, 3, 8), dt)
        for red in REDUCTIONS:
            specs.append((f"weight_n8_col_{dn}_{red}", dn, 0.05, red, za, zb,
                          {"shape": [8, 1], "values": to_list(v)}))

    # 4. zero rows (l2_normalize keeps them zero; gradient g / sqrt(1e-12)).
    for dn, dt in dts:
        za, zb = make_inputs(f"zero_{dn}", 5, 3, dt)
        za[2] = 0
        specs.append((f"zero_row_za_{dn}_none", dn, 0.5, "none", za, zb, None))
        specs.append((f"zero_row_za_{dn}_sobs_weighted", dn, 0.5, "sum_over_batch_size", za, zb,
                      {"shape": [5], "values": to_list(np.asarray([1, 2, 0.5, 3, 0.25], dt))}))
        za2, zb2 = make_inputs(f"zero2_{dn}", 8, 16, dt)
        za2[0] = 0
        zb2[5] = 0
        specs.append((f"zero_rows_both_{dn}_sum", dn, 0.1, "sum", za2, zb2, None))

    # 5. all rows identical (closed form 2 ln(2N - 1)).
    for dn, dt in dts:
        v = rng_for(f"ident_{dn}").standard_normal(16) * 3.0
        za = np.tile(v, (4, 1)).astype(dt)
        specs.append((f"identical_rows_n4_{dn}_none", dn, 0.1, "none", za, za.copy(), None))
        za = np.tile(v[:3], (5, 1)).astype(dt)
        specs.append((f"identical_rows_n5_{dn}_sum", dn, 1.0, "sum", za, 2.0 * za, None))

    # 6. the hand-checked values of docs/math.md section 1.5
    for dn, dt in dts:
        e = np.asarray([[1, 0], [0, 1]], dt)
        specs.append((f"hand_eye_t1_{dn}_none", dn, 1.0, "none", e, e.copy(), None))
        specs.append((f"hand_scaled_t1_{dn}_sum", dn, 1.0, "sum", np.asarray([[2, 0], [0, 3]], dt),
                      np.asarray([[5, 0], [0, 0.5]], dt), None))
        specs.append((f"hand_eye_t0.5_{dn}_none", dn, 0.5, "none", e, e.copy(), None))
        a3 = np.asarray([[1, 0], [0, 1], [1, 1]], dt)
        b3 = np.asarray([[1, 0], [0, 1], [1, -1]], dt)
        for red in ("none", "sum_over_batch_size", "sum"):
            specs.append((f"hand_3row_t1_{dn}_{red}", dn, 1.0, red, a3, b3, None))
        specs.append((f"hand_3row_t1_{dn}_sobs_w123", dn, 1.0, "sum_over_batch_size", a3, b3,
                      {"shape": [3], "values": [1.0, 2.0, 3.0]}))
    return specs


HAND = {  # docs/math.md section 1.5, "Closed forms and hand-checked values"
    "hand_eye_t1_none": [1.102889428] * 2,
    "hand_scaled_t1_sum": 2.205778856,
    "hand_eye_t0.5_none": [0.479089532] * 2,
    "hand_3row_t1_none": [2.343702263, 1.959094756, 4.008438580],
    "hand_3row_t1_sum_over_batch_size": 2.770411866,
    "hand_3row_t1_sum": 8.311235598,
    "hand_3row_t1_sobs_w123": 6.095735838,
}


def run_single(out_dir):
    import tensorflow as tf
    from tensorflow_similarity.losses import SimCLRLoss

    assert not tf.distribute.has_strategy()
    print("single: unpatched SimCLRLoss with float64 inputs:", check_float64_unsupported(SimCLRLoss))
    SimCLRLossF64 = float64_capable(SimCLRLoss)
    patched_vs_orig_f32 = 0.0
    cases = []
    worst = {"float32": [0.0, 0.0, 0.0], "float64": [0.0, 0.0, 0.0]}  # loss rel, grad rel, objective rel
    hand_diff = {"float32": 0.0, "float64": 0.0}
    for cid, dn, T, red, za, zb, sw in single_case_specs():
        dt = tf.float32 if dn == "float32" else tf.float64
        ta = tf.constant(za, dtype=dt)
        tb = tf.constant(zb, dtype=dt)
        kw = {}
        if sw is not None:
            kw["sample_weight"] = tf.constant(
                np.asarray(sw["values"], dtype=za.dtype).reshape(sw["shape"]), dtype=dt)
        cls = SimCLRLoss if dn == "float32" else SimCLRLossF64
        loss_fn = cls(temperature=T, reduction=red)
        if dn == "float32":  # the patch changes nothing for float32: bitwise identical
            p = SimCLRLossF64(temperature=T, reduction=red)(ta, tb, **kw).numpy()
            o = loss_fn(ta, tb, **kw).numpy()
            patched_vs_orig_f32 = max(patched_vs_orig_f32, float(np.max(np.abs(p - o))))
        with tf.GradientTape() as tape:
            tape.watch(ta)
            tape.watch(tb)
            loss = loss_fn(ta, tb, **kw)  # Keras order: y_true = za, y_pred = zb
            obj = tf.reduce_sum(loss)
        ga, gb = tape.gradient(obj, [ta, tb])
        assert loss.dtype == dt and obj.dtype == dt, (cid, loss.dtype)
        loss_np = loss.numpy()
        if red == "none":
            assert loss_np.shape == (za.shape[0],), (cid, loss_np.shape)
        else:
            assert loss_np.shape == (), (cid, loss_np.shape)
        for x in (loss_np, ga.numpy(), gb.numpy()):
            assert np.all(np.isfinite(x)), cid

        # independent reference
        rl, rga, rgb = ref_loss_and_grad(za, zb, T, ref_alpha(za.shape[0], red, sw))
        rred = ref_reduce(rl, red, sw)
        def rel(x, y):
            x = np.asarray(x, np.float64)
            y = np.asarray(y, np.float64)
            return float(np.max(np.abs(x - y)) / max(1.0, float(np.max(np.abs(y))))) if y.size else 0.0
        w = worst[dn]
        w[0] = max(w[0], rel(loss_np, rred))
        w[1] = max(w[1], rel(ga.numpy(), rga), rel(gb.numpy(), rgb))
        w[2] = max(w[2], rel(obj.numpy(), np.sum(rred)))
        key = cid.replace("_" + dn, "")
        if key in HAND:
            hand_diff[dn] = max(hand_diff[dn], float(np.max(np.abs(np.asarray(loss_np, np.float64) - HAND[key]))))
        if key.startswith("identical_rows_n4"):  # closed form 2 ln(2N - 1), N = 4
            hand_diff[dn] = max(hand_diff[dn], float(np.max(np.abs(loss_np - 2 * math.log(7)))))

        cases.append({
            "id": cid, "dtype": dn, "temperature": T, "reduction": red,
            "tf_patch": None if dn == "float32" else "one_hot_dtype",
            "za": to_list(za), "zb": to_list(zb), "sample_weight": sw,
            "loss": to_list(loss_np), "objective": float(obj.numpy()),
            "grad_za": to_list(ga.numpy()), "grad_zb": to_list(gb.numpy()),
        })
    ids = [c["id"] for c in cases]
    assert len(ids) == len(set(ids)), "duplicate ids"
    print("single: TF vs float64 numpy reference, max |diff| / max(1, max|ref|):")
    for dn, (l, g, o) in worst.items():
        print(f"  {dn}: loss {l:.3e}  grad {g:.3e}  objective {o:.3e}")
    print("single: max |TF - hand-checked value (9 decimals) or 2 ln(2N-1)|: "
          + ", ".join(f"{k} {v:.3e}" for k, v in hand_diff.items()))
    print(f"single: float32, patched vs unpatched class, max |diff| = {patched_vs_orig_f32:.3e}")
    gen = versions()
    gen["float64_note"] = F64_PATCH
    write_json(os.path.join(out_dir, "golden_single.json"), gen, cases)


# --------------------------------------------------------------------- distributed
DIST_CASES = [(8, 4, 0.1), (12, 16, 0.05), (16, 8, 0.5)]


def dist_worker(R, out_path):
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(R)])
    logical = tf.config.list_logical_devices("CPU")
    assert len(logical) == R, logical

    import tensorflow_similarity.losses.simclr as simclr_mod
    from tensorflow_similarity.losses import SimCLRLoss

    # Record every call of the all-gather helper (does not change what it computes).
    seen = []
    orig = simclr_mod.SimCLRLoss.cross_replica_concat

    def recording_concat(tensor, strategy):
        out = orig(tensor, strategy)
        seen.append((strategy.num_replicas_in_sync, int(tensor.shape[0]), int(out.shape[0])))
        return out

    simclr_mod.SimCLRLoss.cross_replica_concat = staticmethod(recording_concat)

    SimCLRLossF64 = float64_capable(SimCLRLoss)
    strategy = tf.distribute.MirroredStrategy(devices=[d.name for d in logical])
    assert strategy.num_replicas_in_sync == R, strategy.num_replicas_in_sync
    cases = []
    checks = {dn: {"loss_vs_single": 0.0, "grad_vs_single": 0.0, "grad_vs_single_rel": 0.0,
                   "loss_vs_spec_ref_rel": 0.0, "grad_vs_spec_ref_rel": 0.0,
                   "loss_vs_local_only_min": float("inf")} for dn in ("float32", "float64")}
    ctx_info = set()
    auto_msgs = set()
    for (G, d, T) in DIST_CASES:
        for dn, dt_np, dt in (("float32", np.float32, tf.float32), ("float64", np.float64, tf.float64)):
            cid = f"dist_r{R}_g{G}_d{d}_t{T}_{dn}"
            za, zb = make_inputs(f"dist_g{G}_d{d}_t{T}_{dn}", G, d, dt_np)  # same global batch for R=2,4
            assert G % R == 0
            n = G // R
            cls = SimCLRLoss if dn == "float32" else SimCLRLossF64

            def shard(x):
                return strategy.experimental_distribute_values_from_function(
                    lambda ctx: tf.constant(
                        x[ctx.replica_id_in_sync_group * n:(ctx.replica_id_in_sync_group + 1) * n], dtype=dt))

            def step(a, b):
                rc = tf.distribute.get_replica_context()
                ctx_info.add((tf.distribute.in_cross_replica_context(), tf.distribute.has_strategy(),
                              rc.num_replicas_in_sync))
                with tf.GradientTape() as tape:
                    tape.watch(a)
                    tape.watch(b)
                    loss = cls(temperature=T, reduction="none")(a, b)
                    obj = tf.reduce_sum(loss)
                ga, gb = tape.gradient(obj, [a, b])
                try:
                    cls(temperature=T, reduction="auto")(a, b)
                    auto_msgs.add("NO ERROR")
                except ValueError as e:
                    auto_msgs.add(str(e).split("\n")[0][:120])
                return loss, ga, gb

            seen.clear()  # per replica: 2 directions x 2 views, for the none and the auto call
            out = strategy.run(step, args=(shard(za), shard(zb)))
            assert len(seen) == 8 * R and all(s == (R, n, G) for s in seen), seen
            losses, gas, gbs = (strategy.experimental_local_results(o) for o in out)
            assert len(losses) == R
            per = []
            for r in range(R):
                assert losses[r].shape == (n,) and gas[r].shape == (n, d)
                per.append({"row_start": r * n, "rows": n, "loss": to_list(losses[r].numpy()),
                            "grad_za": to_list(gas[r].numpy()), "grad_zb": to_list(gbs[r].numpy())})
            # single process on the whole global batch (default strategy)
            ta, tb = tf.constant(za, dtype=dt), tf.constant(zb, dtype=dt)
            with tf.GradientTape() as tape:
                tape.watch(ta)
                tape.watch(tb)
                sl = cls(temperature=T, reduction="none")(ta, tb)
                so = tf.reduce_sum(sl)
            sga, sgb = tape.gradient(so, [ta, tb])
            cat = lambda xs: np.concatenate([x.numpy() for x in xs], axis=0)
            ck = checks[dn]
            dga = np.concatenate([cat(gas), cat(gbs)])
            sg = np.concatenate([sga.numpy(), sgb.numpy()])
            ck["loss_vs_single"] = max(ck["loss_vs_single"], float(np.max(np.abs(cat(losses) - sl.numpy()))))
            ck["grad_vs_single"] = max(ck["grad_vs_single"], float(np.max(np.abs(dga - sg))))
            ck["grad_vs_single_rel"] = max(ck["grad_vs_single_rel"],
                                           float(np.max(np.abs(dga - sg)) / max(1.0, np.max(np.abs(sg)))))
            rl, rga, rgb = ref_loss_and_grad(za, zb, T, np.ones(G))
            rg = np.concatenate([rga, rgb])
            ck["loss_vs_spec_ref_rel"] = max(ck["loss_vs_spec_ref_rel"], float(
                np.max(np.abs(cat(losses) - rl)) / max(1.0, np.max(np.abs(rl)))))
            ck["grad_vs_spec_ref_rel"] = max(ck["grad_vs_spec_ref_rel"], float(
                np.max(np.abs(dga - rg)) / max(1.0, np.max(np.abs(rg)))))
            # local-only loss of replica 0's rows: must differ (proves global negatives)
            ll = cls(temperature=T, reduction="none")(ta[:n], tb[:n]).numpy()
            ck["loss_vs_local_only_min"] = min(ck["loss_vs_local_only_min"],
                                               float(np.max(np.abs(ll - losses[0].numpy()))))
            cases.append({"id": cid, "replicas": R, "dtype": dn, "temperature": T,
                          "tf_patch": None if dn == "float32" else "one_hot_dtype",
                          "za": to_list(za), "zb": to_list(zb), "per_replica": per})
    assert ctx_info == {(False, True, R)}, ctx_info
    with open(out_path, "w") as f:
        gen = versions()
        gen["float64_note"] = F64_PATCH
        json.dump({"generator": gen, "cases": cases, "checks": checks,
                   "auto_reduction_in_replica": sorted(auto_msgs)}, f)


def run_distributed(out_dir):
    all_cases, gen = [], None
    for R in (2, 4):
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
            path = tmp.name
        try:
            subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", str(R), path], check=True)
            with open(path) as f:
                part = json.load(f)
        finally:
            os.unlink(path)
        gen = part["generator"]
        print(f"distributed R={R}: {len(part['cases'])} cases, strategy.num_replicas_in_sync == {R}, "
              f"TF Similarity all-gather taken (cross_replica_concat [n]->[G] recorded)")
        for dn, c in part["checks"].items():
            print(f"  {dn}: max |concat per-replica loss - single-process none loss| = {c['loss_vs_single']:.3e}")
            print(f"  {dn}: max |per-replica grad - single-process grad of the global sum| = "
                  f"{c['grad_vs_single']:.3e} (relative to max(1, max|grad|): {c['grad_vs_single_rel']:.3e})")
            print(f"  {dn}: vs float64 numpy reference, relative: loss {c['loss_vs_spec_ref_rel']:.3e}, "
                  f"grad {c['grad_vs_spec_ref_rel']:.3e}")
            print(f"  {dn}: min over cases of max |distributed - local-only loss| (replica 0) = "
                  f"{c['loss_vs_local_only_min']:.3e}  (must be > 0: global negatives used)")
        print(f"  reduction='auto' inside strategy.run: {part['auto_reduction_in_replica']}")
        all_cases += part["cases"]
    write_json(os.path.join(out_dir, "golden_distributed.json"), gen, all_cases)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", nargs="?", default="tests/data")
    ap.add_argument("--only", choices=("single", "distributed"))
    ap.add_argument("--worker", nargs=2, metavar=("R", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        dist_worker(int(args.worker[0]), args.worker[1])
        return
    os.makedirs(args.out_dir, exist_ok=True)
    if args.only in (None, "distributed"):
        run_distributed(args.out_dir)  # subprocesses first: nothing of TF initialised here yet
    if args.only in (None, "single"):
        run_single(args.out_dir)


if __name__ == "__main__":
    main()
