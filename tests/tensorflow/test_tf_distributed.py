"""simclr.keras.SimCLRLoss and simclr.tensorflow under tf.distribute.MirroredStrategy over 2 and 4
logical CPUs: every replica's loss and gradients equal TF Similarity's (golden_distributed.json), also
with uneven per-replica batches; Keras's distribution rule; and model.fit of a small model equal to the
same model trained with a TensorFlow implementation of TF Similarity's formulation (autodiff through
the replicas' all-gather)."""

import numpy as np
import pytest
import tensorflow as tf

import simclr.keras as sk
import simclr.tensorflow as st
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
