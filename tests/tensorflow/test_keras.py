"""simclr_loss.keras.SimCLRLoss as a Keras loss: model.fit under MirroredStrategy (2 and 4 logical CPUs)
against a TensorFlow implementation of TF Similarity's formulation written here, get_config /
from_config, the serializable name, save and load of a model holding the loss, and bad inputs."""

import math

import numpy as np
import pytest
import tensorflow as tf

import simclr_loss.keras as sk
import simclr_loss.tensorflow as st
from test_tf_distributed import _strategy

LARGE_NUM = 1e9


class ReferenceSimCLRLoss(tf.keras.losses.Loss):
    """TF Similarity's formulation (docs/math.md): L2-normalise both views, gather them from every
    replica, logits / temperature with each anchor's own similarity pushed down by a large number,
    softmax cross-entropy in both directions, summed. Gradients by autodiff, through the replicas'
    all-gather. The label offset is the rows of the replicas before this one (uneven batches)."""

    def __init__(self, temperature=0.05, **kwargs):
        super().__init__(**kwargs)
        self.temperature = temperature

    def call(self, za, zb):
        ha = tf.math.l2_normalize(za, axis=1)
        hb = tf.math.l2_normalize(zb, axis=1)
        n = tf.shape(ha)[0]
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            ga = ctx.all_gather(ha, axis=0)
            gb = ctx.all_gather(hb, axis=0)
            counts = ctx.all_gather(tf.reshape(n, [1]), axis=0)
            before = tf.range(ctx.num_replicas_in_sync) < ctx.replica_id_in_sync_group
            offset = tf.reduce_sum(tf.where(before, counts, tf.zeros_like(counts)))
        else:
            ga, gb, offset = ha, hb, 0
        g = tf.shape(ga)[0]
        idx = offset + tf.range(n)
        labels = tf.one_hot(idx, 2 * g, dtype=ha.dtype)
        masks = tf.one_hot(idx, g, dtype=ha.dtype)
        t = tf.cast(self.temperature, ha.dtype)
        aa = tf.matmul(ha, ga, transpose_b=True) / t - masks * LARGE_NUM
        bb = tf.matmul(hb, gb, transpose_b=True) / t - masks * LARGE_NUM
        ab = tf.matmul(ha, gb, transpose_b=True) / t
        ba = tf.matmul(hb, ga, transpose_b=True) / t
        loss_a = tf.nn.softmax_cross_entropy_with_logits(labels, tf.concat([ab, aa], 1))
        loss_b = tf.nn.softmax_cross_entropy_with_logits(labels, tf.concat([ba, bb], 1))
        return loss_a + loss_b


class PairModel(tf.keras.Model):
    """A small encoder trained on pairs of views, the loss called as TF Similarity's models do:
    compiled_loss(za, zb)."""

    def __init__(self, dim=6, **kwargs):
        super().__init__(**kwargs)
        self.hidden = tf.keras.layers.Dense(16, activation="tanh",
                                            kernel_initializer=tf.keras.initializers.GlorotUniform(1))
        self.out = tf.keras.layers.Dense(dim, kernel_initializer=tf.keras.initializers.GlorotUniform(2))

    def call(self, x):
        return self.out(self.hidden(x))

    def train_step(self, data):
        xa, xb = data
        with tf.GradientTape() as tape:
            za = self(xa, training=True)
            zb = self(xb, training=True)
            loss = self.compiled_loss(za, zb, regularization_losses=self.losses)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return {"loss": loss}


def _pairs(rows, features=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    return x + 0.1 * rng.normal(size=x.shape), x + 0.1 * rng.normal(size=x.shape)


def _fit(strategy, loss, batch, rows, epochs=2):
    """(loss per epoch, weights after training, weights before)."""
    xa, xb = _pairs(rows)
    with strategy.scope():
        model = PairModel()
        model.build((None, xa.shape[1]))
        model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss=loss)
    initial = [w.numpy() for w in model.weights]
    data = tf.data.Dataset.from_tensor_slices((xa.astype(np.float32), xb.astype(np.float32)))
    history = model.fit(data.batch(batch), epochs=epochs, verbose=0, shuffle=False)
    return history.history["loss"], [w.numpy() for w in model.weights], initial


