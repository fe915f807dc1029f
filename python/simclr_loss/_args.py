"""The front ends' arguments, parsed once: every front end (simclr_loss.SimCLRLoss, simclr_loss.torch, the CUDA
route, simclr_loss.jax, simclr_loss.keras, simclr_loss.tensorflow) turns its arguments into the C API's values here,
with the same rules and the same messages. Each message names the argument and what it accepts.

What the library checks stays in the library: the temperature's rule (> 0 and finite) and the
reduction keys are its messages (reached through simclr_loss._core), and the codes below are the C API's,
exported by the extension (never copied). What it cannot see is checked here: a value that is not a
number, an integer beyond int64, a string where a number belongs.
"""

import functools
import json
import math
import numbers
import operator
import reprlib

import numpy as np

from . import _core

# The C API's codes (include/simclr/c_api.h), from the extension.
REDUCTIONS = dict(_core.REDUCTIONS)  # Keras reduction key -> simclr_reduction
GRADIENT_REDUCTIONS = {"sum": _core.GRADIENT_SUM, "mean": _core.GRADIENT_MEAN}
NEGATIVES_SCOPES = {"local": _core.NEGATIVES_LOCAL, "global": _core.NEGATIVES_GLOBAL}
GLOBAL_BATCH_NONE = _core.GLOBAL_BATCH_NONE
GLOBAL_BATCH_INFER = _core.GLOBAL_BATCH_INFER
RECORD_BYTES = _core.RECORD_BYTES

_INT64_MAX = 2**63 - 1
_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60


def describe(value):
    """"str 'abc'", "NoneType None", "list [0.1]": the type and a short repr, for messages."""
    return type(value).__name__ + " " + _repr.repr(value)


# ---- the loss's configuration ----

@functools.lru_cache(maxsize=256)
def _library_temperature(t):
    # The library's own rule, with its ValueError ("temperature must be a finite number > 0, ...").
    _core.Loss(t, "none", None)
    return t


def temperature(value):
    """The temperature as a float: a real number (int, float, a numpy scalar, a 0-d array), which the
    library then checks (> 0 and finite: its ValueError). Anything else is a TypeError."""
    if isinstance(value, (bool, str, bytes)) or not (
            isinstance(value, numbers.Real) or hasattr(type(value), "__float__")):
        raise TypeError("temperature must be a number > 0, got " + describe(value))
    try:
        t = float(value)
    except (TypeError, ValueError):  # an array of several values, a traced value under jit
        raise TypeError("temperature must be a number > 0, got " + describe(value)) from None
    return _library_temperature(t)


def temperature_value(value):
    """A call's own temperature as a float, checked for its type only (TypeError as temperature()):
    its value is the library's to check, in the call, on every rank alike."""
    if isinstance(value, (bool, str, bytes)) or not (
            isinstance(value, numbers.Real) or hasattr(type(value), "__float__")):
        raise TypeError("temperature must be a number > 0, got " + describe(value))
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError("temperature must be a number > 0, got " + describe(value)) from None


def reduction(value):
    """The Keras reduction key (a str), as the library parses it: "auto", "none", "sum" or
    "sum_over_batch_size"; anything else is the library's ValueError "Invalid Reduction Key: ...",
    as Keras's (which also takes no None)."""
    key = value if isinstance(value, str) else str(value)
    _core.reduction_code(key)
    return key


def reduction_code(value):
    """The C API's simclr_reduction of a reduction key (see reduction())."""
    return _core.reduction_code(reduction(value))


def name(value):
    """The loss's name: None or a str."""
    if value is not None and not isinstance(value, str):
        raise TypeError("name must be a string or None, got " + describe(value))
    return value


def make_loss(t, r, n=None):
    """A _core.Loss of temperature t, reduction r and name n, checked as above."""
    return _core.Loss(temperature(t), reduction(r), name(n))


@functools.lru_cache(maxsize=256)
def _canonical_config(t, key):
    cfg = json.loads(_core.Loss(t, key, None).get_config_json())
    return cfg["temperature"], cfg["reduction"]


def loss_config(t, r):
    """(temperature, reduction) as the library's config gives them back, after its checks (for the
    front ends whose loss is static configuration: simclr_loss.jax)."""
    return _canonical_config(temperature(t), reduction(r))


def _config_default(o):
    # numpy scalars in a config dict (np.float64(0.1)) are written as plain numbers.
    if hasattr(o, "item"):
        return o.item()
    raise TypeError("config value of type " + type(o).__name__ + " is not JSON serializable")


