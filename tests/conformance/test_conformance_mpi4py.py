"""The conformance table's input errors, distributed: under mpirun, the LAST rank gets the bad input
and every other rank good input; every rank must raise the same exception type with the same message,
naming that rank, promptly (the run is bounded by tests/python/run_mpi.sh's timeout). Through the
numpy front end over an mpi4py communicator, both ways the package can carry it: the library's MPI
communicator and mpi4py's own collectives. Value cases split over the ranks must equal the whole
batch (tests/data/golden_single.json). Collective: every rank runs the same tests in the same order.
"""

import numpy as np
import pytest

import simclr_loss
from simclr_loss import _core

from test_conformance import ERROR_CASES, VALUE_CASES, TABLE, Case  # noqa: F401

pytest.importorskip("mpi4py")
from mpi4py import MPI  # noqa: E402

WORLD = MPI.COMM_WORLD
RANK, SIZE = WORLD.Get_rank(), WORLD.Get_size()
LAST = SIZE - 1
PATHS = (["mpi"] if _core.has_mpi() else []) + ["mpi4py"]
DEFAULTS = Case(dict(TABLE["error_defaults"], id="defaults"), "error")

# Input errors only: a bad temperature or reduction fails at construction, on its rank alone, before
# any collective (as every front end does).
INPUT_ERRORS = [c for c in ERROR_CASES
                if c.temperature == DEFAULTS.temperature and c.reduction == DEFAULTS.reduction]


@pytest.fixture(scope="module", params=PATHS)
def comm(request):
    return simclr_loss.comm.from_mpi4py(WORLD, use_mpi=request.param == "mpi")


def _rows(total, rank):
    return sum(total // SIZE + (r < total % SIZE) for r in range(rank))


@pytest.mark.parametrize("case", INPUT_ERRORS, ids=lambda c: c.id)
def test_error_on_the_last_rank_raises_everywhere(comm, case):
    mine = case if RANK == LAST else DEFAULTS
    loss = simclr_loss.SimCLRLoss(temperature=mine.temperature, reduction=mine.reduction)
    got = ("no exception", "")
    try:
        loss(mine.za, mine.zb, sample_weight=mine.weight, comm=comm,
             temperature=mine.call_temperature, **mine.negatives_kwargs())
    except Exception as exc:  # noqa: BLE001 - compared below, by type name and message
        got = (type(exc).__name__, str(exc))
    everyone = WORLD.allgather(got)
    assert all(g == everyone[0] for g in everyone), everyone
    kind, message = got
    assert kind == case.raw["error"], got
    assert case.raw["message"] in message, message
    assert message.endswith("(rank %d)" % LAST), message


# A sample of the goldens (every reduction, both dtypes, weighted and not), split over the ranks.
SPLIT_CASES = [c for c in VALUE_CASES if c.kind == "golden" and c.za.shape[0] >= SIZE][::7]


@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda c: c.id)
def test_split_equals_the_whole_batch(comm, case):
    n = case.za.shape[0]
    begin, end = _rows(n, RANK), _rows(n, RANK + 1)
    w = case.weight
    if w is not None and w.ndim >= 1 and w.shape[0] == n and n != 1:
        w = w[begin:end]
    divides = case.reduction in ("auto", "sum_over_batch_size")
    loss = simclr_loss.SimCLRLoss(temperature=case.temperature, reduction=case.reduction)
    value, ga, gb = loss.value_and_gradient(case.za[begin:end], case.zb[begin:end], sample_weight=w,
                                            comm=comm, global_batch_size="infer" if divides else None)
    want = np.asarray(case.raw["loss"], dtype=np.float64)
    if case.reduction == "none":
        got = np.concatenate(WORLD.allgather(np.asarray(value, dtype=np.float64)))
    else:
        got = np.asarray(WORLD.allreduce(float(value)))
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    assert float(np.max(np.abs(got - want), initial=0.0)) / scale <= case.tolerance
    for g, key in ((ga, "grad_za"), (gb, "grad_zb")):
        w_all = np.asarray(case.raw[key], dtype=np.float64)
        gscale = max(1.0 / case.temperature, float(np.max(np.abs(w_all), initial=0.0)))
        err = float(np.max(np.abs(g - w_all[begin:end]), initial=0.0)) / gscale
        assert err <= case.tolerance, key
