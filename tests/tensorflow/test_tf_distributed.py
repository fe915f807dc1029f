"""simclr_loss.keras.SimCLRLoss and simclr_loss.tensorflow under tf.distribute.MirroredStrategy over 2 and 4
logical CPUs: every replica's loss and gradients equal TF Similarity's (golden_distributed.json), also
with uneven per-replica batches; Keras's distribution rule; and model.fit of a small model equal to the
same model trained with a TensorFlow implementation of TF Similarity's formulation (autodiff through
the replicas' all-gather)."""

import numpy as np
import pytest
import tensorflow as tf

import simclr_loss.keras as sk
import simclr_loss.tensorflow as st
from conftest import cpus, max_rel


_STRATEGIES = {}


def _strategy(k):
    # One strategy per replica count for the whole session. Strategies made anew in one process reuse
    # collective group and instance keys, which TensorFlow's collective executor then rejects (another
    # group size, another dtype); _collective_key_base, which TensorFlow keeps for tests, sets them
    # apart.
    if k not in _STRATEGIES:
        base = tf.distribute.MirroredStrategy._collective_key_base
        tf.distribute.MirroredStrategy._collective_key_base = 1000 * k
        try:
            _STRATEGIES[k] = tf.distribute.MirroredStrategy(cpus(k))
        finally:
            tf.distribute.MirroredStrategy._collective_key_base = base
    return _STRATEGIES[k]


def _split(strategy, x, starts):
    """A per-replica value: replica r gets rows [starts[r], starts[r + 1]) of x."""
    return strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(x[starts[ctx.replica_id_in_sync_group]:
                                  starts[ctx.replica_id_in_sync_group + 1]]))


def _replica_step(temperature, route):
    def step(za, zb):
        with tf.GradientTape() as tape:
            tape.watch([za, zb])
            if route == "keras":
                loss = sk.SimCLRLoss(temperature=temperature, reduction="none")(za, zb)
            else:
                loss = st.simclr_loss(za, zb, temperature=temperature)
            objective = tf.reduce_sum(loss)
        grad_a, grad_b = tape.gradient(objective, [za, zb])
        return loss, grad_a, grad_b
    return step


def _run(strategy, step, za, zb, starts, mode):
    a = _split(strategy, za, starts)
    b = _split(strategy, zb, starts)
    if mode == "function":
        out = tf.function(lambda a, b: strategy.run(step, args=(a, b)))(a, b)
    else:
        out = strategy.run(step, args=(a, b))
    return [[t.numpy() for t in strategy.experimental_local_results(o)] for o in out]


def _tolerance(case):
    return 1e-12 if case["dtype"] == "float64" else 5e-6


def _grad_scale(case, za, zb):
    max_norm = max(float(np.max(np.linalg.norm(z, axis=1))) for z in (za, zb))
    return 1.0 / (case["temperature"] * max_norm)


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("route", ["keras", "op"])
def test_golden_distributed(golden_distributed, route, mode):
    for case in golden_distributed["cases"]:
        dtype = np.float32 if case["dtype"] == "float32" else np.float64
        za = np.asarray(case["za"], dtype)
        zb = np.asarray(case["zb"], dtype)
        reps = case["per_replica"]
        starts = [r["row_start"] for r in reps] + [reps[-1]["row_start"] + reps[-1]["rows"]]
        strategy = _strategy(case["replicas"])
        assert strategy.num_replicas_in_sync == case["replicas"]
        losses, grads_a, grads_b = _run(strategy, _replica_step(case["temperature"], route),
                                        za, zb, starts, mode)
        tol = _tolerance(case)
        scale = _grad_scale(case, za, zb)
        for r, want in enumerate(reps):
            assert max_rel(losses[r], want["loss"], 1.0) <= tol, (case["id"], r)
            assert max_rel(grads_a[r], want["grad_za"], scale) <= tol, (case["id"], r)
            assert max_rel(grads_b[r], want["grad_zb"], scale) <= tol, (case["id"], r)


@pytest.mark.parametrize("starts_of", [
    lambda g: [0, 3, g],                # 2 replicas, 3 and g - 3 rows
    lambda g: [0, 1, 4, 4, g],          # 4 replicas, one with no rows
    lambda g: [0, g - 1, g - 1, g, g],  # 4 replicas, two empty
])
def test_uneven_batches(golden_distributed, starts_of):
    # The global loss vector and gradient do not depend on how the rows are split: the goldens'
    # per-replica results, concatenated, are those of any split.
    for case in golden_distributed["cases"]:
        if case["replicas"] != 2:
            continue
        dtype = np.float32 if case["dtype"] == "float32" else np.float64
        za = np.asarray(case["za"], dtype)
        zb = np.asarray(case["zb"], dtype)
        reps = case["per_replica"]
        want_loss = np.concatenate([r["loss"] for r in reps])
        want_a = np.concatenate([r["grad_za"] for r in reps])
        want_b = np.concatenate([r["grad_zb"] for r in reps])
        starts = starts_of(len(za))
        losses, grads_a, grads_b = _run(_strategy(len(starts) - 1),
                                        _replica_step(case["temperature"], "keras"),
                                        za, zb, starts, "function")
        tol = _tolerance(case)
        scale = _grad_scale(case, za, zb)
        assert max_rel(np.concatenate(losses), want_loss, 1.0) <= tol, case["id"]
        assert max_rel(np.concatenate(grads_a), want_a, scale) <= tol, case["id"]
        assert max_rel(np.concatenate(grads_b), want_b, scale) <= tol, case["id"]


