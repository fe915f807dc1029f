"""Shared by the Python tests: the TensorFlow Similarity goldens (tests/data, see its README.md)."""

import json
import pathlib

import numpy as np
import pytest

DATA = pathlib.Path(__file__).resolve().parents[1] / "data"


def _load(name):
    with open(DATA / name) as f:
        return json.load(f)


_SINGLE = None


def _single():
    global _SINGLE
    if _SINGLE is None:
        _SINGLE = _load("golden_single.json")
    return _SINGLE


@pytest.fixture(scope="session")
def golden_single():
    """golden_single.json: {"generator": ..., "cases": [...]}."""
    return _single()


@pytest.fixture(scope="session")
def golden_distributed():
    """golden_distributed.json (tf.distribute.MirroredStrategy over 2 and 4 replicas)."""
    return _load("golden_distributed.json")


def pytest_generate_tests(metafunc):
    # A test taking `golden_case` runs once per case of golden_single.json, named by its id.
    if "golden_case" in metafunc.fixturenames:
        cases = _single()["cases"]
        metafunc.parametrize("golden_case", cases, ids=[c["id"] for c in cases])


def _max_rel(got, want, floor):
    got = np.asarray(got, dtype=np.float64).ravel()
    want = np.asarray(want, dtype=np.float64).ravel()
    assert got.shape == want.shape
    if want.size == 0:
        return 0.0
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), floor))


def _check_golden(case, loss, grad_za, grad_zb):
    """Asserts a result against a golden case, with the C++ golden test's tolerances: float64 1e-12,
    float32 5e-6, relative to the output's scale (loss: at least 1; gradients: at least one term
    1 / (T max|row|) of dJ/dz, where a cancelling gradient holds rounding noise of that size)."""
    tol = 1e-12 if case["dtype"] == "float64" else 5e-6
    want = np.atleast_1d(np.asarray(case["loss"], dtype=np.float64))
    got = np.atleast_1d(np.asarray(loss, dtype=np.float64))
    assert got.shape == want.shape, (got.shape, want.shape)
    assert _max_rel(got, want, 1.0) <= tol, "loss"
    assert _max_rel([got.sum()], [case["objective"]], 1.0) <= tol, "objective"
    rows = [np.asarray(case["za"], dtype=np.float64), np.asarray(case["zb"], dtype=np.float64)]
    max_norm = max(float(np.max(np.linalg.norm(z, axis=1))) for z in rows)
    want_a = np.asarray(case["grad_za"], dtype=np.float64)
    want_b = np.asarray(case["grad_zb"], dtype=np.float64)
    scale = max(1.0 / (case["temperature"] * max(max_norm, 1e-6)),
                float(np.max(np.abs(want_a))), float(np.max(np.abs(want_b))))
    assert _max_rel(grad_za, want_a, scale) <= tol, "grad_za"
    assert _max_rel(grad_zb, want_b, scale) <= tol, "grad_zb"


@pytest.fixture(scope="session")
def check_golden():
    """check_golden(case, loss, grad_za, grad_zb): asserts a result matches a golden case."""
    return _check_golden


def golden_inputs(case):
    """(za, zb, sample_weight) of a golden case as numpy arrays of the case's dtype."""
    dtype = np.float32 if case["dtype"] == "float32" else np.float64
    za = np.asarray(case["za"], dtype=dtype)
    zb = np.asarray(case["zb"], dtype=dtype)
    w = case["sample_weight"]
    weight = None if w is None else np.asarray(w["values"], dtype=np.float64).reshape(w["shape"])
    return za, zb, weight


@pytest.fixture(scope="session")
def golden_arrays():
    """golden_arrays(case) -> (za, zb, sample_weight) as numpy arrays of the case's dtype."""
    return golden_inputs


@pytest.fixture
def spawn_ranks(tmp_path):
    """Runs worker(rank, size, store_path, queue) in `size` spawned processes (a torch.distributed
    group over a file store) and returns {rank: what the rank put on the queue}."""
    def run(worker, size, timeout=240):
        import torch.multiprocessing as mp
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [ctx.Process(target=worker, args=(r, size, str(tmp_path / "store"), queue))
                 for r in range(size)]
        for p in procs:
            p.start()
        got = dict(queue.get(timeout=timeout) for _ in procs)
        for p in procs:
            p.join(timeout=60)
        assert sorted(got) == list(range(size))
        return got
    return run