@pytest.mark.parametrize("replicas,batch,rows", [(2, 8, 32), (4, 8, 32), (2, 8, 30), (4, 12, 42)])
def test_fit_matches_reference(replicas, batch, rows):
    # rows not a multiple of the batch: the last batch of an epoch is smaller and split unevenly.
    strategy = _strategy(replicas)
    loss_ref, weights_ref, _ = _fit(strategy, ReferenceSimCLRLoss(temperature=0.2), batch, rows)
    loss_got, weights_got, initial = _fit(strategy, sk.SimCLRLoss(temperature=0.2), batch, rows)
    np.testing.assert_allclose(loss_got, loss_ref, rtol=1e-5)
    for got, want in zip(weights_got, weights_ref):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Training moved the weights away from the initial ones (the comparison means something).
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(weights_got, initial)) > 1e-3


def test_fit_one_replica_matches_reference():
    strategy = tf.distribute.get_strategy()
    loss_ref, weights_ref, _ = _fit(strategy, ReferenceSimCLRLoss(temperature=0.5), 8, 24)
    loss_got, weights_got, _ = _fit(strategy, sk.SimCLRLoss(temperature=0.5), 8, 24)
    np.testing.assert_allclose(loss_got, loss_ref, rtol=1e-5)
    for got, want in zip(weights_got, weights_ref):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_reference_matches_goldens(golden_distributed):
    # The reference written here is TF Similarity's loss: checked against its goldens.
    case = next(c for c in golden_distributed["cases"]
                if c["replicas"] == 2 and c["dtype"] == "float32")
    za = tf.constant(np.asarray(case["za"], np.float32))
    zb = tf.constant(np.asarray(case["zb"], np.float32))
    got = ReferenceSimCLRLoss(temperature=case["temperature"], reduction="none")(za, zb).numpy()
    want = np.concatenate([r["loss"] for r in case["per_replica"]])
    np.testing.assert_allclose(got, want, rtol=5e-6)


# ---- config and serialization ----

def test_config_is_tf_similarity_s():
    assert sk.SimCLRLoss().get_config() == {"reduction": "auto", "name": None, "temperature": 0.05}
    assert list(sk.SimCLRLoss().get_config()) == ["reduction", "name", "temperature"]
    loss = sk.SimCLRLoss(temperature=0.1, reduction="sum", name="ntxent")
    assert loss.get_config() == {"reduction": "sum", "name": "ntxent", "temperature": 0.1}
    again = sk.SimCLRLoss.from_config(loss.get_config())
    assert type(again) is sk.SimCLRLoss and again.get_config() == loss.get_config()


def test_registered_under_tf_similarity_s_name():
    assert tf.keras.utils.get_registered_name(sk.SimCLRLoss) == "Similarity>SimCLRLoss"
    assert tf.keras.utils.get_registered_object("Similarity>SimCLRLoss") is sk.SimCLRLoss
    config = {"reduction": "sum", "name": None, "temperature": 0.2}
    # What a model compiled with TF Similarity's loss stores for it: the Keras 2.15 format (the
    # module is TF Similarity's, not installed here; the registered name decides) and the legacy one.
    stored = [{"module": "tensorflow_similarity.losses.simclr", "class_name": "SimCLRLoss",
               "config": config, "registered_name": "Similarity>SimCLRLoss"},
              {"class_name": "Similarity>SimCLRLoss", "config": config}]
    for s in stored:
        loss = tf.keras.losses.deserialize(s)
        assert type(loss) is sk.SimCLRLoss
        assert loss.get_config() == config
    assert tf.keras.losses.serialize(loss)["registered_name"] == "Similarity>SimCLRLoss"
    from keras.src.saving.legacy import serialization as legacy
    assert legacy.serialize_keras_object(loss)["class_name"] == "Similarity>SimCLRLoss"


@pytest.mark.parametrize("fmt", ["keras", "h5", "tf"])
def test_save_and_load_a_model_holding_the_loss(tmp_path, fmt):
    inputs = tf.keras.Input((4,))
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(3)(inputs))
    model.compile(optimizer="sgd", loss=sk.SimCLRLoss(temperature=0.3, reduction="sum"))
    path = str(tmp_path / ("model." + fmt if fmt != "tf" else "model"))
    model.save(path, save_format=fmt if fmt != "keras" else None)
    loaded = tf.keras.models.load_model(path)
    loss = loaded.loss
    assert isinstance(loss, sk.SimCLRLoss), type(loss)
    assert loss.get_config() == {"reduction": "sum", "name": None, "temperature": 0.3}
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6)


