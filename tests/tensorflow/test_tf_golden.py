"""simclr_loss.tensorflow (the custom op) and simclr_loss.keras.SimCLRLoss against every case of the TensorFlow
Similarity goldens (tests/data/golden_single.json): value and tape gradients, eagerly and inside
tf.function. The op gives the per-example loss; Keras's own weighting and reduction are applied to it
for the op route, as the Keras Loss base class does for the loss route."""

import numpy as np
import pytest
import tensorflow as tf

try:  # Keras 2's own weighting and reduction (the reference here); Keras 3: see conftest.py
    from keras.src.utils import losses_utils
except ImportError:
    losses_utils = None

import simclr_loss.keras as sk
import simclr_loss.tensorflow as st


def _through_op(case, za, zb, w):
    per_example = st.simclr_loss(za, zb, temperature=case["temperature"])
    reduction = case["reduction"]
    if reduction == "auto":
        reduction = "sum_over_batch_size"
    return losses_utils.compute_weighted_loss(per_example, w, reduction=reduction)


def _through_keras(case, za, zb, w):
    loss = sk.SimCLRLoss(temperature=case["temperature"], reduction=case["reduction"])
    return loss(za, zb, sample_weight=w)


def _value_and_grads(route, case, za, zb, w):
    with tf.GradientTape() as tape:
        tape.watch([za, zb])
        loss = route(case, za, zb, w)
        objective = tf.reduce_sum(loss)
    grad_a, grad_b = tape.gradient(objective, [za, zb])
    return loss, grad_a, grad_b


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("route", [_through_op, _through_keras], ids=["op", "keras"])
def test_golden_single(golden_case, check_golden, golden_arrays, route, mode):
    za, zb, w = golden_arrays(golden_case)
    za = tf.constant(za)
    zb = tf.constant(zb)
    w = None if w is None else tf.constant(w, za.dtype)
    run = _value_and_grads
    if mode == "function":
        run = tf.function(_value_and_grads)
    loss, grad_a, grad_b = run(route, golden_case, za, zb, w)
    check_golden(golden_case, loss.numpy(), grad_a.numpy(), grad_b.numpy())


def test_per_example_shape_and_dtype():
    za = tf.random.stateless_normal([5, 3], seed=[1, 2], dtype=tf.float64)
    zb = tf.random.stateless_normal([5, 3], seed=[3, 4], dtype=tf.float64)
    out = st.simclr_loss(za, zb, temperature=0.2)
    assert out.shape == (5,) and out.dtype == tf.float64
    # float16 is computed in float32 and returned in float16, close to the float64 result.
    half = st.simclr_loss(tf.cast(za, tf.float16), tf.cast(zb, tf.float16), temperature=0.2)
    assert half.dtype == tf.float16
    np.testing.assert_allclose(half.numpy().astype(np.float64), out.numpy(), rtol=2e-2)


def test_dynamic_batch_in_tf_function(golden_single, check_golden, golden_arrays):
    # One trace with an unknown batch dimension serves every batch size.
    f = tf.function(lambda a, b: _value_and_grads(_through_keras, case, a, b, None),
                    input_signature=[tf.TensorSpec([None, None], tf.float32)] * 2)
    cases = [c for c in golden_single["cases"] if c["dtype"] == "float32"
             and c["reduction"] == "none" and c["sample_weight"] is None and c["temperature"] == 0.1]
    assert len(cases) >= 2
    for case in cases:
        za, zb, _ = golden_arrays(case)
        loss, grad_a, grad_b = f(za, zb)
        check_golden(case, loss.numpy(), grad_a.numpy(), grad_b.numpy())
    assert f.experimental_get_tracing_count() == 1
