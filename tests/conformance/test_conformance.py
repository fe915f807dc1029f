"""The conformance table through every Python-reachable front end that is installed here.

Front ends: the `simclr-loss` command (CLI), numpy (`simclr_loss.SimCLRLoss`), PyTorch (`simclr_loss.torch`),
JAX (`simclr_loss.jax`), the TensorFlow op (`simclr_loss.tensorflow`) and Keras (`simclr_loss.keras`, Keras 2 or
Keras 3 on the JAX backend). The C API runs the same table in tests/conformance/c_api_conformance.cpp.
Every front end must give the expected values (tests/data/golden_single.json from the real
TensorFlow Similarity, and cases.json's inline values) within the dtype's tolerance, and raise the
expected exception type with a message containing the expected text. A front end that is not
installed in this environment is skipped, by name; where a case cannot apply to a front end
(cases.json "not_applicable", with the reason), it is skipped with that reason.
"""

import json
import math
import os
import pathlib
import subprocess
import tempfile

import numpy as np
import pytest

# Keras 3 runs here on the backend KERAS_BACKEND names (tensorflow, jax or torch; JAX unless set);
# set before anything imports keras.
os.environ.setdefault("KERAS_BACKEND", "jax")

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TABLE = json.loads((HERE / "cases.json").read_text())
GOLDEN = json.loads((ROOT / "tests" / "data" / "golden_single.json").read_text())


def _number(x):
    if isinstance(x, str):
        return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[x]
    return float(x)


def _array(v, dtype):
    if isinstance(v, dict) and "values" not in v:
        return np.zeros(v["shape"], dtype=dtype)
    if isinstance(v, dict):
        return np.array([_number(x) for x in v["values"]], dtype=np.float64).reshape(v["shape"])
    return np.array([[_number(x) for x in row] for row in v], dtype=dtype).reshape(
        len(v), len(v[0]) if v else 0)


class Case:
    """One row of the table, resolved: inputs as numpy arrays, and what is expected."""

    def __init__(self, raw, kind):
        self.raw = raw
        self.id = raw["id"]
        self.kind = kind
        self.dtype = np.float32 if raw["dtype"] == "float32" else np.float64
        self.temperature = _number(raw["temperature"])
        self.reduction = raw["reduction"]
        self.za = _array(raw["za"], self.dtype)
        self.zb = _array(raw["zb"], self.dtype)
        w = raw.get("sample_weight")
        self.weight = None if w is None else _array(w, np.float64)
        self.tolerance = raw.get("tolerance", TABLE["tolerance"][raw["dtype"]])
        # The call's own temperature (None: the loss's), and whether dJ/dT is expected.
        ct = raw.get("call_temperature")
        self.call_temperature = None if ct is None else _number(ct)
        self.grad_temperature = raw.get("grad_temperature")
        # Extra negatives [K, d] (None: none), in the case's dtype unless negatives_dtype says
        # otherwise, and their scope.
        neg = raw.get("negatives")
        neg_dtype = {"float32": np.float32, "float64": np.float64}[
            raw.get("negatives_dtype", raw["dtype"])]
        self.negatives = None if neg is None else _array(neg, neg_dtype)
        if self.negatives is not None and self.negatives.dtype != neg_dtype:
            self.negatives = self.negatives.astype(neg_dtype)
        self.negatives_scope = raw.get("negatives_scope", "local")
        self.with_negatives = "negatives" in raw or "negatives_scope" in raw

    def negatives_kwargs(self):
        """The call's negatives= and negatives_scope= keywords ({} for a case without them)."""
        if not self.with_negatives:
            return {}
        return {"negatives": self.negatives, "negatives_scope": self.negatives_scope}


def _value_cases():
    out = [Case(c, "golden") for c in GOLDEN["cases"]]
    out += [Case(c, "value") for c in TABLE["values"]]
    return out


def _error_cases():
    out = []
    for c in TABLE["errors"]:
        full = dict(TABLE["error_defaults"])
        full.update(c)
        out.append(Case(full, "error"))
    return out


VALUE_CASES = _value_cases()
ERROR_CASES = _error_cases()


# ---- the front ends: run(case) -> (loss, grad_za, grad_zb) of J = sum(loss), or raise ----

