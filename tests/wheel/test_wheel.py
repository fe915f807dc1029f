"""The installed wheel (tests/scripts/wheel_test.sh): the numpy, torch and jax front ends on small batches,
against an independent numpy reference of TensorFlow Similarity's formula (docs/semantics.md), and
the README's numpy and torch examples. Run from outside the source tree, so that what is imported is
the installed package."""

import os
import pathlib
import re
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

import simclr_loss

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _normalize(x):
    return x / np.sqrt(np.maximum((x * x).sum(axis=1, keepdims=True), 1e-12))


def _per_example(za, zb, temperature):
    """CE(a -> [b, a without itself]) + CE(b -> [a, b without itself]), in float64."""
    a, b = _normalize(za.astype(np.float64)), _normalize(zb.astype(np.float64))

    def cross_entropy(anchor, other):
        positive = anchor @ other.T / temperature
        same = anchor @ anchor.T / temperature
        np.fill_diagonal(same, -np.inf)
        logits = np.concatenate([positive, same], axis=1)
        top = logits.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        return lse - np.diag(positive)

    return cross_entropy(a, b) + cross_entropy(b, a)


def _mean_loss(za, zb, temperature):
    return _per_example(za, zb, temperature).mean()


def _numeric_gradient(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        g[i] = (f(up) - f(down)) / (2 * h)
    return g


def _views(n=6, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.standard_normal((n, d))


def test_imported_from_the_installed_wheel():
    site = pathlib.Path(sysconfig.get_paths()["platlib"]).resolve()
    assert pathlib.Path(simclr_loss.__file__).resolve().is_relative_to(site), simclr_loss.__file__
    from simclr_loss import _core
    assert not _core.has_mpi()  # the wheel is built without MPI: no libmpi needed at run time


@pytest.mark.parametrize("temperature", [0.05, 0.5])
@pytest.mark.parametrize("reduction", ["auto", "sum", "none"])
def test_numpy_front_end_against_the_reference(temperature, reduction):
    za, zb = _views()
    value, grad_a, grad_b = simclr_loss.SimCLRLoss(
        temperature=temperature, reduction=reduction).value_and_gradient(za, zb)
    per = _per_example(za, zb, temperature)
    expected = {"auto": per.mean(), "sum": per.sum(), "none": per}[reduction]
    np.testing.assert_allclose(value, expected, rtol=1e-10, atol=1e-12)
    total = {"auto": np.mean, "sum": np.sum, "none": np.sum}[reduction]
    np.testing.assert_allclose(
        grad_a, _numeric_gradient(lambda x: total(_per_example(x, zb, temperature)), za), atol=1e-5)
    np.testing.assert_allclose(
        grad_b, _numeric_gradient(lambda x: total(_per_example(za, x, temperature)), zb), atol=1e-5)


def test_numpy_front_end_float32():
    za, zb = _views(n=16, d=8, seed=1)
    value = simclr_loss.SimCLRLoss(temperature=0.1)(za.astype(np.float32), zb.astype(np.float32))
    assert value.dtype == np.float32
    np.testing.assert_allclose(value, _mean_loss(za, zb, 0.1), rtol=1e-5)


def test_torch_front_end_against_the_reference():
    torch = pytest.importorskip("torch")
    import simclr_loss.torch as st

    za, zb = _views(n=8, d=5, seed=2)
    ta = torch.tensor(za, requires_grad=True)
    tb = torch.tensor(zb, requires_grad=True)
    loss = st.SimCLRLoss(temperature=0.2)(ta, tb)
    loss.backward()
    np.testing.assert_allclose(loss.item(), _mean_loss(za, zb, 0.2), rtol=1e-10)
    np.testing.assert_allclose(
        ta.grad.numpy(), _numeric_gradient(lambda x: _mean_loss(x, zb, 0.2), za), atol=1e-5)
    np.testing.assert_allclose(
        tb.grad.numpy(), _numeric_gradient(lambda x: _mean_loss(za, x, 0.2), zb), atol=1e-5)


def test_jax_front_end_against_the_reference():
    # The wheel's simclr_loss._jax_ffi is compiled against jaxlib 0.7.2's FFI headers (0.7.1's);
    # the jax here is whatever pip picks, the newest for this Python.
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import simclr_loss.jax as sj

    za, zb = _views(n=7, d=3, seed=3)
    value, (grad_a, grad_b) = jax.value_and_grad(
        lambda a, b: sj.simclr_loss(a, b, temperature=0.3), argnums=(0, 1))(za, zb)
    np.testing.assert_allclose(float(value), _mean_loss(za, zb, 0.3), rtol=1e-10)
    np.testing.assert_allclose(
        np.asarray(grad_a), _numeric_gradient(lambda x: _mean_loss(x, zb, 0.3), za), atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(grad_b), _numeric_gradient(lambda x: _mean_loss(za, x, 0.3), zb), atol=1e-5)


def test_the_reference_is_not_trivially_satisfied():
    # Guards the reference itself: swapping the positives changes the value.
    za, zb = _views()
    assert abs(_mean_loss(za, zb, 0.1) - _mean_loss(za, zb[::-1], 0.1)) > 1e-3


def _readme_blocks():
    text = (ROOT / "README.md").read_text()
    for i, m in enumerate(re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M), 1):
        code = m.group(1)
        imports = set(re.findall(r"^(?:import|from) ([\w.]+)", code, re.M))
        # The examples of the front ends this wheel test installs: numpy and torch.
        if imports <= {"numpy", "torch", "simclr_loss", "simclr_loss.torch"}:
            yield pytest.param(code, id=f"README.md#{i}")


@pytest.mark.parametrize("code", list(_readme_blocks()))
def test_readme_example_runs(code, tmp_path):
    if re.search(r"^import torch", code, re.M):
        pytest.importorskip("torch")
    script = tmp_path / "example.py"
    script.write_text(code)
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout + r.stderr
