"""simclr_loss._core, the binding of the C API: the Forward object, gradients written into the caller's
arrays, DLPack (torch) arrays, communicators made of Python callbacks (ranks in threads), and how
exceptions cross the binding."""

import gc
import importlib.metadata
import json
import pathlib
import re
import threading

import numpy as np
import pytest

import simclr_loss
from simclr_loss import _core

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _data(n=6, d=4, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)).astype(dtype), rng.standard_normal((n, d)).astype(dtype))


# ---- the module ----

def test_version_is_the_cmake_project_version():
    text = (ROOT / "CMakeLists.txt").read_text()
    want = re.search(r"project\(simclr\s+VERSION\s+([0-9.]+)", text).group(1)
    assert _core.version() == want
    assert simclr_loss.__version__ == want
    assert importlib.metadata.version("simclr-loss") == want


def test_exception_classes():
    assert simclr_loss.CommError is _core.CommError and simclr_loss.DeviceError is _core.DeviceError
    assert issubclass(simclr_loss.CommError, RuntimeError)
    assert issubclass(simclr_loss.DeviceError, RuntimeError)
    assert simclr_loss.CommError.__module__ == "simclr_loss"


def test_has_mpi_is_a_bool():
    assert isinstance(_core.has_mpi(), bool)


def test_the_c_api_codes_come_from_the_extension():
    # The front ends read these instead of copying them (simclr_loss/_args.py).
    assert _core.REDUCTIONS == {"auto": 0, "none": 1, "sum": 2, "sum_over_batch_size": 3}
    assert (_core.REDUCTION_AUTO, _core.REDUCTION_NONE, _core.REDUCTION_SUM,
            _core.REDUCTION_SUM_OVER_BATCH_SIZE) == (0, 1, 2, 3)
    assert (_core.GRADIENT_SUM, _core.GRADIENT_MEAN) == (0, 1)
    assert (_core.GLOBAL_BATCH_NONE, _core.GLOBAL_BATCH_INFER) == (-2, -1)
    assert _core.RECORD_BYTES == 512
    assert _core.reduction_code("sum_over_batch_size") == 3
    with pytest.raises(ValueError, match="Invalid Reduction Key: mean"):
        _core.reduction_code("mean")


def test_unsupported_is_not_implemented_error():
    # SIMCLR_UNSUPPORTED (float16 on the host) is NotImplementedError (a RuntimeError), not a bare
    # RuntimeError.
    a = np.ones((3, 2), np.float16)
    with pytest.raises(NotImplementedError, match="float16"):
        _core.Loss().forward(a, a)


@pytest.mark.skipif(_core.has_mpi(), reason="this build has MPI")
def test_mpi_without_mpi_says_so():
    with pytest.raises(RuntimeError, match="built without MPI"):
        _core.Comm.mpi(0)


def test_loss_config_json():
    text = _core.Loss().get_config_json()
    assert list(json.loads(text).items()) == [("reduction", "auto"), ("name", None),
                                              ("temperature", 0.05)]
    assert json.loads(_core.Loss(0.5, "none", "x").get_config_json()) == \
        {"reduction": "none", "name": "x", "temperature": 0.5}
    loss = _core.Loss.from_config('{"temperature": 0.25}')
    assert json.loads(loss.get_config_json())["temperature"] == 0.25
    with pytest.raises(ValueError, match="not valid JSON"):
        _core.Loss.from_config("{")


# ---- the forward ----

@pytest.mark.parametrize("reduction,resolved", [("auto", "sum_over_batch_size"), ("none", "none"),
                                                ("sum", "sum"),
                                                ("sum_over_batch_size", "sum_over_batch_size")])
