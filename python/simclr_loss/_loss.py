"""simclr_loss.SimCLRLoss: TensorFlow Similarity's SimCLRLoss on numpy arrays."""

import json

import numpy as np

from . import _args
from .comm import _Resolver


def _embeddings(x):
    # numpy arrays and DLPack producers go to the extension as they are (no copy); anything else
    # (lists, array-likes) through numpy.
    if isinstance(x, np.ndarray) or hasattr(x, "__dlpack__"):
        return x
    return np.asarray(x)


class _ConfigMixin:
    """TF Similarity's config of a loss object that keeps its _core.Loss in self._loss; shared by the
    front ends' SimCLRLoss classes. _repr_name names the class in repr()."""

    _repr_name = "SimCLRLoss"

    def get_config(self):
        """TF Similarity's dict: {'reduction': ..., 'name': ..., 'temperature': ...}, in that order."""
        return json.loads(self._loss.get_config_json())

    @property
    def temperature(self):
        return self.get_config()["temperature"]

    @property
    def reduction(self):
        return self.get_config()["reduction"]

    @property
    def name(self):
        return self.get_config()["name"]

    def __repr__(self):
        c = self.get_config()
        return "{}(temperature={!r}, reduction={!r}, name={!r})".format(
            self._repr_name, c["temperature"], c["reduction"], c["name"])


class SimCLRLoss(_ConfigMixin):
    """TensorFlow Similarity's SimCLRLoss (NT-Xent, both directions summed) on numpy arrays.

    SimCLRLoss(temperature=0.05, reduction="auto", name=None); reduction is one of "auto" (=
    "sum_over_batch_size"), "none", "sum", "sum_over_batch_size", as in Keras.

    loss(za, zb, sample_weight=None, comm=None, global_batch_size=None) returns the loss: a 0-d array,
    or [n] for reduction "none", of the input dtype. za, zb: [n, d] float32 or float64 (the same),
    read in place when each row is contiguous, otherwise copied once. sample_weight: Keras shapes
    (a scalar, [n], [n, 1], [1], [1, 1]). comm: an mpi4py communicator or a simclr_loss.comm communicator;
    the call is then collective and contrasts the rows with the global batch of all ranks, and
    "auto" / "sum_over_batch_size" need global_batch_size (an integer, or "infer": the total rows).
    temperature (a keyword of every call): None, the constructor's, or this call's own (a number; a
    learnable temperature's current value), which leaves get_config() alone.
    negatives (a keyword of every call): None, or extra negatives [K, d] (a memory bank; K may be 0)
    of za's dtype, L2-normalised by the library, that join every anchor's candidates as negatives
    only: never anchors or positives, and they get no gradient. negatives_scope: "local" (with comm,
    each rank's anchors see its own negatives, as lightly's memory bank under DDP) or "global"
    (every rank's, gathered, as MoCo's shared queue); every rank passes the same.
    """

    def __init__(self, temperature=0.05, reduction="auto", name=None):
        self._loss = _args.make_loss(temperature, reduction, name)
        self._comms = _Resolver()

    @classmethod
    def from_config(cls, config):
        """From get_config()'s dict, or the Keras wrapper {"class_name": ..., "config": {...}}."""
        out = cls.__new__(cls)
        out._loss = _args.from_config(config)
        out._comms = _Resolver()
        return out

    def __reduce__(self):
        return (type(self).from_config, (self.get_config(),))

    def forward(self, za, zb, sample_weight=None, comm=None, global_batch_size=None, *,
                temperature=None, temperature_gradient=False, negatives=None,
                negatives_scope="local"):
        """The extension's Forward (values, per_example, objective, ...; .backward(upstream), and
        .backward_with_temperature(upstream) when temperature_gradient)."""
        comm = self._comms(comm)
        try:
            scope = _args.negatives_scope_code(negatives_scope)
        except ValueError as exc:
            # Every rank of comm raises it (naming this rank), as any input error of the call.
            self._loss.forward(None, None, comm=comm, input_error=(ValueError, str(exc)))
            raise
        return self._loss.forward(_embeddings(za), _embeddings(zb), _args.sample_weight(sample_weight),
                                  comm, _args.global_batch_size(global_batch_size),
                                  temperature=None if temperature is None
                                  else _args.temperature_value(temperature),
                                  temperature_gradient=bool(temperature_gradient),
                                  negatives=None if negatives is None else _embeddings(negatives),
                                  negatives_scope=scope)

    @staticmethod
    def _value(forward):
        return forward.values if forward.reduction == "none" else forward.values.reshape(())

    def __call__(self, za, zb, sample_weight=None, comm=None, global_batch_size=None, *,
                 temperature=None, negatives=None, negatives_scope="local"):
        return self._value(self.forward(za, zb, sample_weight, comm, global_batch_size,
                                        temperature=temperature, negatives=negatives,
                                        negatives_scope=negatives_scope))

    def value_and_gradient(self, za, zb, sample_weight=None, comm=None, global_batch_size=None, *,
                           temperature=None, temperature_gradient=False, negatives=None,
                           negatives_scope="local"):
        """(loss, dJ/dza, dJ/dzb), J the sum of the returned loss (for "none", of its n values);
        with temperature_gradient, (loss, dJ/dza, dJ/dzb, dJ/dT), dJ/dT a float. Extra negatives
        (negatives=) get no gradient; dJ/dT counts their terms.

        With comm, J is the sum over ranks of each rank's loss, and each rank gets the gradient for
        its own rows (TensorFlow's convention: replica gradients are summed, not averaged); dJ/dT is
        then this rank's share: the shares of all ranks add up to dJ/dT.
        """
        forward = self.forward(za, zb, sample_weight, comm, global_batch_size,
                               temperature=temperature, temperature_gradient=temperature_gradient,
                               negatives=negatives, negatives_scope=negatives_scope)
        if temperature_gradient:
            grad_a, grad_b, grad_t = forward.backward_with_temperature(1.0)
            return self._value(forward), grad_a, grad_b, grad_t
        grad_a, grad_b = forward.backward(1.0)
        return self._value(forward), grad_a, grad_b
