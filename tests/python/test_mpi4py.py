"""simclr with mpi4py communicators: every rank's loss and gradients equal the single-process call on
the whole global batch, for every split of it (empty ranks included), and bad input on one rank
raises the same exception on every rank.

Collective: run it on any number of ranks, `mpirun -np N python -m pytest tests/python/test_mpi4py.py`
(tests/python/run_mpi.sh runs 1-4); plain `pytest` runs it on one rank. Every rank must run the same
tests in the same order, so nothing here is skipped on some ranks only.
"""

import numpy as np
import pytest

import simclr_loss
from simclr_loss import _core

pytest.importorskip("mpi4py")
from mpi4py import MPI  # noqa: E402

WORLD = MPI.COMM_WORLD
RANK, SIZE = WORLD.Get_rank(), WORLD.Get_size()

PATHS = (["mpi"] if _core.has_mpi() else []) + ["mpi4py"]


@pytest.fixture(scope="module", params=PATHS)
def comm(request):
    """The library's communicator over WORLD: the MPI one, or mpi4py's collectives (collective)."""
    return simclr_loss.comm.from_mpi4py(WORLD, use_mpi=request.param == "mpi")


def _split(name):
    """Rows per rank for a named split of the global batch."""
    if name == "even":
        return [4] * SIZE
    if name == "uneven":
        return [r + 1 for r in range(SIZE)]
    if name == "first_empty":
        return [0] + [3] * (SIZE - 1) if SIZE > 1 else [0]
    if name == "last_empty":
        return [3] * (SIZE - 1) + [0] if SIZE > 1 else [0]
    if name == "all_on_last":
        return [0] * (SIZE - 1) + [7]
    raise AssertionError(name)


SPLITS = ["even", "uneven", "first_empty", "last_empty", "all_on_last"]


def _global_batch(rows, d=6, dtype=np.float64, seed=2024):
    # The same seed on every rank: any rank can rebuild the whole batch and check its own slice.
    rng = np.random.default_rng(seed)
    g = sum(rows)
    za = rng.standard_normal((g, d)) * np.exp(rng.uniform(-1, 1, (g, 1)))
    zb = rng.standard_normal((g, d)) * np.exp(rng.uniform(-1, 1, (g, 1)))
    offsets = np.concatenate([[0], np.cumsum(rows)]).astype(int)
    return za.astype(dtype), zb.astype(dtype), offsets[RANK], offsets[RANK + 1]


def _close(got, want, tol, scale=None):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    if got.size:
        s = scale if scale is not None else max(1.0, float(np.abs(want).max()))
        assert float(np.abs(got - want).max()) <= tol * s


def test_world():
    assert SIZE >= 1 and 0 <= RANK < SIZE
    assert WORLD.allreduce(1) == SIZE


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction,global_batch_size", [("none", None), ("sum", None),
                                                         ("sum_over_batch_size", "total"),
                                                         ("auto", "infer")])
def test_every_rank_equals_the_whole_batch(comm, split, dtype, reduction, global_batch_size):
    rows = _split(split)
    za, zb, lo, hi = _global_batch(rows, dtype=dtype)
    g = sum(rows)
    gbs = g if global_batch_size == "total" else global_batch_size
    tol = 1e-10 if dtype == np.float64 else 2e-5
    loss = simclr_loss.SimCLRLoss(0.2, reduction)

    # The reference: one process, the whole batch, no communicator.
    single_none, grad_a, grad_b = simclr_loss.SimCLRLoss(0.2, "none").value_and_gradient(za, zb)
    single_value = loss(za, zb, global_batch_size=gbs if gbs is not None else None)

    value, ga, gb = loss.value_and_gradient(za[lo:hi], zb[lo:hi], comm=comm, global_batch_size=gbs)
    assert value.dtype == dtype and ga.dtype == dtype and ga.shape == (hi - lo, za.shape[1])
    total = WORLD.allreduce(float(np.sum(value)))  # J = the sum over ranks
    if reduction == "none":
        _close(value, single_none[lo:hi], tol)
    else:
        _close(total, single_value, tol)
    # Each rank's gradient is its rows of dJ/dz, J = sum over ranks (= the single-process
    # objective, which for the mean reductions is the whole-batch sum divided by G).
    factor = 1.0 if reduction in ("none", "sum") else 1.0 / max(g, 1)
    scale = max(1e-30, float(np.abs(grad_a).max(initial=0)), float(np.abs(grad_b).max(initial=0)))
    _close(ga, factor * grad_a[lo:hi], tol, scale * factor)
    _close(gb, factor * grad_b[lo:hi], tol, scale * factor)


def test_forward_info_through_the_communicator(comm):
    rows = _split("uneven")
    za, zb, lo, hi = _global_batch(rows)
    f = _core.Loss(0.1, "sum").forward(za[lo:hi], zb[lo:hi], comm=comm)
    assert (f.ranks, f.rank_rows, f.row_offset, f.rows, f.global_rows) == \
        (SIZE, rows, lo, hi - lo, sum(rows))


def test_mpi4py_communicator_passed_directly():
    rows = _split("uneven")
    za, zb, lo, hi = _global_batch(rows)
    loss = simclr_loss.SimCLRLoss(0.3, "none")
    got = loss(za[lo:hi], zb[lo:hi], comm=WORLD)
    _close(got, loss(za, zb)[lo:hi], 1e-10)
    # The duplicate is made once per loss and communicator.
    assert loss._comms(WORLD) is loss._comms(WORLD)