def test_forward_info(reduction, resolved):
    za, zb = _data(6, 4)
    w = np.array([1.0, 2.0, 0.0, 1.0, 0.5, 3.0])
    f = _core.Loss(0.2, reduction).forward(za, zb, w)
    assert f.reduction == resolved
    assert (f.rows, f.row_offset, f.global_rows, f.ranks, f.rank_rows) == (6, 0, 6, 1, [6])
    assert f.dtype == "float64" and f.comm is None and f.flops > 0
    assert f.per_example.shape == (6,)
    weighted = w * f.per_example
    if resolved == "none":
        np.testing.assert_allclose(f.values, weighted, rtol=1e-15)
        assert f.objective == pytest.approx(weighted.sum(), rel=1e-14)
    else:
        assert f.values.shape == (1,)
        want = weighted.sum() / (6 if resolved == "sum_over_batch_size" else 1)
        assert f.values[0] == pytest.approx(want, rel=1e-14)
        assert f.objective == pytest.approx(want, rel=1e-14)


def test_input_error_of_a_local_call():
    # A front end's own rejection: the library raises it, with the type asked for; za and zb are
    # not read.
    loss = _core.Loss(0.1, "sum")
    for kind in (TypeError, ValueError, NotImplementedError):
        with pytest.raises(kind) as e:
            loss.forward(None, None, input_error=(kind, "simclr.x: za is wrong"))
        assert type(e.value) is kind and str(e.value) == "simclr.x: za is wrong"
    with pytest.raises(TypeError, match="input_error must be None or"):
        loss.forward(None, None, input_error=(KeyError, "no"))
    with pytest.raises(TypeError, match="input_error must be None or"):
        loss.forward(None, None, input_error="no")


def test_object_and_string_arrays_name_their_dtype():
    o = np.empty((3, 2), dtype=object)
    o[:] = 1.0
    with pytest.raises(TypeError, match="za must be a 2-D array .* of float32 or float64 .*got "
                                        "numpy.ndarray of dtype object"):
        _core.Loss().forward(o, o)
    s = np.array([["a", "b"]])
    with pytest.raises(TypeError, match="got numpy.ndarray of dtype <U1"):
        _core.Loss().forward(np.ones((1, 2)), s)


def test_zero_dimensional_embeddings():
    # [n, 0]: every row is a zero row; TF Similarity's value is 2 ln(2n - 1).
    z = np.zeros((3, 0))
    f = _core.Loss(0.1, "none").forward(z, z)
    np.testing.assert_allclose(f.values, [2 * np.log(5)] * 3, rtol=1e-14)
    ga, gb = f.backward(np.ones(3))
    assert ga.shape == (3, 0) and gb.shape == (3, 0)


def test_empty_batch():
    z = np.zeros((0, 3))
    f = _core.Loss(0.1, "sum").forward(z, z)
    assert f.values[0] == 0 and f.rows == 0
    ga, gb = f.backward(1.0)
    assert ga.shape == (0, 3) and gb.shape == (0, 3)


# ---- the backward ----

def test_backward_writes_into_the_callers_arrays():
    za, zb = _data()
    f = _core.Loss(0.1, "sum").forward(za, zb)
    want_a, want_b = f.backward(1.0)
    ga, gb = np.full_like(za, 7.0), np.full_like(zb, 7.0)
    got = f.backward(1.0, ga, gb)
    assert got[0] is ga and got[1] is gb
    np.testing.assert_array_equal(ga, want_a)
    np.testing.assert_array_equal(gb, want_b)


def test_backward_into_strided_arrays_touches_only_their_elements():
    za, zb = _data()
    f = _core.Loss(0.1, "sum").forward(za, zb)
    want_a, want_b = f.backward(1.0)
    big_a = np.full((6, 8), 7.0)
    big_b = np.full((4, 6), 7.0)  # gb as a transposed view
    f.backward(1.0, big_a[:, ::2], big_b.T)
    np.testing.assert_array_equal(big_a[:, ::2], want_a)
    np.testing.assert_array_equal(big_a[:, 1::2], 7.0)
    np.testing.assert_array_equal(big_b.T, want_b)


def test_backward_scales_with_the_upstream_and_repeats():
    za, zb = _data()
    f = _core.Loss(0.1, "sum_over_batch_size").forward(za, zb)
    g1 = f.backward(1.0)
    g2 = f.backward(np.float32(-2.5))
    g3 = f.backward(np.array(1.0))
    # Linear in the upstream up to rounding: scaling alpha changes the order of nothing, but an
    # element that is a sum with cancellation can differ by a few ulps of the row's scale.
    np.testing.assert_allclose(g2[0], -2.5 * g1[0], rtol=1e-12, atol=1e-13 * np.abs(g1[0]).max())
    np.testing.assert_array_equal(g3[0], g1[0])
    np.testing.assert_array_equal(f.backward(1.0)[1], g1[1])


