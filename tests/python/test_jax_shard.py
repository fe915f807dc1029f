"""simclr.jax across devices: shard_map (and pmap) over 2 and 4 host devices with axis_name, against
the single-device call and the numpy front end on the same data, in value and gradient.

Needs 4 host devices, which XLA makes only when XLA_FLAGS has
--xla_force_host_platform_device_count=4 before jax is imported: tests/scripts/python_test.sh runs this
file in its own pytest process; run alone, it sets the flag itself."""

import os

if "jax" not in __import__("sys").modules:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=4").strip()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from jax.sharding import Mesh, PartitionSpec as P  # noqa: E402

import simclr  # noqa: E402

sj = pytest.importorskip("simclr.jax")
if sj._jax_ffi is None:
    pytest.skip("simclr was built without jax's FFI headers", allow_module_level=True)
if len(jax.devices("cpu")) < 4:
    pytest.skip("needs 4 host devices: run this file in its own process (XLA_FLAGS="
                "--xla_force_host_platform_device_count=4 before jax is imported)",
                allow_module_level=True)


def _varying(x):
    # The replicated parameters as a per-device value (jax.lax.pcast from jax 0.9, pvary before).
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(x, "d", to="varying")
    return jax.lax.pvary(x, "d")


def _mesh(k):
    return Mesh(np.array(jax.devices("cpu")[:k]), ("d",))


def _sharded_objective(k, reduction, weighted, gradient_reduction="sum"):
    """J(za, zb, w) = sum over the k devices of each device's loss (sum of its values for none)."""
    g_total = None if reduction in ("sum", "none") else "infer"

    def per_device(a, b, w):
        out = sj.simclr_loss(a, b, temperature=0.2, reduction=reduction,
                             sample_weight=w if weighted else None, axis_name="d",
                             global_batch_size=g_total, gradient_reduction=gradient_reduction)
        return jnp.sum(out)[None]

    f = jax.shard_map(per_device, mesh=_mesh(k), in_specs=(P("d"), P("d"), P("d")),
                      out_specs=P("d"))
    return jax.jit(lambda a, b, w: jnp.sum(f(a, b, w)))


