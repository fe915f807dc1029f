"""Extra negatives (a memory bank) in simclr_loss.jax: negatives=[K, d] join every anchor's candidates
as negatives only, L2-normalised, with no gradient. Checked against an independent formulation
written here with jax.numpy in float64: per direction the logits [h1 h2^T | h1 h1^T with the self
entry at -1e9 | h1 bank^T] / T, softmax cross-entropy against the positive, both directions summed,
then Keras's weight and reduction. Values for K in {0, 1, 7}, gradients in za and zb, dJ/dT of a
traced temperature, jit, K = 0 as no negatives, the errors, the functional memory bank
(memory_bank_init / _update / _negatives), and shard_map over 2 and 4 host devices with the local
and the global scope.

The shard_map tests need 4 host devices, which XLA makes only when XLA_FLAGS has
--xla_force_host_platform_device_count=4 before jax is imported: in a process that has fewer,
test_shard_map_in_a_process_of_its_own runs them in a pytest process of their own."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from jax.sharding import Mesh, PartitionSpec as P  # noqa: E402

sj = pytest.importorskip("simclr_loss.jax")
if sj._jax_ffi is None:
    pytest.skip("simclr was built without jax's FFI headers", allow_module_level=True)

REDUCTIONS = ["none", "sum", "sum_over_batch_size", "auto"]
_SUBPROCESS = "SIMCLR_JAX_NEGATIVES_SUBPROCESS"


# ---- the independent formulation ----

def _unit(x):
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=1, keepdims=True), 1e-12))


def _reference_values(za, zb, t, negatives, devices=1):
    """Per-pair values (unweighted). negatives: None, or one [K, d] per device (a list), whose rows
    the anchors of that device (rows [r m, (r + 1) m) of the batch, m = n / devices) see."""
    a, b = _unit(za), _unit(zb)
    n, d = a.shape
    m = n // devices
    out = []
    for r in range(devices):
        own = jnp.arange(r * m, (r + 1) * m)
        bank = jnp.zeros((0, d), a.dtype) if negatives is None else _unit(negatives[r])

        def direction(h1, h2):
            anchors = h1[own]
            logits = jnp.concatenate([anchors @ h2.T / t,
                                      anchors @ h1.T / t - 1e9 * jnp.eye(n)[own],
                                      anchors @ bank.T / t], axis=1)
            return -jax.nn.log_softmax(logits, axis=1)[jnp.arange(m), own]

        out.append(direction(a, b) + direction(b, a))
    return jnp.concatenate(out)


def _reference_loss(za, zb, t, reduction, w, negatives, devices=1):
    values = _reference_values(za, zb, t, negatives, devices)
    if w is not None:
        values = values * w
    if reduction == "none":
        return values
    return jnp.sum(values) / (1 if reduction == "sum" else za.shape[0])


def _data(n=6, d=5, k=7, seed=3, dtype=np.float64):
    rng = np.random.default_rng(seed)
    za = rng.normal(size=(n, d))
    zb = za + 0.5 * rng.normal(size=(n, d))
    bank = 3.0 * rng.normal(size=(k, d))  # not unit rows: the call normalises them
    w = np.linspace(0.5, 2.0, n)
    return za.astype(dtype), zb.astype(dtype), bank.astype(dtype), w.astype(dtype)


def _scalar(values, reduction, up):
    return jnp.sum(values * up) if reduction == "none" else 2.5 * values


# ---- one device ----

@pytest.mark.parametrize("k", [0, 1, 7])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_values_and_gradients_match_the_independent_formulation(k, reduction, weighted):
    za, zb, bank, w = _data(k=k)
    w = w if weighted else None
    up = np.linspace(-1.0, 1.0, za.shape[0])
    red = "sum_over_batch_size" if reduction == "auto" else reduction

    def ours(a, b):
        return sj.simclr_loss(a, b, temperature=0.2, reduction=reduction, sample_weight=w,
                              negatives=bank)

    def theirs(a, b):
        return _reference_loss(a, b, 0.2, red, w, [bank])

    np.testing.assert_allclose(ours(za, zb), theirs(za, zb), rtol=1e-12, atol=1e-14)
    got = jax.grad(lambda a, b: _scalar(ours(a, b), reduction, up), argnums=(0, 1))(za, zb)
    want = jax.grad(lambda a, b: _scalar(theirs(a, b), reduction, up), argnums=(0, 1))(za, zb)
    for g, h in zip(got, want):
        np.testing.assert_allclose(g, h, rtol=1e-10, atol=1e-13)


def test_the_negatives_change_the_loss():
    # The reference with the negatives differs from the one without: the checks above can fail.
    za, zb, bank, _ = _data(k=7)
    with_bank = sj.simclr_loss(za, zb, temperature=0.2, reduction="sum", negatives=bank)
    without = sj.simclr_loss(za, zb, temperature=0.2, reduction="sum")
    assert float(with_bank) > float(without) + 1e-3
    np.testing.assert_allclose(without, _reference_loss(za, zb, 0.2, "sum", None, None),
                               rtol=1e-12)


def test_negatives_get_no_gradient():
    za, zb, bank, _ = _data(k=7)
    g = jax.grad(lambda m: sj.simclr_loss(za, zb, temperature=0.2, negatives=m))(bank)
    assert g.shape == bank.shape
    np.testing.assert_array_equal(g, np.zeros_like(bank))
    # The same under jit, and with a traced temperature.
    g = jax.jit(jax.grad(lambda m, t: sj.simclr_loss(za, zb, temperature=t, negatives=m),
                         argnums=0))(bank, jnp.float64(0.3))
    np.testing.assert_array_equal(g, np.zeros_like(bank))


@pytest.mark.parametrize("k", [0, 1, 7])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("temperature", [0.3, 0.05])
def test_temperature_gradient_with_negatives(k, reduction, temperature):
    za, zb, bank, w = _data(k=k)
    za[2] = 0  # a zero row (its unit row is zero)
    up = np.linspace(-1.0, 1.0, za.shape[0])
    red = "sum_over_batch_size" if reduction == "auto" else reduction

    def ours(t):
        return _scalar(sj.simclr_loss(za, zb, temperature=t, reduction=reduction, sample_weight=w,
                                      negatives=bank), reduction, up)

    def theirs(t):
        return _scalar(_reference_loss(za, zb, t, red, w, [bank]), reduction, up)

    t = jnp.float64(temperature)
    value, grad = jax.value_and_grad(ours)(t)
    value_ref, grad_ref = jax.value_and_grad(theirs)(t)
    np.testing.assert_allclose(value, value_ref, rtol=1e-12)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-7)
    # jit, and the embeddings' gradients at the traced temperature.
    grad_jit = jax.jit(jax.grad(ours))(t)
    np.testing.assert_allclose(grad_jit, grad_ref, rtol=1e-7)

    def ours_ab(a, b, t):
        return _scalar(sj.simclr_loss(a, b, temperature=t, reduction=reduction, sample_weight=w,
                                      negatives=bank), reduction, up)

    def theirs_ab(a, b, t):
        return _scalar(_reference_loss(a, b, t, red, w, [bank]), reduction, up)

    got = jax.grad(ours_ab, argnums=(0, 1, 2))(za, zb, t)
    want = jax.grad(theirs_ab, argnums=(0, 1, 2))(za, zb, t)
    for g, h in zip(got, want):
        np.testing.assert_allclose(g, h, rtol=1e-7, atol=1e-12)


def test_temperature_gradient_is_not_the_one_without_negatives():
    za, zb, bank, _ = _data(k=7)
    t = jnp.float64(0.3)
    with_bank = jax.grad(lambda t: sj.simclr_loss(za, zb, temperature=t, negatives=bank))(t)
    without = jax.grad(lambda t: sj.simclr_loss(za, zb, temperature=t))(t)
    assert abs(float(with_bank) - float(without)) > 1e-3 * abs(float(without))


def test_jit_with_negatives():
    za, zb, bank, w = _data(k=7)

    def f(a, b, m, w):
        return sj.simclr_loss(a, b, temperature=0.1, sample_weight=w, negatives=m)

    eager = f(za, zb, bank, w)
    jitted = jax.jit(f)(za, zb, bank, w)
    np.testing.assert_allclose(jitted, eager, rtol=1e-14)
    np.testing.assert_allclose(jitted, _reference_loss(za, zb, 0.1, "sum_over_batch_size", w,
                                                       [bank]), rtol=1e-12)
    ga = jax.jit(jax.grad(f))(za, zb, bank, w)
    np.testing.assert_allclose(ga, jax.grad(f)(za, zb, bank, w), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_zero_negatives_is_no_negatives(reduction):
    za, zb, _, w = _data()
    empty = np.zeros((0, za.shape[1]))

    def f(m):
        def g(a, b, t):
            return jnp.sum(sj.simclr_loss(a, b, temperature=t, reduction=reduction,
                                          sample_weight=w, negatives=m))
        return g

    t = jnp.float64(0.2)
    np.testing.assert_array_equal(f(empty)(za, zb, t), f(None)(za, zb, t))
    for g, h in zip(jax.grad(f(empty), argnums=(0, 1, 2))(za, zb, t),
                    jax.grad(f(None), argnums=(0, 1, 2))(za, zb, t)):
        np.testing.assert_array_equal(g, h)


def test_float32_views_and_negatives():
    za, zb, bank, w = _data(k=7, dtype=np.float32)
    got = sj.simclr_loss(za, zb, temperature=0.2, sample_weight=w, negatives=bank)
    assert got.dtype == jnp.float32
    want = _reference_loss(za.astype(np.float64), zb.astype(np.float64), 0.2,
                           "sum_over_batch_size", w.astype(np.float64), [bank.astype(np.float64)])
    np.testing.assert_allclose(got, want, rtol=2e-5)
    ga = jax.grad(lambda a: sj.simclr_loss(a, zb, temperature=0.2, negatives=bank))(za)
    ga_ref = jax.grad(lambda a: _reference_loss(a, zb.astype(np.float64), 0.2,
                                                "sum_over_batch_size", None,
                                                [bank.astype(np.float64)]))(za.astype(np.float64))
    np.testing.assert_allclose(ga, ga_ref, rtol=1e-3, atol=1e-5)


def test_bfloat16_views_and_negatives():
    # Computed in float32, returned in bfloat16; the negatives take the views' dtype.
    za, zb, bank, _ = _data(k=7)
    got = sj.simclr_loss(jnp.asarray(za, jnp.bfloat16), jnp.asarray(zb, jnp.bfloat16),
                         temperature=0.2, negatives=jnp.asarray(bank, jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    as_f64 = lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64)  # noqa: E731
    want = _reference_loss(as_f64(za), as_f64(zb), 0.2, "sum_over_batch_size", None,
                           [as_f64(bank)])
    np.testing.assert_allclose(np.float64(got), want, rtol=1e-2)
    with pytest.raises(TypeError, match="dtype"):
        sj.simclr_loss(jnp.asarray(za, jnp.bfloat16), jnp.asarray(zb, jnp.bfloat16),
                       negatives=jnp.asarray(bank, jnp.float32))


def test_the_scope_changes_nothing_without_an_axis():
    za, zb, bank, _ = _data(k=7)
    local = sj.simclr_loss(za, zb, temperature=0.2, negatives=bank, negatives_scope="local")
    glob = sj.simclr_loss(za, zb, temperature=0.2, negatives=bank, negatives_scope="global")
    np.testing.assert_array_equal(local, glob)


def test_simclr_loss_class_takes_negatives_and_keeps_its_scope():
    za, zb, bank, w = _data(k=7)
    loss = sj.SimCLRLoss(temperature=0.2, reduction="sum", negatives_scope="global")
    np.testing.assert_allclose(loss(za, zb, sample_weight=w, negatives=bank),
                               _reference_loss(za, zb, 0.2, "sum", w, [bank]), rtol=1e-12)
    again = pickle.loads(pickle.dumps(loss))
    assert again.negatives_scope == "global"
    assert sj.SimCLRLoss().negatives_scope == "local"
    with pytest.raises(ValueError, match="negatives_scope"):
        sj.SimCLRLoss(negatives_scope="shared")


def test_errors():
    za, zb, bank, _ = _data(k=7)
    with pytest.raises(TypeError, match="dtype"):
        sj.simclr_loss(za, zb, negatives=bank.astype(np.float32))
    with pytest.raises(ValueError, match="columns"):
        sj.simclr_loss(za, zb, negatives=bank[:, :3])
    with pytest.raises(ValueError, match=r"\[K, d\]"):
        sj.simclr_loss(za, zb, negatives=bank[0])
    with pytest.raises(ValueError, match="negatives_scope"):
        sj.simclr_loss(za, zb, negatives=bank, negatives_scope="shared")
    with pytest.raises(ValueError, match="negatives_scope"):
        sj.simclr_loss(za, zb, negatives_scope=None)
    # NaN in the negatives: the library's check, when the call runs (eager and under jit).
    bad = bank.copy()
    bad[3, 1] = np.nan
    for f in (lambda m: sj.simclr_loss(za, zb, negatives=m),
              jax.jit(lambda m: sj.simclr_loss(za, zb, negatives=m))):
        with pytest.raises(Exception, match="negatives"):
            jax.block_until_ready(f(bad))


# ---- the memory bank ----

def test_memory_bank_fills_fifo_and_drops_the_oldest():
    size, d = 5, 3
    state = sj.memory_bank_init(size, d, jnp.float64)
    assert state.filled == 0 and sj.memory_bank_negatives(state).shape == (0, d)
    rng = np.random.default_rng(0)
    fifo = []  # the model: the unit rows, oldest first
    for m in (2, 2, 3, 1, 4, 7, 0, 5):
        z = rng.normal(size=(m, d))
        new = sj.memory_bank_update(state, z)
        assert state.filled <= size  # the old state is left as it was
        state = new
        fifo = (fifo + list(z / np.linalg.norm(z, axis=1, keepdims=True)))[-size:]
        got = np.asarray(sj.memory_bank_negatives(state))
        assert state.filled == len(fifo) and got.shape == (len(fifo), d)
        # The same rows as the model's, in some order (the order of a bank is no part of the loss).
        order = lambda x: x[np.lexsort(x.T[::-1])]  # noqa: E731
        np.testing.assert_allclose(order(got), order(np.array(fifo)), rtol=1e-15)
        # The pointer is the oldest row once full.
        if state.filled == size:
            np.testing.assert_allclose(got[int(state.pointer)], fifo[0], rtol=1e-15)


def test_memory_bank_key_init_is_full_of_unit_rows():
    state = sj.memory_bank_init(8, 4, jnp.float32, key=jax.random.PRNGKey(0))
    assert state.filled == 8 and state.bank.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(sj.memory_bank_negatives(state), axis=1), 1.0,
                               rtol=1e-6)
    with pytest.raises(ValueError):
        sj.memory_bank_init(0, 4)
    with pytest.raises(ValueError, match="z must be"):
        sj.memory_bank_update(state, np.ones((2, 5), np.float32))
    with pytest.raises(TypeError):
        sj.memory_bank_negatives(state.bank)


def test_memory_bank_rows_are_detached():
    state = sj.memory_bank_init(4, 3, jnp.float64)
    z = np.arange(6.0).reshape(2, 3) + 1

    def f(z):
        return jnp.sum(sj.memory_bank_update(state, z).bank ** 3)

    np.testing.assert_array_equal(jax.grad(f)(z), np.zeros_like(z))


def test_memory_bank_in_a_jitted_training_step():
    # The bank is an argument and a result of a jitted step: filled is static (retraced while the
    # bank fills), the pointer a traced scalar. The loss of each step is the reference's with the
    # bank's rows before the step's update.
    za0, zb0, _, _ = _data(n=4, d=5, k=0)
    w = jnp.ones((5, 5)) + 0.1 * jnp.eye(5)

    @jax.jit
    def step(w, bank, a, b):
        def loss(w):
            return sj.simclr_loss(a @ w, b @ w, temperature=0.2,
                                  negatives=sj.memory_bank_negatives(bank))
        value, g = jax.value_and_grad(loss)(w)
        return w - 0.1 * g, sj.memory_bank_update(bank, b @ w), value

    bank = sj.memory_bank_init(6, 5, jnp.float64)
    rng = np.random.default_rng(5)
    for i in range(5):
        a, b = za0 + 0.1 * rng.normal(size=za0.shape), zb0 + 0.1 * rng.normal(size=zb0.shape)
        negatives = np.asarray(sj.memory_bank_negatives(bank))
        want = _reference_loss(a @ w, b @ w, 0.2, "sum_over_batch_size", None, [negatives])
        new_w, bank, value = step(w, bank, a, b)
        np.testing.assert_allclose(value, want, rtol=1e-12)
        assert bank.filled == min(6, 4 * (i + 1))
        w = new_w


# ---- shard_map over host devices ----

def _mesh(k):
    return Mesh(np.array(jax.devices("cpu")[:k]), ("d",))


def _need_devices():
    if len(jax.devices("cpu")) < 4:
        pytest.skip("needs 4 host devices (test_shard_map_in_a_process_of_its_own runs these)")


def _sharded(k, reduction, weighted, scope, traced_t=False):
    """J(za, zb, banks, w, t) = the sum over the k devices of each device's loss; banks [k K, d]:
    device r's rows [r K, (r + 1) K)."""
    g_total = None if reduction in ("sum", "none") else "infer"

    def per_device(a, b, m, w, t):
        out = sj.simclr_loss(a, b, temperature=t if traced_t else 0.2, reduction=reduction,
                             sample_weight=w if weighted else None, axis_name="d",
                             global_batch_size=g_total, negatives=m, negatives_scope=scope)
        return jnp.sum(out)[None]

    f = jax.shard_map(per_device, mesh=_mesh(k), in_specs=(P("d"), P("d"), P("d"), P("d"), P()),
                      out_specs=P("d"))
    return jax.jit(lambda a, b, m, w, t: jnp.sum(f(a, b, m, w, t)))