def test_per_example_upstream_is_the_weighted_sum_gradient():
    za, zb = _data(5, 3)
    u = np.array([0.5, -1.0, 2.0, 0.0, 1.5])
    got = _core.Loss(0.3, "none").forward(za, zb).backward(u)
    want = _core.Loss(0.3, "sum").forward(za, zb, u).backward(1.0)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12, atol=1e-14)


def test_backward_errors():
    za, zb = _data(5, 3)
    f = _core.Loss(0.3, "sum").forward(za, zb)
    with pytest.raises(ValueError, match="per-example upstream gradient needs reduction 'none'"):
        f.backward(np.ones(5))
    with pytest.raises(ValueError, match=r"grad_a must have the forward's shape \[5, 3\]"):
        f.backward(1.0, np.zeros((4, 3)))
    with pytest.raises(TypeError, match="grad_b has dtype float32 but the forward's input was"):
        f.backward(1.0, None, np.zeros((5, 3), np.float32))
    ro = np.zeros((5, 3))
    ro.flags.writeable = False
    with pytest.raises(TypeError, match="grad_a must be a writable host array"):
        f.backward(1.0, ro)
    with pytest.raises(ValueError, match="scalar or a 1-D array"):
        f.backward(np.ones((5, 1)))
    with pytest.raises(TypeError, match="upstream must be a number"):
        f.backward("one")
    none = _core.Loss(0.3, "none").forward(za, zb)
    with pytest.raises(ValueError):
        none.backward(np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        none.backward(float("nan"))


def test_forward_keeps_its_inputs_alive():
    za, zb = _data(8, 5)
    loss = _core.Loss(0.1, "sum")
    want = loss.forward(za, zb).backward(1.0)
    f = loss.forward(za.copy(), zb[:, :].copy())  # the only references to these copies
    gc.collect()
    got = f.backward(1.0)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


# ---- DLPack: torch tensors ----

def test_torch_tensors_in_and_gradients_in_place():
    torch = pytest.importorskip("torch")
    za, zb = _data(7, 4, seed=3)
    loss = _core.Loss(0.1, "sum")
    want = loss.forward(za, zb)
    want_a, want_b = want.backward(1.0)
    ta, tb = torch.from_numpy(za.copy()), torch.from_numpy(zb.copy())
    f = loss.forward(ta, tb)
    np.testing.assert_array_equal(f.values, want.values)
    ga, gb = torch.zeros(7, 4, dtype=torch.float64), torch.zeros(7, 4, dtype=torch.float64)
    ptr = ga.data_ptr()
    out = f.backward(torch.tensor(1.0, dtype=torch.float64), ga, gb)
    assert out[0] is ga and ga.data_ptr() == ptr
    np.testing.assert_array_equal(ga.numpy(), want_a)
    np.testing.assert_array_equal(gb.numpy(), want_b)
    # A transposed (column-major) tensor and a column-strided gradient.
    tt = torch.from_numpy(np.ascontiguousarray(za.T)).t()
    np.testing.assert_array_equal(loss.forward(tt, tb).values, want.values)
    wide = torch.zeros(7, 8, dtype=torch.float64)
    loss.forward(ta, tb).backward(1.0, wide[:, ::2], None)
    np.testing.assert_array_equal(wide[:, ::2].numpy(), want_a)
    assert torch.count_nonzero(wide[:, 1::2]) == 0


def test_torch_float32_and_bfloat16():
    torch = pytest.importorskip("torch")
    za, zb = _data(5, 3, dtype=np.float32)
    f = _core.Loss(0.1, "none").forward(torch.from_numpy(za), torch.from_numpy(zb))
    assert f.values.dtype == np.float32
    with pytest.raises(RuntimeError, match="bfloat16"):
        _core.Loss().forward(torch.ones(3, 2, dtype=torch.bfloat16),
                             torch.ones(3, 2, dtype=torch.bfloat16))


# ---- communicators from Python callbacks ----

def _copy_all_gather(calls=None):
    def all_gather(send, recv):
        if calls is not None:
            calls.append(("all_gather", send.size, recv.size))
        assert not send.flags.writeable and recv.flags.writeable
        recv[:] = send

    def all_gather_v(send, recv, recv_bytes):
        if calls is not None:
            calls.append(("all_gather_v", send.size, list(recv_bytes)))
        recv[:] = send

    return all_gather, all_gather_v


@pytest.mark.parametrize("barrier", [None, lambda: None])
def test_one_rank_callbacks_equal_the_local_call(barrier):
    calls = []
    ag, agv = _copy_all_gather(calls)
    comm = simclr_loss.comm.from_callbacks(0, 1, ag, agv, barrier, backend="test")
    assert (comm.rank, comm.size, comm.backend) == (0, 1, "test")
    assert "backend=test" in repr(comm)
    za, zb = _data(6, 4)
    for reduction in ("none", "sum"):
        loss = simclr_loss.SimCLRLoss(0.2, reduction)
        want = loss.value_and_gradient(za, zb)
        got = loss.value_and_gradient(za, zb, comm=comm)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-13, atol=1e-15)
    assert calls and all(c[0] in ("all_gather", "all_gather_v") for c in calls)
    assert any(c[0] == "all_gather_v" and c[2] == [c[1]] for c in calls)


