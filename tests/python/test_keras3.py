"""simclr_loss.keras.SimCLRLoss on Keras 3, on the backend KERAS_BACKEND names (tensorflow, jax or torch;
this module sets jax unless it is set): every case of the TF Similarity goldens
(tests/data/golden_single.json), value and gradients (under jax.jit, tf.function or torch autograd),
with Keras 3's own sample_weight handling and reductions; config and serialization round trips.
Keras 3 reads its backend when it is first imported, so each backend is a process of its own
(tests/scripts/current_test.sh runs all three)."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")
if int(keras.__version__.split(".")[0]) < 3:
    pytest.skip("needs Keras 3", allow_module_level=True)
BACKEND = keras.backend.backend()
if BACKEND == "jax":
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    sj = pytest.importorskip("simclr_loss.jax")
    if sj._jax_ffi is None:
        pytest.skip("simclr was built without jax's FFI headers", allow_module_level=True)
elif BACKEND == "tensorflow":
    tf = pytest.importorskip("tensorflow")
    import simclr_loss  # noqa: E402
    import pathlib  # noqa: E402
    if not (pathlib.Path(simclr_loss.__file__).parent / "_tf_ops.so").exists():
        pytest.skip("simclr was built without TensorFlow (simclr_loss/_tf_ops.so)",
                    allow_module_level=True)
elif BACKEND == "torch":
    torch = pytest.importorskip("torch")
else:
    pytest.skip("simclr_loss.keras supports the tensorflow, jax and torch backends, not " + BACKEND,
                allow_module_level=True)
import simclr_loss.keras as sk  # noqa: E402


def _value_and_grads_jax(loss, za, zb, w):
    weight = None if w is None else jax.numpy.asarray(w, za.dtype)

    def objective(a, b):
        value = loss(a, b, sample_weight=weight)
        return jax.numpy.sum(value), value

    (_, value), (grad_a, grad_b) = jax.jit(jax.value_and_grad(objective, argnums=(0, 1),
                                                              has_aux=True))(za, zb)
    return value, grad_a, grad_b


def _value_and_grads_tensorflow(loss, za, zb, w):
    @tf.function
    def step(a, b):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            value = loss(a, b, sample_weight=None if w is None else tf.constant(w, a.dtype))
            total = tf.reduce_sum(value)
        return (value,) + tuple(tape.gradient(total, [a, b]))

    return [x.numpy() for x in step(tf.constant(za), tf.constant(zb))]


def _value_and_grads_torch(loss, za, zb, w):
    a = torch.tensor(za, requires_grad=True)
    b = torch.tensor(zb, requires_grad=True)
    value = loss(a, b, sample_weight=None if w is None else torch.tensor(w, dtype=a.dtype))
    value.sum().backward()
    return value.detach().numpy(), a.grad.numpy(), b.grad.numpy()


VALUE_AND_GRADS = {"jax": _value_and_grads_jax, "tensorflow": _value_and_grads_tensorflow,
                   "torch": _value_and_grads_torch}


def _keras_own_dtype(reduction, dtype):
    own = keras.losses.MeanSquaredError(reduction=reduction, dtype=dtype)
    x = keras.ops.convert_to_tensor(np.ones((2, 3)), dtype=dtype)
    return np.dtype(keras.backend.standardize_dtype(own(x, x).dtype))


def test_golden_single(golden_case, check_golden, golden_arrays):
    za, zb, w = golden_arrays(golden_case)
    # Keras 3 has no "auto": its default, "sum_over_batch_size", is what auto resolved to.
    reduction = golden_case["reduction"]
    reduction = "sum_over_batch_size" if reduction == "auto" else reduction
    loss = sk.SimCLRLoss(temperature=golden_case["temperature"], reduction=reduction,
                         dtype=golden_case["dtype"])
    value, grad_a, grad_b = VALUE_AND_GRADS[BACKEND](loss, za, zb, w)
    # The dtype Keras itself gives a loss of this dtype and reduction on this backend (on torch,
    # Keras 3.15's "sum_over_batch_size" divides in float32: its own losses come back float32 too).
    keras_dtype = _keras_own_dtype(reduction, golden_case["dtype"])
    assert np.dtype(value.dtype.name if hasattr(value.dtype, "name") else value.dtype) == keras_dtype
    if keras_dtype != za.dtype:
        golden_case = dict(golden_case, dtype=keras_dtype.name)  # compared at that precision
    value = np.asarray(value)
    if reduction == "none" and w is not None and w.ndim == 2:
        # Keras 3's own rule: a [N, 1] or [1, 1] weight makes the loss [N, 1] (Keras 2 squeezes the
        # weight instead); the values are the same.
        assert value.shape == (len(za), 1)
        value = value.reshape(-1)
    check_golden(golden_case, value, np.asarray(grad_a), np.asarray(grad_b))


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


def test_a_variable_temperature_is_learned():
    # A keras.Variable temperature (JAX and PyTorch backends): the loss's gradient reaches it, equal
    # to the front end's own dJ/dT at the same value; get_config() holds its current value.
    rng = np.random.default_rng(0)
    za, zb = rng.normal(size=(2, 6, 4))
    t = keras.Variable(0.2, dtype="float64", name="temperature")
    loss = sk.SimCLRLoss(temperature=t, reduction="sum", dtype="float64")
    assert loss.get_config()["temperature"] == 0.2
    if BACKEND == "tensorflow":
        with pytest.raises(NotImplementedError, match="needs the jax or torch backend"):
            loss(za, zb)
        return
    if BACKEND == "jax":
        def objective(value):
            with keras.StatelessScope(state_mapping=[(t, value)]):
                return loss(za, zb)

        got = float(jax.grad(objective)(jax.numpy.asarray(0.2)))
        want = float(jax.grad(lambda v: jax.numpy.sum(
            sj.simclr_loss(za, zb, temperature=v, reduction="sum")))(jax.numpy.asarray(0.2)))
    else:
        import simclr_loss.torch as st
        loss(torch.tensor(za), torch.tensor(zb)).backward()
        got = float(t.value.grad)
        tt = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
        st.simclr_loss(torch.tensor(za), torch.tensor(zb), temperature=tt, reduction="sum").backward()
        want = float(tt.grad)
    assert want != 0 and abs(got - want) <= 1e-12 * abs(want), (got, want)
    t.assign(0.3)
    assert loss.get_config()["temperature"] == 0.3
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loss(za, zb)),
        keras.ops.convert_to_numpy(sk.SimCLRLoss(temperature=0.3, reduction="sum",
                                                 dtype="float64")(za, zb)),
        rtol=1e-12)


@pytest.mark.skipif(BACKEND != "jax", reason="the Keras trainer step is checked on the JAX backend")
def test_a_train_step_moves_the_temperature_by_its_gradient():
    # A model that owns the temperature (a weight, as OpenCLIP's logit_scale): one SGD step of
    # Keras's own trainer moves it by -lr * dJ/dT, dJ/dT computed here by simclr_loss.jax on the
    # same embeddings.
    class TwoViews(keras.Model):
        def __init__(self):
            super().__init__()
            self.encoder = keras.layers.Dense(8)
            self.t = self.add_weight(shape=(), initializer=keras.initializers.Constant(0.5),
                                     name="temperature")
            self.crit = sk.SimCLRLoss(temperature=self.t, reduction="sum_over_batch_size")

        def call(self, x):
            return self.encoder(x[:, 0]), self.encoder(x[:, 1])

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            return self.crit(*y_pred)

    model = TwoViews()
    model.compile(optimizer=keras.optimizers.SGD(1e-3))
    x = np.random.default_rng(0).normal(size=(16, 2, 16)).astype("float32")
    za, zb = (np.asarray(v) for v in model(x))
    dj_dt = float(jax.grad(lambda t: sj.simclr_loss(za, zb, temperature=t,
                                                    reduction="sum_over_batch_size"))(
        jax.numpy.asarray(0.5, "float32")))
    model.train_on_batch(x)
    assert abs(float(model.t.value) - (0.5 - 1e-3 * dj_dt)) <= 1e-6, (model.t.value, dj_dt)
