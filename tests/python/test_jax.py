"""simclr_loss.jax on one device: the TensorFlow Similarity goldens through jax.jit and jax.grad, finite
differences (jax.test_util.check_grads) in float64, the numpy front end, dtypes, the memory XLA
plans for a large batch, and errors at trace and run time."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import jax.test_util  # noqa: E402

import simclr_loss  # noqa: E402

sj = pytest.importorskip("simclr_loss.jax")
if sj._jax_ffi is None:
    pytest.skip("simclr was built without jax's FFI headers (simclr_loss._jax_ffi missing)",
                allow_module_level=True)


def _value_and_grads(za, zb, weight, **kw):
    def objective(a, b):
        return jnp.sum(sj.simclr_loss(a, b, sample_weight=weight, **kw))

    loss = jax.jit(lambda a, b: sj.simclr_loss(a, b, sample_weight=weight, **kw))(za, zb)
    grads = jax.jit(jax.grad(objective, argnums=(0, 1)))(za, zb)
    return loss, grads


def test_golden_values_and_gradients_under_jit(golden_case, golden_arrays, check_golden):
    c = golden_case
    za, zb, weight = golden_arrays(c)
    loss, (ga, gb) = _value_and_grads(jnp.asarray(za), jnp.asarray(zb),
                                      None if weight is None else jnp.asarray(weight),
                                      temperature=c["temperature"], reduction=c["reduction"])
    assert loss.dtype == za.dtype and ga.dtype == za.dtype and gb.shape == zb.shape
    check_golden(c, np.asarray(loss), np.asarray(ga), np.asarray(gb))


def test_value_and_grad_matches_the_numpy_front_end():
    rng = np.random.default_rng(0)
    za, zb = rng.normal(size=(2, 12, 7))
    w = rng.uniform(0.5, 2.0, size=12)
    for reduction in ("auto", "sum", "none"):
        ref = simclr_loss.SimCLRLoss(temperature=0.2, reduction=reduction)
        want, want_a, want_b = ref.value_and_gradient(za, zb, sample_weight=w)

        def f(a, b):
            return jnp.sum(sj.simclr_loss(a, b, temperature=0.2, reduction=reduction,
                                          sample_weight=w))

        value, (ga, gb) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(za, zb)
        np.testing.assert_allclose(value, np.sum(want), rtol=1e-13)
        np.testing.assert_allclose(ga, want_a, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(gb, want_b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", ["auto", "sum", "none"])
def test_check_grads_float64(reduction):
    rng = np.random.default_rng(1)
    za, zb = jnp.asarray(rng.normal(size=(2, 6, 5)))
    w = jnp.asarray(rng.uniform(0.5, 2.0, size=6))
    jax.test_util.check_grads(
        lambda a, b: sj.simclr_loss(a, b, temperature=0.3, reduction=reduction, sample_weight=w),
        (za, zb), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_per_example_cotangent_of_reduction_none():
    # jax.vjp with a non-uniform cotangent: the gradient of sum_i c_i l_i.
    rng = np.random.default_rng(2)
    za, zb = rng.normal(size=(2, 5, 4))
    c = rng.normal(size=5)
    out, pullback = jax.vjp(lambda a, b: sj.simclr_loss(a, b, reduction="none"), za, zb)
    ga, gb = pullback(jnp.asarray(c))
    ref = simclr_loss.SimCLRLoss(reduction="none").forward(za, zb)
    want_a, want_b = ref.backward(c)
    np.testing.assert_allclose(out, ref.values, rtol=1e-13)
    np.testing.assert_allclose(ga, want_a, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gb, want_b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_dtypes_are_computed_in_float32(dtype):
    rng = np.random.default_rng(3)
    za, zb = (jnp.asarray(x, dtype) for x in rng.normal(size=(2, 8, 6)))
    value, (ga, gb) = jax.value_and_grad(
        lambda a, b: sj.simclr_loss(a, b, temperature=0.5), argnums=(0, 1))(za, zb)
    assert value.dtype == dtype and ga.dtype == dtype and gb.dtype == dtype
    a32, b32 = (np.asarray(x, np.float32) for x in (za, zb))
    want, want_a, _ = simclr_loss.SimCLRLoss(temperature=0.5).value_and_gradient(a32, b32)
    np.testing.assert_allclose(np.float32(value), want, rtol=1e-2)
    np.testing.assert_allclose(np.asarray(ga, np.float32), want_a, rtol=5e-2, atol=1e-2)


def test_float32_stays_float32():
    za = jnp.ones((4, 3), jnp.float32) + jnp.arange(12, dtype=jnp.float32).reshape(4, 3)
    value, g = jax.value_and_grad(lambda a: sj.simclr_loss(a, a[::-1]))(za)
    assert value.dtype == jnp.float32 and g.dtype == jnp.float32


def test_config_round_trip_and_call():
    loss = sj.SimCLRLoss(temperature=0.1, reduction="sum")
    assert loss.get_config() == {"reduction": "sum", "name": None, "temperature": 0.1}
    assert sj.SimCLRLoss().get_config() == {"reduction": "auto", "name": None, "temperature": 0.05}
    again = sj.SimCLRLoss.from_config(loss.get_config())
    wrapped = sj.SimCLRLoss.from_config({"class_name": "SimCLRLoss", "config": loss.get_config()})
    rng = np.random.default_rng(4)
    za, zb = rng.normal(size=(2, 5, 3))
    want = simclr_loss.SimCLRLoss(temperature=0.1, reduction="sum")(za, zb)
    for l in (loss, again, wrapped):
        np.testing.assert_allclose(jax.jit(l)(za, zb), want, rtol=1e-13)
    with pytest.raises(ValueError, match="Reduction"):
        sj.SimCLRLoss.from_config({"reduction": "mean", "name": None, "temperature": 0.1})


def test_memory_of_a_large_step_is_linear_in_the_batch():
    # G = 8192 pairs, d = 128, float32: the [2G, 2G] logits would take 1 GiB; XLA must plan none of it.
    g, d = 8192, 128
    za = jax.ShapeDtypeStruct((g, d), jnp.float32)

    def step(a, b):
        return jax.value_and_grad(lambda a, b: sj.simclr_loss(a, b), argnums=(0, 1))(a, b)

    mem = jax.jit(step).lower(za, za).compile().memory_analysis()
    logits = (2 * g) ** 2 * 4
    rows = 2 * g * d * 4
    assert mem.temp_size_in_bytes < 8 * rows, (mem.temp_size_in_bytes, rows)
    assert mem.temp_size_in_bytes < logits / 16


# ---- errors ----

def test_trace_time_errors():
    za = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="same shape"):
        sj.simclr_loss(za, jnp.ones((5, 3)))
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        sj.simclr_loss(jnp.ones(3), jnp.ones(3))
    with pytest.raises(TypeError, match="same dtype"):
        sj.simclr_loss(za, za.astype(jnp.float32))
    with pytest.raises(TypeError, match="int32"):
        sj.simclr_loss(jnp.ones((4, 3), jnp.int32), jnp.ones((4, 3), jnp.int32))
    with pytest.raises(ValueError, match="temperature"):
        sj.simclr_loss(za, za, temperature=0.0)
    with pytest.raises(ValueError, match="Reduction"):
        sj.simclr_loss(za, za, reduction="mean")
    with pytest.raises(ValueError, match="Incompatible shapes"):
        sj.simclr_loss(za, za, sample_weight=jnp.ones(3))
    with pytest.raises(ValueError, match="squeeze"):
        sj.simclr_loss(za, za, sample_weight=jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="gradient_reduction"):
        sj.simclr_loss(za, za, gradient_reduction="avg")
    # The front ends' shared argument messages (simclr_loss/_args.py).
    with pytest.raises(TypeError, match="gradient_reduction must be \"sum\" or \"mean\", got "
                                        "NoneType None"):
        sj.simclr_loss(za, za, gradient_reduction=None)
    with pytest.raises(TypeError, match="temperature must be a number > 0, got str 'abc'"):
        sj.simclr_loss(za, za, temperature="abc")
    with pytest.raises(TypeError, match=r"temperature must be a number > 0, got list \[0.1\]"):
        sj.SimCLRLoss(temperature=[0.1])
    with pytest.raises(ValueError, match=r"integer in \[0, 2\*\*63 - 1\]"):
        sj.simclr_loss(za, za, global_batch_size=2**70)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got nan"):
        sj.SimCLRLoss.from_config({"temperature": float("nan")})
    # The distribution rule, before anything runs.
    with pytest.raises(ValueError, match="global_batch_size"):
        jax.jit(lambda a: sj.simclr_loss(a, a, axis_name="d")).trace(za)
    with pytest.raises(ValueError, match="global_batch_size"):
        sj.simclr_loss(za, za, reduction="sum_over_batch_size", axis_name="d")


def test_nan_and_inf_are_run_time_errors_that_name_the_row():
    za = np.ones((4, 3))
    zb = np.ones((4, 3))
    zb[2, 1] = np.nan
    with pytest.raises(Exception, match=r"zb has NaN at row 2, column 1"):
        jax.block_until_ready(jax.jit(sj.simclr_loss)(za, zb))
    za[1, 0] = np.inf
    with pytest.raises(Exception, match=r"za has Inf at row 1, column 0"):
        jax.block_until_ready(jax.grad(lambda a: sj.simclr_loss(a, jnp.ones((4, 3))))(za))
    w = np.ones(4)
    w[3] = np.nan
    with pytest.raises(Exception, match="sample_weight has NaN at index 3"):
        jax.block_until_ready(sj.simclr_loss(jnp.ones((4, 3)), jnp.ones((4, 3)), sample_weight=w))


def test_the_loss_object_pickles_and_copies():
    import copy
    import pickle

    loss = sj.SimCLRLoss(temperature=0.3, reduction="none", name="x", gradient_reduction="mean")
    za, zb = np.random.default_rng(1).standard_normal((2, 5, 4))
    want = np.asarray(loss(za, zb))
    for other in (pickle.loads(pickle.dumps(loss)), copy.deepcopy(loss), copy.copy(loss)):
        assert other.get_config() == loss.get_config()
        assert other.gradient_reduction == "mean"
        np.testing.assert_array_equal(np.asarray(other(za, zb)), want)


def test_the_distribution_rule_is_the_librarys_at_trace_time():
    # The same message as every front end's distributed call (the library's agreement step).
    za, zb = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match="Please use simclr::Reduction::kSum or "
                                         "simclr::Reduction::kNone"):
        sj.simclr_loss(za, zb, axis_name="d")