def _data(n, d, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    za, zb = rng.normal(size=(2, n, d)).astype(dtype)
    w = rng.uniform(0.5, 2.0, size=n).astype(dtype)
    return za, zb, w


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("reduction", ["auto", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_shard_map_equals_single_device_and_numpy(k, reduction, weighted):
    za, zb, w = _data(4 * k, 6, seed=k)
    objective = _sharded_objective(k, reduction, weighted)
    value, (ga, gb) = jax.value_and_grad(objective, argnums=(0, 1))(za, zb, w)

    # The single-device call on the whole batch (sum_over_batch_size divides by G there too).
    def single(a, b):
        return jnp.sum(sj.simclr_loss(a, b, temperature=0.2, reduction=reduction,
                                      sample_weight=w if weighted else None))

    value1, (ga1, gb1) = jax.jit(jax.value_and_grad(single, argnums=(0, 1)))(za, zb)
    np.testing.assert_allclose(value, value1, rtol=1e-13)
    np.testing.assert_allclose(ga, ga1, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(gb, gb1, rtol=1e-11, atol=1e-14)

    # The numpy front end on the same data.
    ref = simclr.SimCLRLoss(temperature=0.2, reduction=reduction)
    want, want_a, want_b = ref.value_and_gradient(za, zb, sample_weight=w if weighted else None)
    np.testing.assert_allclose(value, np.sum(want), rtol=1e-13)
    np.testing.assert_allclose(ga, want_a, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(gb, want_b, rtol=1e-11, atol=1e-14)


def test_shard_map_float32():
    za, zb, w = _data(16, 8, seed=7, dtype=np.float32)
    value, (ga, _) = jax.value_and_grad(_sharded_objective(4, "auto", True),
                                        argnums=(0, 1))(za, zb, w)
    want, want_a, _ = simclr.SimCLRLoss(temperature=0.2).value_and_gradient(za, zb,
                                                                              sample_weight=w)
    assert value.dtype == np.float32 and ga.dtype == np.float32
    np.testing.assert_allclose(value, want, rtol=1e-5)
    np.testing.assert_allclose(ga, want_a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("gradient_reduction", ["sum", "mean"])
def test_training_step_parameter_gradients(gradient_reduction):
    """A linear model replicated over 4 devices: the combined parameter gradient (psum for "sum",
    pmean for "mean") equals the single-device gradient of the whole batch."""
    k, n, d_in, d = 4, 12, 5, 3
    rng = np.random.default_rng(11)
    xa, xb = rng.normal(size=(2, n, d_in))
    weights = rng.normal(size=(d_in, d))

    def loss_fn(wm, a, b, **kw):
        return sj.simclr_loss(a @ wm, b @ wm, temperature=0.3, **kw)

    want_value, want_grad = jax.value_and_grad(loss_fn)(weights, xa, xb)

    combine = jax.lax.psum if gradient_reduction == "sum" else jax.lax.pmean

    def per_device(wm, a, b):
        value, grad = jax.value_and_grad(
            lambda wm_: loss_fn(wm_, a, b, axis_name="d", global_batch_size=n,
                                gradient_reduction=gradient_reduction))(_varying(wm))
        return jax.lax.psum(value, "d"), combine(grad, "d")

    step = jax.jit(jax.shard_map(per_device, mesh=_mesh(k), in_specs=(P(), P("d"), P("d")),
                                 out_specs=(P(), P())))
    value, grad = step(weights, xa, xb)
    np.testing.assert_allclose(value, want_value, rtol=1e-13)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-11, atol=1e-14)


def test_pmap_with_axis_name():
    k, n = 4, 3
    za, zb, _ = _data(k * n, 5, seed=5)

    def per_device(a, b):
        return sj.simclr_loss(a, b, temperature=0.2, reduction="sum", axis_name="i")

    out = jax.pmap(per_device, axis_name="i")(za.reshape(k, n, 5), zb.reshape(k, n, 5))
    want = simclr.SimCLRLoss(temperature=0.2, reduction="sum")(za, zb)
    np.testing.assert_allclose(np.sum(out), want, rtol=1e-13)


def test_distribution_rule_raises_at_trace_time():
    za, zb, w = _data(8, 4, seed=3)

    def per_device(a, b):
        return sj.simclr_loss(a, b, axis_name="d")[None]

    f = jax.shard_map(per_device, mesh=_mesh(2), in_specs=(P("d"), P("d")), out_specs=P("d"))
    with pytest.raises(ValueError, match="global_batch_size"):
        jax.jit(f).trace(za, zb)


def test_replicated_parameters_get_the_summed_gradient_without_psum():
    """With check_vma (the default), jax.grad of replicated parameters inside shard_map already
    sums the devices' contributions (the transpose of JAX's implicit pvary is a psum)."""
    k, n = 4, 8
    rng = np.random.default_rng(12)
    xa, xb = rng.normal(size=(2, n, 5))
    weights = rng.normal(size=(5, 3))

    def loss_fn(wm, a, b, **kw):
        return sj.simclr_loss(a @ wm, b @ wm, temperature=0.3, **kw)

    want = jax.grad(loss_fn)(weights, xa, xb)

    def per_device(wm, a, b):
        return jax.grad(lambda wm_: loss_fn(wm_, a, b, axis_name="d", global_batch_size=n))(wm)

    grad = jax.jit(jax.shard_map(per_device, mesh=_mesh(k), in_specs=(P(), P("d"), P("d")),
                                 out_specs=P()))(weights, xa, xb)
    np.testing.assert_allclose(grad, want, rtol=1e-11, atol=1e-14)
