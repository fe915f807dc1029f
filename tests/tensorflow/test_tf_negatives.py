"""Extra negatives (a memory bank) in simclr_loss.tensorflow and simclr_loss.keras on TensorFlow: the
per-example loss and its gradients against TF Similarity's formulation written here in TensorFlow
with the bank's normalised rows appended to every anchor's logits (differentiated by TensorFlow's
autodiff, independently of the library), locally and under MirroredStrategy over 2 and 4 replicas in
both scopes; no gradient reaches the bank; the library's errors on every replica."""

import numpy as np
import pytest
import tensorflow as tf

import simclr_loss.keras as sk
import simclr_loss.tensorflow as st
from conftest import max_rel
from test_tf_distributed import _split, _strategy

T = 0.2


def _reference_per_example(za, zb, bank, temperature=T):
    """TF Similarity's per-example loss with the bank appended, in plain TensorFlow ops."""
    a = tf.math.l2_normalize(za, axis=1)
    b = tf.math.l2_normalize(zb, axis=1)
    k = tf.math.l2_normalize(bank, axis=1)
    n = tf.shape(a)[0]
    mask = tf.one_hot(tf.range(n), n, dtype=a.dtype) * 1e9

    def direction(h1, h2):
        logits = tf.concat([tf.matmul(h1, h2, transpose_b=True) / temperature,
                            tf.matmul(h1, h1, transpose_b=True) / temperature - mask,
                            tf.matmul(h1, k, transpose_b=True) / temperature], axis=1)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(tf.range(n), logits)

    return direction(a, b) + direction(b, a)


def _data(g=6, d=5, k=7, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    za = rng.standard_normal((g, d)).astype(dtype)
    zb = rng.standard_normal((g, d)).astype(dtype)
    bank = (3 * rng.standard_normal((k, d))).astype(dtype)
    return za, zb, bank


def _reference_step(za, zb, banks, starts):
    """Every replica's loss and the gradient of their sum: replica r's rows against the whole batch
    and banks[r]."""
    a, b = tf.constant(za), tf.constant(zb)
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        losses = [_reference_per_example(a, b, tf.constant(bank))[starts[r]:starts[r + 1]]
                  for r, bank in enumerate(banks)]
        total = tf.add_n([tf.reduce_sum(x) for x in losses])
    ga, gb = tape.gradient(total, [a, b])
    return [x.numpy() for x in losses], ga.numpy(), gb.numpy()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k", [0, 1, 7])
def test_local_values_and_gradients(dtype, k):
    za, zb, bank = _data(k=k, dtype=dtype)
    a, b, kb = tf.constant(za), tf.constant(zb), tf.Variable(bank)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([a, b])
        loss = st.simclr_loss(a, b, temperature=T, negatives=kb)
        total = tf.reduce_sum(loss)
    ga, gb = tape.gradient(total, [a, b])
    assert tape.gradient(total, kb) is None  # the bank is a constant of the loss
    want, want_a, want_b = _reference_step(za, zb, [bank], [0, len(za)])
    tol = 1e-12 if dtype == np.float64 else 2e-5
    assert loss.dtype == dtype
    assert max_rel(loss.numpy(), want[0], 1.0) <= tol
    assert max_rel(ga.numpy(), want_a, 1.0) <= tol
    assert max_rel(gb.numpy(), want_b, 1.0) <= tol


def test_bank_changes_the_loss_and_empty_equals_none():
    za, zb, bank = _data()
    plain = st.simclr_loss(za, zb, temperature=T).numpy()
    empty = st.simclr_loss(za, zb, temperature=T, negatives=bank[:0]).numpy()
    np.testing.assert_array_equal(plain, empty)
    assert np.all(st.simclr_loss(za, zb, temperature=T, negatives=bank).numpy() > plain)


def test_inside_tf_function():
    za, zb, bank = _data()
    f = tf.function(lambda a, b, k: st.simclr_loss(a, b, temperature=T, negatives=k))
    want, _, _ = _reference_step(za, zb, [bank], [0, len(za)])
    assert max_rel(f(za, zb, bank).numpy(), want[0], 1.0) <= 1e-12


def test_keras_loss_takes_negatives():
    za, zb, bank = _data()
    loss = sk.SimCLRLoss(temperature=T, reduction="sum")
    want, _, _ = _reference_step(za, zb, [bank], [0, len(za)])
    got = loss(tf.constant(za), tf.constant(zb), negatives=bank)
    assert abs(float(got) - float(np.sum(want[0]))) <= 1e-6 * float(np.sum(want[0]))


def test_errors_are_the_librarys():
    za, zb, bank = _data()
    with pytest.raises(tf.errors.InvalidArgumentError, match="negatives are \\[7, 4\\] but the "
                                                             "embeddings have 5 columns"):
        st.simclr_loss(za, zb, negatives=bank[:, :4])
    with pytest.raises(tf.errors.InvalidArgumentError, match="negatives have dtype float32 but za "
                                                             "and zb have float64"):
        st.simclr_loss(za, zb, negatives=bank.astype(np.float32))
    bad = bank.copy()
    bad[2, 1] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="negatives has NaN"):
        st.simclr_loss(za, zb, negatives=bad)
    with pytest.raises(ValueError, match="negatives_scope must be"):
        st.simclr_loss(za, zb, negatives=bank, negatives_scope="everywhere")


def _replica_bank(banks):
    def value(ctx):
        return tf.constant(banks[ctx.replica_id_in_sync_group])
    return value


@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("replicas", [2, 4])
def test_mirrored_strategy_equals_the_reference(scope, replicas):
    strategy = _strategy(replicas)
    za, zb, _ = _data(g=9)
    rng = np.random.default_rng(replicas)
    # Replica r holds r + 1 bank rows, the last replica none.
    banks = [rng.standard_normal((r + 1 if r < replicas - 1 else 0, 5)) for r in range(replicas)]
    starts = list(np.linspace(0, 9, replicas + 1).astype(int))  # uneven: 4 + 5, 2 + 2 + 2 + 3
    seen = banks if scope == "local" else [np.concatenate(banks)] * replicas
    want, want_a, want_b = _reference_step(za, zb, seen, starts)

    def step(a, b, k):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            loss = st.simclr_loss(a, b, temperature=T, negatives=k, negatives_scope=scope)
            total = tf.reduce_sum(loss)
        ga, gb = tape.gradient(total, [a, b])
        return loss, ga, gb

    a = _split(strategy, za, starts)
    b = _split(strategy, zb, starts)
    k = strategy.experimental_distribute_values_from_function(_replica_bank(banks))
    out = tf.function(lambda a, b, k: strategy.run(step, args=(a, b, k)))(a, b, k)
    losses, gas, gbs = ([t.numpy() for t in strategy.experimental_local_results(o)] for o in out)
    for r in range(replicas):
        assert max_rel(losses[r], want[r], 1.0) <= 1e-12, r
    assert max_rel(np.concatenate(gas), want_a, 1.0) <= 1e-12
    assert max_rel(np.concatenate(gbs), want_b, 1.0) <= 1e-12


def test_nan_in_one_replicas_bank_fails_every_replica():
    strategy = _strategy(2)
    za, zb, bank = _data(g=4)
    bad = bank.copy()
    bad[0, 0] = np.nan
    k = strategy.experimental_distribute_values_from_function(_replica_bank([bank, bad]))
    a = _split(strategy, za, [0, 2, 4])
    b = _split(strategy, zb, [0, 2, 4])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"negatives has NaN .*\(rank 1\)"):
        strategy.run(lambda a, b, k: st.simclr_loss(a, b, negatives=k), args=(a, b, k))