def _non_finite(config):
    """The first (key, value) of a config (or of its Keras wrapper's "config") whose value is a float
    JSON cannot hold (NaN, Inf), or None."""
    if not isinstance(config, dict):
        return None
    inner = config.get("config") if isinstance(config.get("config"), dict) else {}
    for key, value in list(config.items()) + list(inner.items()):
        if isinstance(value, numbers.Real) and not isinstance(value, bool) \
                and not math.isfinite(float(value)):
            return key, value
    return None


def config_json(config):
    """get_config()'s dict (or the Keras wrapper {"class_name": ..., "config": {...}}) as the JSON
    text the library's from_config parses. A temperature of NaN or Inf, which JSON cannot carry,
    gets the library's temperature ValueError instead of a JSON syntax error."""
    bad = _non_finite(config)
    if bad is not None:
        key, value = bad
        if key == "temperature":
            temperature(value)  # raises the library's ValueError
        raise ValueError("config value {!r} is {}; a SimCLRLoss config holds finite numbers".format(
            key, value))
    return json.dumps(config, default=_config_default)


def from_config(config):
    """A _core.Loss from get_config()'s dict or the Keras wrapper (the library's rules)."""
    return _core.Loss.from_config(config_json(config))


# ---- one call ----

def global_batch_size(value):
    """The C API's global batch size: None -> GLOBAL_BATCH_NONE, "infer" -> GLOBAL_BATCH_INFER, an
    integer (int, numpy integer, a 0-d integer tensor) in [0, 2**63 - 1] as it is."""
    accepts = 'None, "infer" or an integer >= 0'
    if value is None:
        return GLOBAL_BATCH_NONE
    if isinstance(value, str):
        if value == "infer":
            return GLOBAL_BATCH_INFER
        raise ValueError("global_batch_size must be " + accepts + ", got " + repr(value))
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError("global_batch_size must be " + accepts + ", got " + describe(value))
    try:
        g = operator.index(value)
    except TypeError:  # a tensor of several values, a traced value under jit
        raise TypeError("global_batch_size must be " + accepts + " (a static value), got "
                        + describe(value)) from None
    if g < 0 or g > _INT64_MAX:
        raise ValueError('global_batch_size must be None, "infer" or an integer in [0, 2**63 - 1] '
                         "(int64), got " + str(g))
    return g


def gradient_reduction(value):
    """The C API's gradient convention of a distributed call: "sum" -> GRADIENT_SUM, "mean" ->
    GRADIENT_MEAN (the library scales the backward by the number of ranks)."""
    if isinstance(value, str) and value in GRADIENT_REDUCTIONS:
        return GRADIENT_REDUCTIONS[value]
    message = 'gradient_reduction must be "sum" or "mean", got '
    if not isinstance(value, str):
        raise TypeError(message + describe(value))
    raise ValueError(message + repr(value))


def gradient_reduction_name(code):
    return "mean" if code == GRADIENT_REDUCTIONS["mean"] else "sum"


def sample_weight(value):
    """Keras's sample_weight as the extension takes it: None, or a C-contiguous float64 numpy array
    (any shape: the library applies Keras's rules to it, [], [n], [n, 1], [1], [1, 1])."""
    if value is None:
        return None
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise sample_weight_error(value) from None
    return np.ascontiguousarray(array)


def sample_weight_error(value):
    """The TypeError of a sample_weight that is not numbers (for the front ends' own conversions)."""
    return TypeError("sample_weight must be None, a number or an array of numbers (Keras shapes "
                     "[], [n], [n, 1], [1], [1, 1]), got " + describe(value))


def threads(value):
    """CPU threads of a call: an integer >= 0 (0: the library's default)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError("threads must be an integer >= 0 (0: the default), got " + describe(value))
    return int(value)


# ---- extra negatives ----

def negatives_scope_code(value):
    """The C API's SIMCLR_NEGATIVES_* code of negatives_scope: "local" (each rank's anchors see its
    own extra negatives, as lightly's memory bank under DDP) or "global" (every rank's, gathered, as
    MoCo's shared queue). ValueError otherwise."""
    if not isinstance(value, str) or value not in NEGATIVES_SCOPES:
        raise ValueError('negatives_scope must be "local" or "global", got ' + describe(value))
    return NEGATIVES_SCOPES[value]