def test_single_comm():
    za, zb = _data()
    loss = simclr_loss.SimCLRLoss(0.2, "sum")
    np.testing.assert_allclose(loss(za, zb, comm=_core.Comm.single()), loss(za, zb), rtol=1e-13)


def test_distribution_rule_through_a_communicator():
    za, zb = _data()
    comm = simclr_loss.comm.from_callbacks(0, 1, *_copy_all_gather())
    with pytest.raises(ValueError, match="Please use"):
        simclr_loss.SimCLRLoss()(za, zb, comm=comm)
    want = simclr_loss.SimCLRLoss(0.05, "sum")(za, zb) / 6
    np.testing.assert_allclose(simclr_loss.SimCLRLoss()(za, zb, comm=comm, global_batch_size=6), want,
                               rtol=1e-13)
    np.testing.assert_allclose(simclr_loss.SimCLRLoss()(za, zb, comm=comm, global_batch_size="infer"),
                               want, rtol=1e-13)


class _Boom(Exception):
    pass


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_exception_in_a_callback_becomes_comm_error(where):
    za, zb = _data()
    state = {"fail": where == "forward"}

    def all_gather(send, recv):
        recv[:] = send

    def all_gather_v(send, recv, recv_bytes):
        if state["fail"]:
            raise _Boom("the transport broke")
        recv[:] = send

    comm = simclr_loss.comm.from_callbacks(0, 1, all_gather, all_gather_v, backend="flaky")
    f = None
    if where == "backward":
        f = _core.Loss(0.1, "sum").forward(za, zb, comm=comm)
        state["fail"] = True
    with pytest.raises(simclr_loss.CommError) as e:
        if f is None:
            _core.Loss(0.1, "sum").forward(za, zb, comm=comm)
        else:
            f.backward(1.0)
    assert "_Boom: the transport broke" in str(e.value)
    assert isinstance(e.value.__cause__, _Boom)
    # The communicator still works afterwards.
    state["fail"] = False
    np.testing.assert_allclose(simclr_loss.SimCLRLoss(0.1, "sum")(za, zb, comm=comm),
                               simclr_loss.SimCLRLoss(0.1, "sum")(za, zb), rtol=1e-13)


