"""simclr_loss.keras.SimCLRLoss on Keras 3 with the JAX backend (it dispatches to simclr_loss.jax): every case of
the TF Similarity goldens (tests/data/golden_single.json), value and gradients under jax.jit, with
Keras 3's own sample_weight handling and reductions; config and serialization round trips. Keras 3
reads its backend when it is first imported: this module sets KERAS_BACKEND=jax unless it is set."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")
if int(keras.__version__.split(".")[0]) < 3 or keras.backend.backend() != "jax":
    pytest.skip("needs Keras 3 with the JAX backend", allow_module_level=True)
jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

sj = pytest.importorskip("simclr_loss.jax")
if sj._jax_ffi is None:
    pytest.skip("simclr was built without jax's FFI headers", allow_module_level=True)
import simclr_loss.keras as sk  # noqa: E402


def test_golden_single(golden_case, check_golden, golden_arrays):
    za, zb, w = golden_arrays(golden_case)
    # Keras 3 has no "auto": its default, "sum_over_batch_size", is what auto resolved to.
    reduction = golden_case["reduction"]
    reduction = "sum_over_batch_size" if reduction == "auto" else reduction
    loss = sk.SimCLRLoss(temperature=golden_case["temperature"], reduction=reduction,
                         dtype=golden_case["dtype"])
    weight = None if w is None else jnp.asarray(w, za.dtype)

    def objective(a, b):
        value = loss(a, b, sample_weight=weight)
        return jnp.sum(value), value

    (_, value), (grad_a, grad_b) = jax.jit(jax.value_and_grad(objective, argnums=(0, 1),
                                                              has_aux=True))(za, zb)
    assert value.dtype == za.dtype
    if reduction == "none" and w is not None and w.ndim == 2:
        # Keras 3's own rule: a [N, 1] or [1, 1] weight makes the loss [N, 1] (Keras 2 squeezes the
        # weight instead); the values are the same.
        assert value.shape == (len(za), 1)
        value = value.reshape(-1)
    check_golden(golden_case, np.asarray(value), np.asarray(grad_a), np.asarray(grad_b))


def test_config_and_serialization():
    loss = sk.SimCLRLoss(temperature=0.2, reduction="sum", name="ntxent")
    config = loss.get_config()
    assert config["temperature"] == 0.2 and config["reduction"] == "sum"
    assert config["name"] == "ntxent"
    again = sk.SimCLRLoss.from_config(config)
    assert type(again) is sk.SimCLRLoss and again.get_config() == config
    stored = keras.saving.serialize_keras_object(loss)
    assert stored["registered_name"] == "Similarity>SimCLRLoss"
    back = keras.saving.deserialize_keras_object(stored)
    assert type(back) is sk.SimCLRLoss and back.get_config() == config


def test_bad_temperature():
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        sk.SimCLRLoss(temperature=0.0)


def test_temperature_that_is_not_a_number():
    with pytest.raises(TypeError, match="temperature must be a number > 0, got str 'abc'"):
        sk.SimCLRLoss(temperature="abc")
