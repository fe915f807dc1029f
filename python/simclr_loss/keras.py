"""simclr_loss.keras: a drop-in replacement for TensorFlow Similarity's SimCLRLoss.

    from simclr_loss.keras import SimCLRLoss      # instead of: from tensorflow_similarity.losses import SimCLRLoss
    loss = SimCLRLoss(temperature=0.1)       # the same constructor, config and serializable name

A Keras Loss whose call(za, zb) is the library's per-example loss [n]. Everything else is the Keras
base class's own: sample_weight, the reductions, the distribution rule (with Keras 2, inside
strategy.run, "auto" and "sum_over_batch_size" raise Keras's ValueError; in model.fit, Keras scales
the loss by the number of replicas itself).

- Keras 2 (TensorFlow 2.15, tf.keras: TF Similarity's setting): the TensorFlow custom op of
  simclr_loss.tensorflow, with its closed-form gradient and, under a tf.distribute strategy, global
  negatives from the replicas' all-gathers. get_config() is TF Similarity's.
- Keras 3 (the package `keras` 3.x): the loss dispatches on the backend, to simclr_loss.jax (JAX),
  simclr_loss.torch (PyTorch) or simclr_loss.tensorflow (TensorFlow, when the op library was built against
  that TensorFlow); one process, no distribution. get_config() is Keras 3's base config
  ({'name', 'reduction', ...}) plus 'temperature'. With Keras 3 on the JAX or PyTorch backend the
  temperature may be a keras.Variable (a learnable one, e.g. a weight of the model): each call reads
  its current value and the loss's gradient reaches it (dJ/dT, docs/math.md section 4.6).
- Extra negatives (a memory bank): loss(za, zb, negatives=bank, negatives_scope="local") on every
  backend and on Keras 2: they reach the backend's front end (simclr_loss.tensorflow, .jax or .torch),
  whose library call takes them as candidates only, with no gradient.
"""

from . import _args


def _keras():
    """(the Keras module, its major version): Keras 3 when the package `keras` 3.x is installed,
    else TensorFlow's tf.keras (Keras 2)."""
    try:
        import keras
        if int(keras.__version__.split(".")[0]) >= 3:
            return keras, 3
    except ImportError:
        pass
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise ImportError(
            "simclr_loss.keras needs TensorFlow (Keras 2: tensorflow-cpu>=2.15,<2.16, then "
            "rebuild simclr with --no-build-isolation for its TensorFlow op) or Keras 3 with the "
            "JAX or PyTorch backend; docs/python.md, 'TensorFlow and Keras'") from exc
    return tf.keras, 2


keras, KERAS_VERSION = _keras()

__all__ = ["SimCLRLoss"]


def _is_variable(temperature):
    return KERAS_VERSION == 3 and isinstance(temperature, keras.Variable)


def _per_example(za, zb, temperature, negatives=None):
    """The per-example loss [n]; negatives: None, or (the extra negatives, their scope)."""
    backend = "tensorflow" if KERAS_VERSION == 2 else keras.backend.backend()
    extra = {}
    if negatives is not None:
        extra = {"negatives": negatives[0], "negatives_scope": negatives[1]}
    if _is_variable(temperature):
        if backend not in ("jax", "torch"):
            raise NotImplementedError(
                "simclr_loss.keras: a keras.Variable temperature (a learnable one) needs the jax or "
                "torch backend; the TensorFlow op takes a fixed temperature (pass a number)")
        # The variable's current value: a traced array inside a Keras train step (JAX), a tensor
        # that requires grad (PyTorch); its gradient is the library's dJ/dT.
        temperature = temperature.value
    if backend == "tensorflow":
        from .tensorflow import simclr_loss
        return simclr_loss(za, zb, temperature=temperature, **extra)
    if backend == "jax":
        from .jax import simclr_loss
        return simclr_loss(za, zb, temperature=temperature, reduction="none", **extra)
    if backend == "torch":
        from .torch import simclr_loss
        return simclr_loss(za, zb, temperature=temperature, reduction="none", **extra)
    raise NotImplementedError("simclr_loss.keras supports the Keras backends tensorflow, jax and torch, "
                              "not " + repr(backend))


class SimCLRLoss(keras.losses.Loss):
    """TensorFlow Similarity's SimCLRLoss (NT-Xent, both directions summed) on the library.

    SimCLRLoss(temperature=0.05, **kwargs), kwargs those of Keras's Loss (reduction, name).
    Called as loss(za, zb, sample_weight=None) with za, zb: [n, d] (Keras's y_true and y_pred): row i
    of za and of zb are a positive pair. With Keras 2, get_config() is TF Similarity's dict
    {'reduction', 'name', 'temperature'}. Registered as "Similarity>SimCLRLoss", TF Similarity's
    serializable name, so a model saved with TF Similarity's loss loads with this one. temperature
    must be > 0 and finite (ValueError; Keras does not check it). With Keras 3 on the JAX or PyTorch
    backend it may be a keras.Variable, a learnable temperature: every call reads its current value
    (checked by the library when the call runs) and differentiates through it; get_config() then holds
    its current value, as a number, and from_config() gives a loss of that fixed temperature.
    """

    def __init__(self, temperature=0.05, **kwargs):
        super().__init__(**kwargs)
        if _is_variable(temperature):
            _args.temperature(float(keras.ops.convert_to_numpy(temperature.value)))
        else:
            _args.temperature(temperature)
        self.temperature = temperature

    def __call__(self, y_true, y_pred, sample_weight=None, *, negatives=None,
                 negatives_scope="local"):
        """Keras's call, and the keywords negatives (None, or extra negatives [K, d]: a memory
        bank's rows, converted to the loss's dtype as za and zb are; constants of the loss) and
        negatives_scope ("local" or "global"), which reach the backend's front end
        (simclr_loss.tensorflow, .jax or .torch)."""
        if negatives is None:
            return super().__call__(y_true, y_pred, sample_weight=sample_weight)
        _args.negatives_scope_code(negatives_scope)
        if KERAS_VERSION == 3:
            negatives = keras.ops.convert_to_tensor(negatives, dtype=self.dtype)
        self._negatives = (negatives, negatives_scope)
        try:
            return super().__call__(y_true, y_pred, sample_weight=sample_weight)
        finally:
            self._negatives = None

    def call(self, za, zb):
        return _per_example(za, zb, self.temperature, getattr(self, "_negatives", None))

    def get_config(self):
        t = self.temperature
        if _is_variable(t):
            t = float(keras.ops.convert_to_numpy(t.value))
        config = {"temperature": t}
        base_config = super().get_config()
        return {**base_config, **config}


# TF Similarity's name (package "Similarity", class "SimCLRLoss"). Keras keeps one class per name: when
# both libraries are imported, the one imported last holds it.
keras.saving.register_keras_serializable(package="Similarity")(SimCLRLoss)