@pytest.mark.parametrize("which", ["all_gather", "all_gather_v"])
@pytest.mark.parametrize("returns", [None, "the bytes"])
def test_callbacks_that_do_not_write_recv_are_a_comm_error(which, returns):
    # A callback that returns (None, or the gathered bytes) without filling recv is named, instead of
    # the library reading stale bytes (an internal error in the engine, before).
    za, zb = _data()

    def all_gather(send, recv):
        if which == "all_gather":
            return None if returns is None else np.array(send)
        recv[:] = send

    def all_gather_v(send, recv, recv_bytes):
        if which == "all_gather_v":
            return None if returns is None else np.array(send)
        recv[:] = send

    comm = simclr_loss.comm.from_callbacks(0, 1, all_gather, all_gather_v, backend="forgetful")
    what = "None" if returns is None else "a numpy.ndarray"
    with pytest.raises(simclr_loss.CommError, match=rf"forgetful: {which} failed on rank 0 of 1 .*the "
                                               rf"{which} callback returned {what}.* without "
                                               r"writing this rank's send into recv\[0:"):
        _core.Loss(0.1, "sum").forward(za, zb, comm=comm)


def test_callback_exception_without_a_message():
    za, zb = _data()

    def fails(*args):
        raise RuntimeError()

    comm = simclr_loss.comm.from_callbacks(0, 1, fails, fails, backend="mute")
    with pytest.raises(simclr_loss.CommError, match=r"RuntimeError \(raised without a message\)$") as e:
        _core.Loss(0.1, "sum").forward(za, zb, comm=comm)
    assert isinstance(e.value.__cause__, RuntimeError)


def test_bad_callbacks():
    with pytest.raises(TypeError, match="callables"):
        simclr_loss.comm.from_callbacks(0, 1, None, lambda *a: None)
    with pytest.raises(TypeError, match="barrier"):
        simclr_loss.comm.from_callbacks(0, 1, lambda *a: None, lambda *a: None, barrier=3)