# ---- Keras semantics on one process: sample_weight and reductions are Keras's ----

@pytest.mark.parametrize("reduction", ["auto", "none", "sum", "sum_over_batch_size"])
@pytest.mark.parametrize("weight", [None, 2.0, [1.0, 0.0, 1.0, 0.0], [[1.0], [2.0], [3.0], [4.0]]])
def test_weights_and_reductions_are_keras_s(reduction, weight):
    rng = np.random.default_rng(3)
    za, zb = rng.normal(size=(2, 4, 3)).astype(np.float32)
    got = sk.SimCLRLoss(temperature=0.5, reduction=reduction)(za, zb, sample_weight=weight)
    want = ReferenceSimCLRLoss(temperature=0.5, reduction=reduction)(za, zb, sample_weight=weight)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-6)


def test_hand_checked_values():
    # docs/math.md, section 1.5: temperature 1, three pairs.
    za = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    zb = [[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]
    loss = sk.SimCLRLoss(temperature=1.0, reduction="none")(
        tf.constant(za, tf.float64), tf.constant(zb, tf.float64))
    np.testing.assert_allclose(loss.numpy(), [2.343702263, 1.959094756, 4.008438580], atol=1e-9)
    same = st.simclr_loss(tf.ones([4, 3], tf.float64), tf.ones([4, 3], tf.float64), temperature=0.3)
    np.testing.assert_allclose(same.numpy(), 2 * math.log(7), rtol=1e-12)


# ---- bad inputs: the library's messages ----

@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        sk.SimCLRLoss(temperature=temperature)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        st.simclr_loss(tf.ones([2, 2]), tf.ones([2, 2]), temperature=temperature)


@pytest.mark.parametrize("temperature,shown", [("abc", "str 'abc'"), (None, "NoneType None"),
                                               ([0.1], r"list \[0.1\]")])
def test_temperature_that_is_not_a_number(temperature, shown):
    # simclr_loss/_args.py's message, the same in every front end.
    with pytest.raises(TypeError, match="temperature must be a number > 0, got " + shown):
        sk.SimCLRLoss(temperature=temperature)
    with pytest.raises(TypeError, match="temperature must be a number > 0, got " + shown):
        st.simclr_loss(tf.ones([2, 2]), tf.ones([2, 2]), temperature=temperature)


def test_bad_reduction_is_keras_s():
    with pytest.raises(ValueError, match="Invalid Reduction Key: mean"):
        sk.SimCLRLoss(reduction="mean")


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_nan_and_inf_rows(mode):
    za = np.ones((3, 2), np.float32)
    za[1, 1] = np.nan
    zb = np.ones((3, 2), np.float32)
    zb[2, 0] = np.inf
    f = sk.SimCLRLoss()
    if mode == "function":
        f = tf.function(f)
    with pytest.raises(tf.errors.InvalidArgumentError, match="za has NaN at row 1, column 1"):
        f(za, np.ones((3, 2), np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="zb has Inf at row 2, column 0"):
        f(np.ones((3, 2), np.float32), zb)


def test_shape_mismatch():
    with pytest.raises(ValueError, match=r"za and zb must have the same shape: \[3, 2\] vs. \[4, 2\]"):
        sk.SimCLRLoss()(np.ones((3, 2), np.float32), np.ones((4, 2), np.float32))
    with pytest.raises(ValueError, match=r"za must be a 2-D \[n, d\] matrix, got shape \[3\]"):
        st.simclr_loss(tf.ones([3]), tf.ones([3]))
    with pytest.raises(TypeError, match="za is float32 but zb is float64"):
        st.simclr_loss(tf.ones([3, 2]), tf.ones([3, 2], tf.float64))
    # Shapes known only when it runs: the library's check, as InvalidArgumentError.
    f = tf.function(lambda a, b: sk.SimCLRLoss()(a, b),
                    input_signature=[tf.TensorSpec([None, 2], tf.float32)] * 2)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"za and zb must have the same shape: \[3, 2\] vs. \[4, 2\]"):
        f(np.ones((3, 2), np.float32), np.ones((4, 2), np.float32))


def test_bad_sample_weight_is_keras_s():
    za = np.ones((4, 2), np.float32)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="Incompatible shapes|"
                       "Dimensions must be equal|not compatible"):
        sk.SimCLRLoss()(za, za, sample_weight=[1.0, 2.0, 3.0])