def _cli_path():
    path = os.environ.get("SIMCLR_CLI")
    if path:
        if not os.access(path, os.X_OK):
            raise RuntimeError("SIMCLR_CLI=" + path + " is not an executable")
        return path
    default = ROOT / "build" / "bin" / "simclr-loss"
    return str(default) if os.access(default, os.X_OK) else None


class CliError(Exception):
    """The command's failure: its exit status and its `error: ...` line."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def run_cli(case):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        np.save(tmp / "a.npy", case.za)
        np.save(tmp / "b.npy", case.zb)
        cmd = [_cli_path(), "compute", "--za", str(tmp / "a.npy"), "--zb", str(tmp / "b.npy"),
               "--temperature", repr(case.temperature), "--reduction", case.reduction,
               "--loss-out", str(tmp / "l.npy"), "--grad-a-out", str(tmp / "ga.npy"),
               "--grad-b-out", str(tmp / "gb.npy")]
        if case.weight is not None:
            np.save(tmp / "w.npy", case.weight)
            cmd += ["--sample-weight", str(tmp / "w.npy")]
        if case.negatives is not None:  # a local call: the scope changes nothing
            np.save(tmp / "k.npy", case.negatives)
            cmd += ["--negatives", str(tmp / "k.npy")]
        # A local call: not one of an MPI job this process may belong to (an mpi4py import in the
        # same pytest process leaves the launcher's variables in the environment).
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, env=env)
        if r.returncode != 0:
            raise CliError(r.returncode, r.stderr.strip().removeprefix("error: "))
        return np.load(tmp / "l.npy"), np.load(tmp / "ga.npy"), np.load(tmp / "gb.npy")


def run_numpy(case):
    import simclr_loss
    loss = simclr_loss.SimCLRLoss(temperature=case.temperature, reduction=case.reduction)
    extra = case.negatives_kwargs()
    if case.call_temperature is None:
        value, ga, gb = loss.value_and_gradient(case.za, case.zb, sample_weight=case.weight,
                                                **extra)
        return np.asarray(value), ga, gb
    value, ga, gb, gt = loss.value_and_gradient(case.za, case.zb, sample_weight=case.weight,
                                                temperature=case.call_temperature,
                                                temperature_gradient=True, **extra)
    return np.asarray(value), ga, gb, gt


def run_torch(case):
    import torch
    import simclr_loss.torch as st
    za = torch.from_numpy(case.za).requires_grad_(True)
    zb = torch.from_numpy(case.zb).requires_grad_(True)
    w = None if case.weight is None else torch.from_numpy(case.weight)
    extra = case.negatives_kwargs()
    if extra.get("negatives") is not None:
        extra["negatives"] = torch.from_numpy(extra["negatives"])
    if case.call_temperature is None:
        value = st.simclr_loss(za, zb, w, temperature=case.temperature, reduction=case.reduction,
                               **extra)
        value.sum().backward()
        return value.detach().numpy(), za.grad.numpy(), zb.grad.numpy()
    # The module's per-call temperature: a learnable one, a tensor that requires grad.
    t = torch.tensor(case.call_temperature, dtype=torch.float64, requires_grad=True)
    value = st.SimCLRLoss(temperature=case.temperature, reduction=case.reduction)(
        za, zb, w, temperature=t, **extra)
    value.sum().backward()
    return value.detach().numpy(), za.grad.numpy(), zb.grad.numpy(), t.grad.item()


def run_jax(case):
    import jax
    import jax.numpy as jnp
    import simclr_loss.jax as sj
    jax.config.update("jax_enable_x64", True)

    if case.call_temperature is not None:
        # The loss object's per-call temperature, traced (a learnable one): jax.grad gives dJ/dT.
        extra = case.negatives_kwargs()
        loss = sj.SimCLRLoss(temperature=case.temperature, reduction=case.reduction,
                             **({"negatives_scope": extra.pop("negatives_scope")} if extra else {}))

        def g(a, b, t):
            v = loss(a, b, sample_weight=case.weight, temperature=t, **extra)
            return v.sum(), v

        t = jnp.asarray(case.call_temperature, dtype=case.dtype)
        (_, value), (ga, gb, gt) = jax.value_and_grad(g, argnums=(0, 1, 2), has_aux=True)(
            case.za, case.zb, t)
        return np.asarray(value), np.asarray(ga), np.asarray(gb), float(gt)

    def f(a, b):
        v = sj.simclr_loss(a, b, temperature=case.temperature, reduction=case.reduction,
                           sample_weight=case.weight, **case.negatives_kwargs())
        return v.sum(), v

    (_, value), (ga, gb) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(case.za, case.zb)
    return np.asarray(value), np.asarray(ga), np.asarray(gb)


def run_tensorflow(case):
    import tensorflow as tf
    import simclr_loss.tensorflow as stf
    za, zb = tf.constant(case.za), tf.constant(case.zb)
    with tf.GradientTape() as tape:
        tape.watch([za, zb])
        value = stf.simclr_loss(za, zb, temperature=case.temperature, **case.negatives_kwargs())
        total = tf.reduce_sum(value)
    ga, gb = tape.gradient(total, [za, zb])
    return value.numpy(), ga.numpy(), gb.numpy()


def run_keras(case):
    import simclr_loss.keras as sk
    if sk.KERAS_VERSION == 2:
        loss = sk.SimCLRLoss(temperature=case.temperature, reduction=case.reduction)
        return _keras_tensorflow(loss, case)
    # Keras 3 computes a loss in its dtype (floatx unless given): the case's.
    loss = sk.SimCLRLoss(temperature=case.temperature, reduction=case.reduction,
                         dtype=np.dtype(case.dtype).name)
    return _KERAS3_GRADIENT[_keras3_backend()](loss, case)


def _keras3_jax(loss, case):
    import jax
    jax.config.update("jax_enable_x64", True)

    def f(a, b):
        v = loss(a, b, sample_weight=case.weight, **case.negatives_kwargs())
        return v.sum(), v

    (_, value), (ga, gb) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(case.za, case.zb)
    return np.asarray(value), np.asarray(ga), np.asarray(gb)


def _keras_tensorflow(loss, case):
    import tensorflow as tf
    za, zb = tf.constant(case.za), tf.constant(case.zb)
    with tf.GradientTape() as tape:
        tape.watch([za, zb])
        value = loss(za, zb, sample_weight=case.weight, **case.negatives_kwargs())
        total = tf.reduce_sum(value)
    ga, gb = tape.gradient(total, [za, zb])
    return value.numpy(), ga.numpy(), gb.numpy()


def _keras3_torch(loss, case):
    import torch
    za = torch.tensor(case.za, requires_grad=True)
    zb = torch.tensor(case.zb, requires_grad=True)
    weight = None if case.weight is None else torch.as_tensor(np.asarray(case.weight))
    value = loss(za, zb, sample_weight=weight, **case.negatives_kwargs())
    value.sum().backward()
    return value.detach().numpy(), za.grad.numpy(), zb.grad.numpy()


_KERAS3_GRADIENT = {"jax": _keras3_jax, "tensorflow": _keras_tensorflow, "torch": _keras3_torch}


def _keras3_backend():
    import keras
    return keras.backend.backend()


def _importable(*modules):
    try:
        for m in modules:
            __import__(m)
        return True
    except Exception:  # noqa: BLE001 - any import failure means "not installed here"
        return False


def _tf_op_built():
    # The op library is loaded by TensorFlow (tf.load_op_library), never imported as a module: a
    # plain import would register its ops behind TensorFlow's back.
    if not _importable("tensorflow", "simclr_loss"):
        return False
    import simclr_loss
    return (pathlib.Path(simclr_loss.__file__).parent / "_tf_ops.so").exists()


def _keras_backend_ok():
    if not _importable("simclr_loss.keras"):
        return False
    import simclr_loss.keras as sk
    if sk.KERAS_VERSION == 2:
        return _tf_op_built()
    needs = {"jax": lambda: _importable("simclr_loss._jax_ffi"), "tensorflow": _tf_op_built,
             "torch": lambda: _importable("simclr_loss.torch")}
    return needs.get(_keras3_backend(), lambda: False)()


FRONT_ENDS = {
    "cli": (run_cli, lambda: _cli_path() is not None),
    "numpy": (run_numpy, lambda: _importable("simclr_loss._core")),
    "torch": (run_torch, lambda: _importable("torch", "simclr_loss.torch")),
    "jax": (run_jax, lambda: _importable("jax", "simclr_loss._jax_ffi")),
    "tensorflow": (run_tensorflow, _tf_op_built),
    "keras": (run_keras, _keras_backend_ok),
}


def _table_name(name):
    if name != "keras":
        return name
    import simclr_loss.keras as sk
    return "keras%d" % sk.KERAS_VERSION


def _front_end(name, case):
    run, available = FRONT_ENDS[name]
    if not available():
        pytest.skip(name + " is not installed in this environment")
    why = TABLE.get("not_applicable", {}).get(_table_name(name), {})
    for key in (case.id, "reduction:" + case.reduction,
                "weighted" if case.weight is not None else "unweighted",
                "call_temperature" if case.call_temperature is not None else "loss_temperature",
                "negatives" if case.with_negatives else "no_negatives"):
        if key in why:
            pytest.skip(name + ": " + why[key])
    return run


def _rel(got, want, scale):
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    want = np.asarray(want, dtype=np.float64).reshape(-1)
    assert got.shape == want.shape, (got.shape, want.shape)
    if got.size == 0:
        return 0.0
    return float(np.max(np.abs(got - want))) / scale


@pytest.mark.parametrize("name", list(FRONT_ENDS))
@pytest.mark.parametrize("case", VALUE_CASES, ids=lambda c: c.id)
def test_values(name, case):
    run = _front_end(name, case)
    value, ga, gb, *gt = run(case)
    want = np.asarray(case.raw["loss"], dtype=np.float64)
    dtype, tolerance = np.dtype(case.dtype), case.tolerance
    if name == "keras" and _table_name(name) == "keras3":
        # Keras's own dtype for a loss of this dtype and reduction on this backend (on torch,
        # Keras 3.15's "sum_over_batch_size" divides in float32, its own losses too): compared at
        # that precision.
        dtype = _keras3_own_dtype(case.reduction, dtype)
        if dtype != np.dtype(case.dtype):
            tolerance = max(tolerance, TABLE["tolerance"][dtype.name])
    assert np.asarray(value).dtype == dtype, "the result keeps the input dtype"
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    assert _rel(value, want, scale) <= tolerance, (value, want)
    if "grad_za" in case.raw:
        for got, key in ((ga, "grad_za"), (gb, "grad_zb")):
            w = np.asarray(case.raw[key], dtype=np.float64)
            gscale = max(1.0 / case.temperature, float(np.max(np.abs(w), initial=0.0)))
            assert _rel(got, w, gscale) <= tolerance, key
    if case.grad_temperature is not None:
        assert gt, name + " gave no dJ/dT"
        want_t = float(case.grad_temperature)
        assert abs(gt[0] - want_t) / max(1.0, abs(want_t)) <= tolerance, (gt[0], want_t)


def _keras3_own_dtype(reduction, dtype):
    import keras
    own = keras.losses.MeanSquaredError(reduction=reduction, dtype=dtype.name)
    x = keras.ops.convert_to_tensor(np.ones((2, 3)), dtype=dtype.name)
    return np.dtype(keras.backend.standardize_dtype(own(x, x).dtype))


# The exception types a front end raises for the table's Python types: a bad value found inside a
# compiled computation is the framework's runtime error with its invalid-argument code (TensorFlow:
# tf.errors.InvalidArgumentError; XLA under JAX: JaxRuntimeError "INVALID_ARGUMENT: ..."), their
# ValueError; the command exits with status 2 (docs/cli.md).
def _raised_as(name, exc):
    if isinstance(exc, CliError):
        return {2: ("ValueError", "TypeError")}.get(exc.status, ("exit %d" % exc.status,))
    kinds = [type(exc).__name__]
    if name in ("tensorflow", "keras") and type(exc).__name__ == "InvalidArgumentError":
        kinds.append("ValueError")
    if type(exc).__name__ in ("JaxRuntimeError", "XlaRuntimeError") \
            and str(exc).startswith("INVALID_ARGUMENT"):
        kinds.append("ValueError")
    return tuple(kinds)


@pytest.mark.parametrize("name", list(FRONT_ENDS))
@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda c: c.id)
def test_errors(name, case):
    run = _front_end(name, case)
    with pytest.raises(Exception) as info:  # noqa: PT011 - the type is checked below, by name
        run(case)
    exc = info.value
    assert case.raw["error"] in _raised_as(name, exc), repr(exc)
    message = exc.message if hasattr(exc, "message") and isinstance(exc.message, str) else str(exc)
    assert case.raw["message"] in message, message