class _ThreadWorld:
    """`size` ranks as threads of this process, their collectives over shared memory."""

    def __init__(self, size):
        self.size = size
        self.slots = [None] * size
        self.barrier = threading.Barrier(size, timeout=60)

    def comm(self, rank):
        def exchange(send):
            self.slots[rank] = bytes(send)
            self.barrier.wait()
            out = b"".join(self.slots)
            self.barrier.wait()  # nobody overwrites a slot before every rank has read it
            return out

        def all_gather(send, recv):
            recv[:] = np.frombuffer(exchange(send), np.uint8)

        def all_gather_v(send, recv, recv_bytes):
            data = exchange(send)
            assert len(data) == sum(recv_bytes)
            recv[:] = np.frombuffer(data, np.uint8)

        return simclr_loss.comm.from_callbacks(rank, self.size, all_gather, all_gather_v,
                                          lambda: self.barrier.wait(), backend="threads")

    def run(self, fn):
        results, errors = [None] * self.size, [None] * self.size

        def main(rank):
            try:
                results[rank] = fn(rank, self.comm(rank))
            except BaseException as e:  # reported by the caller, per rank
                errors[rank] = e
                self.barrier.abort()

        threads = [threading.Thread(target=main, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results, errors


@pytest.mark.parametrize("rows", [[3, 5], [0, 6], [4, 0, 3], [2, 2, 2, 1]])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ranks_in_threads_equal_the_whole_batch(rows, dtype):
    za, zb = _data(sum(rows), 5, seed=11, dtype=dtype)
    offsets = np.concatenate([[0], np.cumsum(rows)])
    loss = simclr_loss.SimCLRLoss(0.1, "none")
    want_v, want_a, want_b = loss.value_and_gradient(za, zb)
    world = _ThreadWorld(len(rows))

    def rank_fn(rank, comm):
        lo, hi = offsets[rank], offsets[rank + 1]
        f = _core.Loss(0.1, "none").forward(za[lo:hi], zb[lo:hi], comm=comm)
        assert (f.row_offset, f.global_rows, f.rank_rows) == (lo, sum(rows), rows)
        return (f.values.copy(),) + f.backward(1.0)

    results, errors = world.run(rank_fn)
    assert errors == [None] * len(rows), errors
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for rank, (v, ga, gb) in enumerate(results):
        lo, hi = offsets[rank], offsets[rank + 1]
        np.testing.assert_allclose(v, want_v[lo:hi], rtol=tol)
        scale = np.abs(want_a).max()
        np.testing.assert_allclose(ga, want_a[lo:hi], rtol=0, atol=tol * scale)
        np.testing.assert_allclose(gb, want_b[lo:hi], rtol=0, atol=tol * scale)


@pytest.mark.parametrize("bad", ["nan", "dtype", "dim"])
def test_bad_input_on_one_thread_rank_fails_every_rank(bad):
    world = _ThreadWorld(3)
    za, zb = _data(9, 4, seed=5)

    def rank_fn(rank, comm):
        a, b = za[3 * rank:3 * rank + 3].copy(), zb[3 * rank:3 * rank + 3].copy()
        if rank == 1:
            if bad == "nan":
                a[2, 0] = np.nan
            elif bad == "dtype":
                a = a.astype(np.int64)
            else:
                a, b = a[:, :3].copy(), b[:, :3].copy()
        try:
            simclr_loss.SimCLRLoss(0.1, "sum")(a, b, comm=comm)
        except (ValueError, TypeError) as e:
            return type(e), str(e)
        return None

    results, errors = world.run(rank_fn)
    assert errors == [None] * 3, errors
    assert all(r is not None for r in results), results
    kinds = {r[0] for r in results}
    assert len(kinds) == 1, results
    if bad == "nan":
        assert kinds == {ValueError}
        assert len({r[1] for r in results}) == 1 and "za has NaN at row 2" in results[0][1]
        assert "rank 1" in results[0][1]
    elif bad == "dim":
        assert kinds == {ValueError} and len({r[1] for r in results}) == 1
        assert "dimension differs across ranks" in results[0][1]
    else:
        # The binding's own rejection goes through the library's agreement: every rank raises the
        # same message, naming the rank.
        assert kinds == {TypeError} and len({r[1] for r in results}) == 1, results
        assert "za has dtype int64" in results[0][1] and "(rank 1)" in results[0][1]


@pytest.mark.parametrize("kind", [TypeError, ValueError, NotImplementedError])
def test_input_error_on_one_thread_rank_fails_every_rank(kind):
    world = _ThreadWorld(3)
    za, zb = _data(9, 4, seed=6)

    def rank_fn(rank, comm):
        error = (kind, "za is not a tensor") if rank == 2 else None
        try:
            _core.Loss(0.1, "sum").forward(za[3 * rank:3 * rank + 3], zb[3 * rank:3 * rank + 3],
                                           comm=comm, input_error=error)
        except Exception as e:  # noqa: BLE001 - compared below
            return type(e), str(e)
        return None

    results, errors = world.run(rank_fn)
    assert errors == [None] * 3, errors
    assert results == [(kind, "za is not a tensor (rank 2)")] * 3


def test_gradient_reduction_is_the_librarys():
    # mean: the library scales a distributed backward by the number of ranks; every rank must pass
    # the same.
    za, zb = _data(5, 4, seed=8)
    offsets = [0, 3, 5]

    def run(modes):
        world = _ThreadWorld(2)

        def rank_fn(rank, comm):
            lo, hi = offsets[rank], offsets[rank + 1]
            try:
                f = _core.Loss(0.1, "sum").forward(za[lo:hi], zb[lo:hi], comm=comm,
                                                   gradient_reduction=modes[rank])
            except ValueError as e:
                return str(e)
            return f.backward(1.0)

        results, errors = world.run(rank_fn)
        assert errors == [None, None], errors
        return results

    want = simclr_loss.SimCLRLoss(0.1, "sum").value_and_gradient(za, zb)[1]
    for mode, factor in ((_core.GRADIENT_SUM, 1), (_core.GRADIENT_MEAN, 2)):
        got = run([mode, mode])
        np.testing.assert_allclose(np.concatenate([got[0][0], got[1][0]]), factor * want,
                                   rtol=1e-12, atol=1e-14)
    got = run([_core.GRADIENT_SUM, _core.GRADIENT_MEAN])
    assert got[0] == got[1]
    assert "gradient_reduction differs between ranks: rank 0 has 'sum', rank 1 has 'mean'" in got[0]