def _sharded_reference(k, reduction, weighted, scope, kk):
    def j(a, b, banks, w, t):
        per = [banks[r * kk:(r + 1) * kk] for r in range(k)]
        if scope == "global":
            per = [banks] * k
        red = "sum" if reduction in ("sum", "none") else "sum_over_batch_size"
        return jnp.sum(_reference_loss(a, b, t, red, w if weighted else None, per, devices=k))
    return j


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("reduction", ["auto", "sum", "none"])
@pytest.mark.parametrize("kk", [1, 3])
def test_shard_map_against_the_reference(k, scope, reduction, kk):
    _need_devices()
    rng = np.random.default_rng(10 * k + kk)
    n, d = 3 * k, 5
    za, zb = rng.normal(size=(2, n, d))
    banks = 2.0 * rng.normal(size=(k * kk, d))
    w = rng.uniform(0.5, 2.0, size=n)
    t = jnp.float64(0.2)
    ours = _sharded(k, reduction, True, scope)
    theirs = _sharded_reference(k, reduction, True, scope, kk)
    value, grads = jax.value_and_grad(ours, argnums=(0, 1, 2))(za, zb, banks, w, t)
    value_ref, grads_ref = jax.value_and_grad(theirs, argnums=(0, 1))(za, zb, banks, w, t)
    np.testing.assert_allclose(value, value_ref, rtol=1e-12)
    for g, h in zip(grads[:2], grads_ref):
        np.testing.assert_allclose(g, h, rtol=1e-10, atol=1e-13)
    np.testing.assert_array_equal(grads[2], np.zeros_like(banks))
    # The two scopes differ (the reference of the other scope is not this one's).
    other = _sharded_reference(k, reduction, True, "global" if scope == "local" else "local", kk)
    assert abs(float(other(za, zb, banks, w, t)) - float(value_ref)) > 1e-6


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("reduction", ["auto", "sum"])
def test_shard_map_temperature_gradient(k, scope, reduction):
    _need_devices()
    rng = np.random.default_rng(k)
    n, d, kk = 2 * k, 4, 3
    za, zb = rng.normal(size=(2, n, d))
    banks = rng.normal(size=(k * kk, d))
    w = rng.uniform(0.5, 2.0, size=n)
    t = jnp.float64(0.3)
    ours = _sharded(k, reduction, True, scope, traced_t=True)
    theirs = _sharded_reference(k, reduction, True, scope, kk)
    got = jax.grad(ours, argnums=(0, 1, 4))(za, zb, banks, w, t)
    want = jax.grad(theirs, argnums=(0, 1, 4))(za, zb, banks, w, t)
    for g, h in zip(got, want):
        np.testing.assert_allclose(g, h, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("scope", ["local", "global"])
def test_shard_map_nan_in_one_device_negatives_fails_every_device(scope):
    _need_devices()
    rng = np.random.default_rng(1)
    za, zb = rng.normal(size=(2, 8, 4))
    banks = rng.normal(size=(8, 4))
    banks[5, 2] = np.nan  # device 2's rows (K = 2)
    f = _sharded(4, "sum", False, scope)
    with pytest.raises(Exception, match="negatives"):
        jax.block_until_ready(f(za, zb, banks, np.ones(8), jnp.float64(0.2)))


def test_shard_map_with_a_memory_bank_per_device():
    # Each device keeps its own bank (sharded over the axis; the pointer is the same on every
    # device, as each enqueues as many rows): local scope, lightly's memory bank under DDP.
    _need_devices()
    k, m, d, size = 2, 3, 4, 4
    rng = np.random.default_rng(7)

    def per_device(a, b, bank, pointer, filled):
        state = sj.MemoryBank(bank, pointer, filled)
        value = sj.simclr_loss(a, b, temperature=0.2, reduction="sum", axis_name="d",
                               negatives=sj.memory_bank_negatives(state))
        new = sj.memory_bank_update(state, b)
        return value[None], new.bank, new.pointer

    state = sj.memory_bank_init(k * size, d, jnp.float64)  # k banks of `size` rows, stacked
    bank, pointer, filled = state.bank, state.pointer, 0
    banks_model = [[] for _ in range(k)]
    for step in range(3):
        za, zb = rng.normal(size=(2, k * m, d))
        f = jax.jit(jax.shard_map(lambda a, b, bk, p: per_device(a, b, bk, p, filled),
                                  mesh=_mesh(k), in_specs=(P("d"), P("d"), P("d"), P()),
                                  out_specs=(P("d"), P("d"), P())))
        values, bank, pointer = f(za, zb, bank, pointer)
        per = [np.array(b).reshape(-1, d) if b else np.zeros((0, d)) for b in banks_model]
        want = _reference_loss(za, zb, 0.2, "sum", None, per, devices=k)
        np.testing.assert_allclose(jnp.sum(values), want, rtol=1e-12)
        for r in range(k):
            rows = zb[r * m:(r + 1) * m]
            banks_model[r] = (banks_model[r] + list(rows / np.linalg.norm(rows, axis=1,
                                                                          keepdims=True)))[-size:]
        filled = min(size, filled + m)


def test_shard_map_in_a_process_of_its_own():
    if len(jax.devices("cpu")) >= 4:
        pytest.skip("this process has 4 host devices: the shard_map tests ran in it")
    if os.environ.get(_SUBPROCESS):
        pytest.fail("the subprocess has fewer than 4 host devices")
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env[_SUBPROCESS] = "1"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           __file__, "-k", "shard_map and not own"],
                          env=env, capture_output=True, text=True, timeout=900)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], tail