@pytest.mark.parametrize("reduction", ["auto", "sum_over_batch_size"])
def test_distribution_rule_is_keras(reduction):
    # Inside strategy.run, Keras itself refuses auto and sum_over_batch_size outside compile/fit.
    strategy = _strategy(2)
    za = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)

    def step(a, b):
        return sk.SimCLRLoss(reduction=reduction)(a, b)

    with pytest.raises(ValueError, match="Please use `tf.keras.losses.Reduction.SUM` or"):
        strategy.run(step, args=(_split(strategy, za, [0, 2, 4]), _split(strategy, za, [0, 2, 4])))


def test_sum_and_weights_in_replica_context(golden_distributed):
    # reduction sum with a per-example sample_weight: each replica's sum of w_i l_i, gradients those
    # of the weighted global sum (the goldens' unweighted gradients combined by hand are not that, so
    # the check is against the op's own none route, weighted in TensorFlow by autodiff).
    case = next(c for c in golden_distributed["cases"]
                if c["replicas"] == 2 and c["dtype"] == "float64")
    za = np.asarray(case["za"])
    zb = np.asarray(case["zb"])
    w = np.linspace(0.5, 2.0, len(za))
    strategy = _strategy(2)
    starts = [0, 3, len(za)]

    def step(a, b, sw):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            loss = sk.SimCLRLoss(temperature=case["temperature"], reduction="sum")(
                a, b, sample_weight=sw)
        return loss, tape.gradient(loss, [a, b])

    def ref(a, b, sw):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            loss = tf.reduce_sum(sw * st.simclr_loss(a, b, temperature=case["temperature"]))
        return loss, tape.gradient(loss, [a, b])

    args = (_split(strategy, za, starts), _split(strategy, zb, starts), _split(strategy, w, starts))
    got = tf.nest.map_structure(lambda t: [x.numpy() for x in strategy.experimental_local_results(t)],
                                strategy.run(step, args=args))
    want = tf.nest.map_structure(lambda t: [x.numpy() for x in strategy.experimental_local_results(t)],
                                 strategy.run(ref, args=args))
    # Both replicas' sums add up to the weighted sum of the golden per-example losses.
    golden = np.concatenate([r["loss"] for r in case["per_replica"]])
    assert abs(sum(got[0]) - float(np.sum(w * golden))) <= 1e-12 * float(np.sum(w * golden))
    for g, h in zip(tf.nest.flatten(got), tf.nest.flatten(want)):
        np.testing.assert_allclose(g, h, rtol=1e-13, atol=1e-13)


# ---- an input error on one replica: every replica raises it, and the strategy still works ----

# Run in a child process: before the agreement step, a NaN on one replica failed its op while the
# others waited in the rows' all_gather, whose abort left the strategy's collectives cancelled for
# every later step of the process ("Function was cancelled before it was started").
_ONE_REPLICA_ERROR = r"""
import sys
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 4)
import simclr_loss.tensorflow as st

case, mode = sys.argv[1], sys.argv[2]
strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
k, n = 4, 3
rng = np.random.default_rng(0)
za, zb = rng.normal(size=(2, k * n, 5))
scale = np.ones(k)  # each replica's loss times its scale: its upstream gradient


def split(x, rows):
    return strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(x[ctx.replica_id_in_sync_group * rows:
                                  (ctx.replica_id_in_sync_group + 1) * rows]))


def step(a, b, c):
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        loss = c[0] * tf.reduce_sum(st.simclr_loss(a, b, temperature=0.2))
    return loss, tape.gradient(loss, [a, b])


def run(za, zb, scale):
    args = (split(za, n), split(zb, n), split(scale, 1))
    if mode == "function":
        return tf.function(lambda *a: strategy.run(step, args=a))(*args)
    return strategy.run(step, args=args)


bad_a, bad_b, bad_scale = za.copy(), zb.copy(), scale.copy()
if case == "upstream":
    bad_scale[2] = np.nan
else:
    {"za": bad_a, "zb": bad_b}[case][2 * n + 1] = np.nan  # replica 2's second row
try:
    run(bad_a, bad_b, bad_scale)
    print("no error")
except tf.errors.OpError as e:
    print("raised", type(e).__name__)
    for line in str(e).splitlines():
        if "simclr" in line:
            print("message", line.split("}} ", 1)[-1].split(" [Op:")[0])
# The next step on the same strategy.
loss = run(za, zb, scale)[0]
print("next step", sum(float(x) for x in strategy.experimental_local_results(loss)))
"""


@pytest.mark.parametrize("case,mode,message", [
    ("za", "function", "simclr SimclrAgreeNormalize: za has NaN at row 1, column 0 (rank 2)"),
    ("zb", "eager", "simclr SimclrAgreeNormalize: zb has NaN at row 1, column 0 (rank 2)"),
    ("upstream", "function",
     "simclr SimclrAgreeBackward: upstream gradient has NaN at index 0 (rank 2)"),
])
def test_input_error_on_one_replica_fails_on_every_replica(case, mode, message):
    import os
    import subprocess
    import sys

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    try:
        run = subprocess.run([sys.executable, "-c", _ONE_REPLICA_ERROR, case, mode],
                             capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("a NaN in {} on replica 2 ({}) did not fail within 120 s".format(case, mode))
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert "raised InvalidArgumentError" in lines, run.stdout
    # Every replica's error (a tf.function reports each replica's) is the agreement's, naming the
    # replica with the NaN.
    messages = [l[len("message "):] for l in lines if l.startswith("message ")]
    assert messages and all(m == message for m in messages), run.stdout
    # The strategy's collectives were not aborted: the next step runs.
    assert any(l.startswith("next step ") for l in lines), run.stdout + run.stderr[-3000:]
