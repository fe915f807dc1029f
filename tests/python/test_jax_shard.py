"""simclr_loss.jax across devices: shard_map (and pmap) over 2 and 4 host devices with axis_name, against
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

import simclr_loss  # noqa: E402

sj = pytest.importorskip("simclr_loss.jax")
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
    ref = simclr_loss.SimCLRLoss(temperature=0.2, reduction=reduction)
    want, want_a, want_b = ref.value_and_gradient(za, zb, sample_weight=w if weighted else None)
    np.testing.assert_allclose(value, np.sum(want), rtol=1e-13)
    np.testing.assert_allclose(ga, want_a, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(gb, want_b, rtol=1e-11, atol=1e-14)


def test_shard_map_float32():
    za, zb, w = _data(16, 8, seed=7, dtype=np.float32)
    value, (ga, _) = jax.value_and_grad(_sharded_objective(4, "auto", True),
                                        argnums=(0, 1))(za, zb, w)
    want, want_a, _ = simclr_loss.SimCLRLoss(temperature=0.2).value_and_gradient(za, zb,
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
    want = simclr_loss.SimCLRLoss(temperature=0.2, reduction="sum")(za, zb)
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


# ---- an input error on one device: every device raises it, none waits in an all-gather ----

# Run in a child process: before the agreement step, a NaN on one device made the other devices wait
# in the rows' all-gather until XLA aborted the process (SIGABRT) after its rendezvous timeout.
_ONE_DEVICE_ERROR = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
import simclr_loss.jax as sj

case, how = sys.argv[1], sys.argv[2]
k, n = 4, 3
rng = np.random.default_rng(0)
za, zb = rng.normal(size=(2, k * n, 5))
w = np.ones(k * n)
scale = np.ones(k * n)  # the loss times scale[0] of each device: its upstream gradient
if case == "upstream":
    scale[2 * n] = np.nan  # device 2's
else:
    bad = {"za": za, "zb": zb, "weight": w}[case]
    bad[2 * n + 1, ...] = np.nan  # device 2's second row

def loss(a, b, w, axis):
    return jnp.sum(sj.simclr_loss(a, b, temperature=0.2, reduction="sum", sample_weight=w,
                                  axis_name=axis))

if how == "shard_map":
    def per_device(a, b, w, c):
        value, grad = jax.value_and_grad(lambda a: c[0] * loss(a, b, w, "d"))(a)
        return value[None], grad
    mesh = Mesh(np.array(jax.devices("cpu")[:k]), ("d",))
    f = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("d"),) * 4,
                              out_specs=(P("d"), P("d"))))
    out = f(za, zb, w, scale)
else:  # pmap, forward only
    out = jax.pmap(lambda a, b, w: loss(a, b, w, "i"), axis_name="i")(
        za.reshape(k, n, 5), zb.reshape(k, n, 5), w.reshape(k, n))
    out = (out,)
for s in sorted(out[0].addressable_shards, key=lambda s: s.device.id):
    try:
        np.asarray(s.data)
        print("device", s.device.id, "no error")
    except jax.errors.JaxRuntimeError as e:
        print("device", s.device.id, "JaxRuntimeError", str(e).splitlines()[0])
"""


@pytest.mark.parametrize("case,how,message", [
    ("za", "shard_map", "forward: za has NaN at row 1, column 0 (rank 2)"),
    ("zb", "shard_map", "forward: zb has NaN at row 1, column 0 (rank 2)"),
    ("weight", "shard_map", "forward: sample_weight has NaN at index 1 (rank 2)"),
    ("upstream", "shard_map", "backward: upstream gradient has NaN at index 0 (rank 2)"),
    ("za", "pmap", "forward: za has NaN at row 1, column 0 (rank 2)"),
])
def test_input_error_on_one_device_fails_on_every_device(case, how, message):
    import subprocess
    import sys
    import time

    start = time.monotonic()
    try:
        run = subprocess.run([sys.executable, "-c", _ONE_DEVICE_ERROR, case, how],
                             capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("a NaN in {} on device 2 ({}) did not fail within 60 s".format(case, how))
    seconds = time.monotonic() - start
    assert run.returncode == 0, "the process ended with {} (a stalled all-gather aborts)\n{}".format(
        run.returncode, run.stderr[-3000:])
    lines = [l for l in run.stdout.splitlines() if l.startswith("device ")]
    assert len(lines) == 4, run.stdout + run.stderr[-3000:]
    for device, line in enumerate(lines):
        assert line.startswith("device {} JaxRuntimeError".format(device)), line
        # The library's message, with the rank that has the NaN, on every device.
        assert line.endswith("simclr_loss.jax " + message), line
    assert seconds < 60


def test_sample_weight_shape_is_the_library_rule_at_trace_time():
    # Shapes are static and the same on every device, so a bad one fails before anything runs, with
    # the library's message (that of the numpy front end).
    za, zb, _ = _data(16, 4, seed=4)
    w = np.ones(12)  # [3] per device for 4 pairs per device
    with pytest.raises(ValueError) as numpy_error:
        simclr_loss.SimCLRLoss(reduction="sum")(za[:4], zb[:4], sample_weight=w[:3])

    def per_device(a, b, w):
        return sj.simclr_loss(a, b, reduction="sum", sample_weight=w, axis_name="d")[None]

    f = jax.shard_map(per_device, mesh=_mesh(4), in_specs=(P("d"),) * 3, out_specs=P("d"))
    with pytest.raises(ValueError) as jax_error:
        jax.jit(f).trace(za, zb, w)
    assert str(jax_error.value) == str(numpy_error.value) == "Incompatible shapes: [4] vs. [3]"


# A traced (learnable) temperature across devices (docs/math.md section 4.6): replicated over the
# axis, jax.grad gives the global dJ/dT on every device whatever gradient_reduction says (JAX's own
# rule for a replicated input); one value per device gives each device its share, scaled as the
# embeddings' gradients are, so that the shares add up (sum) or average (mean) to dJ/dT.
@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("reduction", ["auto", "none"])
@pytest.mark.parametrize("gradient_reduction", ["sum", "mean"])
def test_a_traced_temperature_across_devices(k, reduction, gradient_reduction):
    za, zb, w = _data(3 * k, 5, seed=10 + k)
    g_total = None if reduction == "none" else "infer"

    def per_device(a, b, wd, t):
        out = sj.simclr_loss(a, b, temperature=t.reshape(()), reduction=reduction, sample_weight=wd,
                             axis_name="d", global_batch_size=g_total,
                             gradient_reduction=gradient_reduction)
        return jnp.sum(out)[None]

    def sharded(t_spec):
        f = jax.shard_map(per_device, mesh=_mesh(k), in_specs=(P("d"), P("d"), P("d"), t_spec),
                          out_specs=P("d"))
        return jax.jit(lambda t: jnp.sum(f(za, zb, w, t)))

    def single(t):
        return jnp.sum(sj.simclr_loss(za, zb, temperature=t, reduction=reduction, sample_weight=w))

    want = float(jax.grad(single)(jnp.asarray(0.15)))
    replicated = float(jax.grad(sharded(P()))(jnp.asarray([0.15])).reshape(()))
    assert abs(replicated - want) <= 1e-11 * abs(want), (replicated, want)
    shares = np.asarray(jax.grad(sharded(P("d")))(jnp.full((k,), 0.15)))
    total = shares.sum() / (k if gradient_reduction == "mean" else 1)
    assert abs(total - want) <= 1e-11 * abs(want), (shares, want)