def test_timeout_option_of_the_mpi_path():
    if not _core.has_mpi():
        pytest.skip("the extension was built without MPI")
    comm = simclr_loss.comm.from_mpi4py(WORLD, timeout=60.0)
    rows = _split("even")
    za, zb, lo, hi = _global_batch(rows)
    loss = simclr_loss.SimCLRLoss(0.3, "sum")
    total = WORLD.allreduce(float(loss(za[lo:hi], zb[lo:hi], comm=comm)))
    _close(total, loss(za, zb), 1e-10)


def _outcome(fn):
    try:
        fn()
    except Exception as e:  # gathered below: every rank must see the same
        return type(e).__name__, str(e)
    return None


def _same_everywhere(outcome):
    everyone = WORLD.allgather(outcome)
    assert all(o is not None for o in everyone), everyone
    assert len(set(everyone)) == 1, everyone
    return everyone[0]


def _after_an_error_the_communicator_still_works(comm):
    rows = _split("even")
    za, zb, lo, hi = _global_batch(rows)
    loss = simclr_loss.SimCLRLoss(0.3, "none")
    _close(loss(za[lo:hi], zb[lo:hi], comm=comm), loss(za, zb)[lo:hi], 1e-10)


def test_nan_on_one_rank_raises_everywhere(comm):
    bad = SIZE - 1
    za, zb, lo, hi = _global_batch(_split("even"))
    a = za[lo:hi].copy()
    if RANK == bad:
        a[1, 2] = np.nan
    kind, message = _same_everywhere(
        _outcome(lambda: simclr_loss.SimCLRLoss(0.1, "sum")(a, zb[lo:hi], comm=comm)))
    assert kind == "ValueError"
    assert "za has NaN at row 1" in message and f"rank {bad}" in message
    _after_an_error_the_communicator_still_works(comm)


def test_bad_sample_weight_on_one_rank_raises_everywhere(comm):
    za, zb, lo, hi = _global_batch(_split("even"))
    w = np.ones(hi - lo)
    if RANK == 0:
        w = np.ones(hi - lo + 2)
    kind, message = _same_everywhere(_outcome(
        lambda: simclr_loss.SimCLRLoss(0.1, "sum")(za[lo:hi], zb[lo:hi], sample_weight=w, comm=comm)))
    assert kind == "ValueError" and "Incompatible shapes" in message
    _after_an_error_the_communicator_still_works(comm)


def test_dimension_differing_across_ranks_raises_everywhere(comm):
    if SIZE == 1:
        pytest.skip("needs two ranks")
    za, zb, lo, hi = _global_batch(_split("even"))
    d = 6 if RANK != SIZE - 1 else 5
    kind, message = _same_everywhere(_outcome(
        lambda: simclr_loss.SimCLRLoss(0.1, "sum")(za[lo:hi, :d], zb[lo:hi, :d], comm=comm)))
    assert kind == "ValueError" and "embedding dimension differs across ranks" in message
    _after_an_error_the_communicator_still_works(comm)


def test_a_dtype_the_binding_rejects_on_one_rank_fails_every_rank(comm):
    # The binding refuses int64 itself, and still lets the library fail the other ranks' call
    # instead of leaving them waiting.
    za, zb, lo, hi = _global_batch(_split("even"))
    a, b = za[lo:hi], zb[lo:hi]
    if RANK == 0:
        a, b = a.astype(np.int64), b.astype(np.int64)
    outcome = _outcome(lambda: simclr_loss.SimCLRLoss(0.1, "sum")(a, b, comm=comm))
    everyone = WORLD.allgather(outcome)
    assert all(o is not None and o[0] == "TypeError" for o in everyone), everyone
    assert "za has dtype int64" in everyone[0][1]
    _after_an_error_the_communicator_still_works(comm)


def test_distribution_rule_raises_everywhere(comm):
    za, zb, lo, hi = _global_batch(_split("uneven"))
    kind, message = _same_everywhere(
        _outcome(lambda: simclr_loss.SimCLRLoss(0.1)(za[lo:hi], zb[lo:hi], comm=comm)))
    assert kind == "ValueError" and "Please use" in message


def test_bad_upstream_on_one_rank_raises_everywhere(comm):
    za, zb, lo, hi = _global_batch(_split("even"))
    f = _core.Loss(0.1, "none").forward(za[lo:hi], zb[lo:hi], comm=comm)
    up = np.ones(hi - lo)
    if RANK == SIZE - 1:
        up[0] = np.nan
    kind, _ = _same_everywhere(_outcome(lambda: f.backward(up)))
    assert kind == "ValueError"
    ga, _ = f.backward(np.ones(hi - lo))  # the forward is still usable
    assert ga.shape == (hi - lo, za.shape[1])


def test_exception_in_every_ranks_callback_is_a_comm_error():
    def all_gather(send, recv):
        raise ConnectionError("link down")

    def all_gather_v(send, recv, recv_bytes):
        raise ConnectionError("link down")

    comm = simclr_loss.comm.from_callbacks(RANK, SIZE, all_gather, all_gather_v, backend="broken")
    za, zb, lo, hi = _global_batch(_split("even"))
    with pytest.raises(simclr_loss.CommError, match="ConnectionError: link down") as e:
        simclr_loss.SimCLRLoss(0.1, "sum")(za[lo:hi], zb[lo:hi], comm=comm)
    assert isinstance(e.value.__cause__, ConnectionError)
    WORLD.Barrier()
