"""A learnable temperature in simclr_loss.jax: a traced temperature is an operand of the FFI calls and
jax.grad gives dJ/dT (docs/math.md section 4.6). Checked against central differences of the library's
own forward and against jax.grad of an independent formulation written here, in float64, for every
reduction with sample weights and a zero row; under jit; through SimCLRLoss's per-call temperature;
and its errors. Across devices: tests/python/test_jax_shard.py."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

sj = pytest.importorskip("simclr_loss.jax")
if sj._jax_ffi is None:
    pytest.skip("simclr was built without jax's FFI headers", allow_module_level=True)

REDUCTIONS = ["auto", "none", "sum", "sum_over_batch_size"]


def _independent_loss(za, zb, t, reduction, w):
    """TF Similarity's formulation: [h1 h2^T | h1 h1^T] / T with the self entry at -1e9, softmax
    cross-entropy against the positive, both directions summed, then Keras's weight and reduction."""
    def normalise(x):
        return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=1, keepdims=True), 1e-12))

    a, b = normalise(za), normalise(zb)
    n = a.shape[0]

    def direction(h1, h2):
        logits = jnp.concatenate([h1 @ h2.T / t, h1 @ h1.T / t - 1e9 * jnp.eye(n)], axis=1)
        return -jax.nn.log_softmax(logits, axis=1)[jnp.arange(n), jnp.arange(n)]

    values = (direction(a, b) + direction(b, a)) * w
    if reduction == "none":
        return values
    return jnp.sum(values) / (1 if reduction == "sum" else n)


def _data(n=6, d=4, zero_row=True):
    rng = np.random.default_rng(3)
    za = rng.normal(size=(n, d))
    zb = za + 0.5 * rng.normal(size=(n, d))
    if zero_row:
        za[2] = 0
    return za, zb, np.linspace(0.5, 2.0, n)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("temperature", [0.3, 0.05, 2e-3])
def test_grad_matches_finite_differences_and_an_independent_formulation(reduction, temperature):
    za, zb, w = _data()
    up = np.linspace(-1.0, 1.0, za.shape[0])

    def objective(loss_fn):
        def j(t):
            v = loss_fn(t)
            return jnp.sum(v * up) if reduction == "none" else 2.5 * v
        return j

    lib = objective(lambda t: sj.simclr_loss(za, zb, temperature=t, reduction=reduction,
                                             sample_weight=w))
    ind = objective(lambda t: _independent_loss(za, zb, t, reduction, w))
    t0 = jnp.asarray(temperature)
    got = float(jax.grad(lib)(t0))
    want = float(jax.grad(ind)(t0))
    assert abs(got - want) <= 1e-9 * abs(want), (got, want)
    h = 1e-3 * temperature
    d1 = (lib(t0 + h) - lib(t0 - h)) / (2 * h)
    d2 = (lib(t0 + h / 2) - lib(t0 - h / 2)) / h
    fd = float((4 * d2 - d1) / 3)
    assert abs(got - fd) <= 1e-7 * abs(fd), (got, fd)


def test_jit_and_the_embeddings_gradients_unchanged():
    za, zb, w = _data()

    def j(a, b, t):
        return sj.simclr_loss(a, b, temperature=t, reduction="sum", sample_weight=w)

    g = jax.jit(jax.grad(j, argnums=(0, 1, 2)))(za, zb, jnp.asarray(0.2))
    ga, gb = jax.grad(lambda a, b: sj.simclr_loss(a, b, temperature=0.2, reduction="sum",
                                                  sample_weight=w), argnums=(0, 1))(za, zb)
    np.testing.assert_array_equal(g[0], ga)
    np.testing.assert_array_equal(g[1], gb)
    assert g[2].shape == () and g[2].dtype == jnp.float64


def test_the_loss_object_takes_a_per_call_temperature():
    za, zb, _ = _data(zero_row=False)
    loss = sj.SimCLRLoss(temperature=0.9, reduction="sum")

    def j(log_scale):  # OpenCLIP's logit_scale = 1 / T, learned in log space
        return loss(za, zb, temperature=jnp.exp(-log_scale))

    log_scale = jnp.asarray(np.log(1 / 0.1))
    got = float(jax.grad(j)(log_scale))
    t = jnp.exp(-log_scale)
    want = float(jax.grad(lambda tt: _independent_loss(za, zb, tt, "sum", 1.0))(t) * -t)
    assert abs(got - want) <= 1e-9 * abs(want), (got, want)
    assert loss.get_config()["temperature"] == 0.9
    np.testing.assert_allclose(loss(za, zb, temperature=0.25),
                               sj.SimCLRLoss(temperature=0.25, reduction="sum")(za, zb), rtol=1e-15)


def test_float32():
    za, zb, w = (x.astype(np.float32) for x in _data())
    got = jax.grad(lambda t: sj.simclr_loss(za, zb, temperature=t, reduction="sum"))(
        jnp.asarray(0.2, jnp.float32))
    want = jax.grad(lambda t: _independent_loss(za.astype(np.float64), zb.astype(np.float64), t,
                                                "sum", 1.0))(jnp.asarray(0.2))
    assert got.dtype == jnp.float32
    assert abs(float(got) - float(want)) <= 1e-4 * abs(float(want))


def test_bad_temperatures():
    za, zb, _ = _data(zero_row=False)
    with pytest.raises(Exception, match="temperature must be a finite number > 0, got 0") as info:
        jax.block_until_ready(sj.simclr_loss(za, zb, temperature=jnp.asarray(0.0)))
    assert "INVALID_ARGUMENT" in str(info.value) or isinstance(info.value, ValueError)
    with pytest.raises(TypeError, match="temperature must be a number > 0"):
        sj.simclr_loss(za, zb, temperature=jnp.asarray([0.1, 0.2]))
