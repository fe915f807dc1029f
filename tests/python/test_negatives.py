"""Extra negatives (a memory bank) through simclr_loss.SimCLRLoss (numpy) and simclr_loss.torch: the
rows of `negatives` join every anchor's candidates as negatives only, L2-normalised, with no gradient.

The references here share no code with the library: TF Similarity's formula with the bank's logits
appended, per direction [h1 h2^T | h1 h1^T (own entry - 1e9) | h1 bank^T] / T, softmax cross-entropy
on the positive, both directions summed, then Keras's sample_weight and reduction. Values against a
numpy long-double evaluation, gradients (za, zb and dJ/dT) against torch autograd of an independent
float64 formulation; a two-rank gloo group checks the local and the global scope; MemoryBank's FIFO.
"""

import os

import numpy as np
import pytest

import simclr_loss

LARGE_NUM = 1e9
REDUCTIONS = ["none", "sum", "sum_over_batch_size"]


# ---- the references ----

def _unit_ld(x):
    x = np.asarray(x, dtype=np.longdouble)
    if x.shape[0] == 0:
        return x
    return x / np.sqrt(np.maximum((x * x).sum(axis=1, keepdims=True), np.longdouble(1e-12)))


def _matmul_ld(a, b):
    # numpy's matmul of long doubles, written out (some builds route it through double BLAS).
    return (a[:, None, :] * b.T[None, :, :]).sum(axis=2)


def reference_per_example(za, zb, negatives, temperature, rows=None):
    """[n] (or the given rows of the batch) of the loss with extra negatives, in long double."""
    a, b = _unit_ld(za), _unit_ld(zb)
    d = a.shape[1]
    k = _unit_ld(np.zeros((0, d)) if negatives is None else negatives)
    t = np.longdouble(temperature)
    g = a.shape[0]
    idx = np.arange(g) if rows is None else np.arange(g)[rows]

    def direction(h1, h2):
        anchor = h1[idx]
        ab = _matmul_ld(anchor, h2.T) / t
        aa = _matmul_ld(anchor, h1.T) / t
        aa[np.arange(len(idx)), idx] -= np.longdouble(LARGE_NUM)
        ak = _matmul_ld(anchor, k.T) / t
        logits = np.concatenate([ab, aa, ak], axis=1)
        m = logits.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
        return lse - ab[np.arange(len(idx)), idx]

    return direction(a, b) + direction(b, a)


def reference_loss(za, zb, negatives, temperature, reduction, weight=None):
    values = reference_per_example(za, zb, negatives, temperature)
    n = values.shape[0]
    w = np.ones(n, dtype=np.longdouble) if weight is None else np.broadcast_to(
        np.asarray(weight, dtype=np.longdouble).reshape(-1), (n,))
    weighted = values * w
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return weighted.sum()
    return weighted.sum() / n if n else weighted.sum() * 0


def _torch_unit(x):
    import torch
    return x * torch.rsqrt(torch.clamp((x * x).sum(dim=1, keepdim=True), min=1e-12))


def torch_reference_per_example(za, zb, negatives, temperature, rows=None):
    """The same formula in torch (float64 autograd): gradients of za, zb and the temperature."""
    import torch
    import torch.nn.functional as F
    a, b = _torch_unit(za), _torch_unit(zb)
    k = _torch_unit(negatives) if negatives is not None else za.new_zeros((0, za.shape[1]))
    g = za.shape[0]
    idx = torch.arange(g) if rows is None else torch.arange(g)[rows]
    mask = F.one_hot(idx, g).to(za.dtype)

    def direction(h1, h2):
        anchor = h1[idx]
        logits = torch.cat([anchor @ h2.T / temperature,
                            anchor @ h1.T / temperature - mask * LARGE_NUM,
                            anchor @ k.T / temperature], dim=1)
        return F.cross_entropy(logits, idx, reduction="none")

    return direction(a, b) + direction(b, a)


def torch_reference_loss(za, zb, negatives, temperature, reduction, weight=None):
    values = torch_reference_per_example(za, zb, negatives, temperature)
    w = 1.0 if weight is None else weight
    weighted = values * w
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return weighted.sum()
    return weighted.sum() / values.shape[0]


# ---- inputs ----

def _batch(n=6, d=5, k=7, seed=3):
    rng = np.random.default_rng(seed)
    za = rng.standard_normal((n, d))
    zb = za + 0.6 * rng.standard_normal((n, d))
    bank = 2.5 * rng.standard_normal((k, d))  # not unit rows: the library normalises them
    if k > 2:
        bank[1] = za[0] * 3.0  # a bank row close to an anchor: a hard negative
    weight = np.linspace(0.5, 2.0, n)
    return za, zb, bank, weight


def _close(got, want, tol):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    assert got.shape == want.shape, (got.shape, want.shape)
    err = float(np.max(np.abs(got - want), initial=0.0)) / scale
    assert err <= tol, (err, got, want)


# ---- numpy ----

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("k", [0, 1, 7])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("temperature", [0.1, 0.7])
def test_numpy_values_match_the_reference(reduction, k, weighted, temperature):
    za, zb, bank, weight = _batch(k=k)
    w = weight if weighted else None
    loss = simclr_loss.SimCLRLoss(temperature=temperature, reduction=reduction)
    got = loss(za, zb, sample_weight=w, negatives=bank)
    want = reference_loss(za, zb, bank, temperature, reduction, w)
    _close(got, want, 1e-12)
    # float32: the same, to the dtype's tolerance.
    got32 = loss(za.astype(np.float32), zb.astype(np.float32), sample_weight=w,
                 negatives=bank.astype(np.float32))
    assert got32.dtype == np.float32
    _close(got32, want, 5e-6)


def test_negatives_change_the_loss_and_k0_is_no_negatives():
    za, zb, bank, weight = _batch(k=7)
    loss = simclr_loss.SimCLRLoss(temperature=0.2, reduction="none")
    plain = loss(za, zb, sample_weight=weight)
    empty = loss(za, zb, sample_weight=weight, negatives=np.zeros((0, za.shape[1])))
    assert np.array_equal(plain, empty)
    # K = 0 of any width is no negatives too (the width is checked when there are rows).
    assert np.array_equal(plain, loss(za, zb, sample_weight=weight, negatives=np.zeros((0, 9))))
    with_bank = loss(za, zb, sample_weight=weight, negatives=bank)
    assert np.all(with_bank > plain)  # more negatives: every row's loss grows
    # The bank's rows are normalised: scaling them changes nothing.
    _close(loss(za, zb, sample_weight=weight, negatives=7.0 * bank), with_bank, 1e-13)
    # Their order does not matter either.
    _close(loss(za, zb, sample_weight=weight, negatives=bank[::-1]), with_bank, 1e-13)


def test_numpy_strided_negatives_and_gradients():
    import torch
    za, zb, bank, weight = _batch(k=7)
    wide = np.zeros((7, 2 * za.shape[1]))
    wide[:, ::2] = bank  # a column stride of 2: copied once by the binding
    loss = simclr_loss.SimCLRLoss(temperature=0.3, reduction="sum_over_batch_size")
    value, ga, gb, gt = loss.value_and_gradient(za, zb, sample_weight=weight,
                                                negatives=wide[:, ::2], temperature_gradient=True)
    a = torch.tensor(za, requires_grad=True)
    b = torch.tensor(zb, requires_grad=True)
    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    want = torch_reference_loss(a, b, torch.tensor(bank), t, "sum_over_batch_size",
                                torch.tensor(weight))
    want.backward()
    _close(value, want.item(), 1e-12)
    _close(ga, a.grad.numpy(), 1e-11)
    _close(gb, b.grad.numpy(), 1e-11)
    _close(gt, t.grad.item(), 1e-10)


# ---- torch ----

torch_mod = pytest.importorskip("torch")
st = pytest.importorskip("simclr_loss.torch")
torch = torch_mod


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("k", [0, 1, 7])
def test_torch_gradients_match_autograd_of_the_reference(reduction, k):
    za, zb, bank, weight = _batch(k=k)
    w = torch.tensor(weight)
    up = torch.linspace(-1.0, 2.0, za.shape[0], dtype=torch.float64)

    def run(fn):
        a = torch.tensor(za, requires_grad=True)
        b = torch.tensor(zb, requires_grad=True)
        t = torch.tensor(0.25, dtype=torch.float64, requires_grad=True)
        value = fn(a, b, t)
        (value * up).sum().backward() if reduction == "none" else (1.5 * value).backward()
        return value.detach(), a.grad, b.grad, t.grad

    negatives = torch.tensor(bank)
    got = run(lambda a, b, t: st.simclr_loss(a, b, w, temperature=t, reduction=reduction,
                                             negatives=negatives))
    want = run(lambda a, b, t: torch_reference_loss(a, b, negatives, t, reduction, w))
    _close(got[0].numpy(), want[0].numpy(), 1e-12)
    _close(got[0].numpy(), reference_loss(za, zb, bank, 0.25, reduction, weight), 1e-12)
    for g, r in zip(got[1:3], want[1:3]):
        _close(g.numpy(), r.numpy(), 1e-11)
    _close(got[3].item(), want[3].item(), 1e-10)  # dJ/dT, the negatives' terms included


def test_torch_negatives_get_no_gradient_and_keep_the_inputs_dtype():
    za, zb, bank, _ = _batch(k=7)
    a = torch.tensor(za, dtype=torch.float32, requires_grad=True)
    b = torch.tensor(zb, dtype=torch.float32, requires_grad=True)
    negatives = torch.tensor(bank, dtype=torch.float32, requires_grad=True)
    crit = st.SimCLRLoss(temperature=0.2, reduction="sum")
    loss = crit(a, b, negatives=negatives)
    assert loss.dtype == torch.float32
    loss.backward()
    assert negatives.grad is None  # a constant of the loss, though it requires grad
    assert a.grad is not None and b.grad is not None
    _close(loss.item(), reference_loss(za, zb, bank, 0.2, "sum"), 5e-6)
    # A half-precision batch and bank: computed in float32, as the views.
    half = crit(a.detach().bfloat16(), b.detach().bfloat16(), negatives=negatives.detach().bfloat16())
    assert half.dtype == torch.float32
    # A transposed (column-strided) bank.
    loss_t = crit(a, b, negatives=torch.tensor(bank.T.copy(), dtype=torch.float32).T)
    _close(loss_t.item(), loss.item(), 1e-6)


def test_torch_gradcheck_with_negatives():
    za, zb, bank, weight = _batch(n=4, d=3, k=5)
    negatives = torch.tensor(bank)
    fn = lambda a, b, t: st.simclr_loss(a, b, torch.tensor(weight),  # noqa: E731
                                        temperature=t, reduction="sum", negatives=negatives)
    args = (torch.tensor(za, requires_grad=True), torch.tensor(zb, requires_grad=True),
            torch.tensor(0.4, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-8, rtol=1e-7)


def test_torch_k0_equals_no_negatives():
    za, zb, _, weight = _batch()
    a, b = torch.tensor(za), torch.tensor(zb)
    crit = st.SimCLRLoss(temperature=0.2, reduction="none")
    assert torch.equal(crit(a, b, torch.tensor(weight)),
                       crit(a, b, torch.tensor(weight), negatives=torch.zeros(0, 5,
                                                                          dtype=torch.float64)))


# ---- errors ----

def _numpy_call(za, zb, negatives, scope="local"):
    return simclr_loss.SimCLRLoss(temperature=0.2, reduction="sum")(
        za, zb, negatives=negatives, negatives_scope=scope)


def _torch_call(za, zb, negatives, scope="local"):
    as_tensor = (lambda x: torch.from_numpy(np.asarray(x))) if not isinstance(
        negatives, torch.Tensor) else (lambda x: x)
    return st.simclr_loss(torch.from_numpy(za), torch.from_numpy(zb),
                          negatives=None if negatives is None else as_tensor(negatives),
                          negatives_scope=scope, reduction="sum", temperature=0.2)


ERRORS = [
    ("dtype", lambda za: za[:3].astype(np.float32), TypeError, "dtype"),
    ("width", lambda za: np.ones((3, za.shape[1] + 1)), ValueError, "width"),
    ("nan", lambda za: np.where(np.arange(za.shape[1]) == 2, np.nan, za[:3]), ValueError,
     "negatives has NaN at row 0, column 2"),
    ("inf", lambda za: np.where(np.arange(za.shape[1]) == 1, np.inf, za[:2]), ValueError,
     "negatives has Inf"),
    ("ndim", lambda za: np.ones(za.shape[1]), ValueError, "negatives must be 2-D"),
]


@pytest.mark.parametrize("front_end", [_numpy_call, _torch_call], ids=["numpy", "torch"])
@pytest.mark.parametrize("case", ERRORS, ids=lambda c: c[0])
def test_bad_negatives_are_refused(front_end, case):
    _, make, kind, text = case
    za, zb, _, _ = _batch()
    with pytest.raises(kind, match=text):
        front_end(za, zb, make(za))


@pytest.mark.parametrize("front_end", [_numpy_call, _torch_call], ids=["numpy", "torch"])
@pytest.mark.parametrize("scope", ["sideways", "", None, 1, "LOCAL"])
def test_bad_scope_is_refused(front_end, scope):
    za, zb, bank, _ = _batch()
    with pytest.raises(ValueError, match="negatives_scope"):
        front_end(za, zb, bank, scope)


def test_scope_of_a_local_call_makes_no_difference():
    za, zb, bank, _ = _batch()
    assert _numpy_call(za, zb, bank, "local") == _numpy_call(za, zb, bank, "global")


def test_torch_refuses_what_it_cannot_take():
    za, zb, bank, _ = _batch()
    with pytest.raises(TypeError, match="negatives must be None or a dense tensor"):
        st.simclr_loss(torch.tensor(za), torch.tensor(zb), negatives=bank)  # a numpy array
    with pytest.raises(TypeError, match="negatives have dtype float32 but za and zb have "
                                        "float64"):
        st.simclr_loss(torch.tensor(za), torch.tensor(zb),
                       negatives=torch.tensor(bank, dtype=torch.float32))
    with pytest.raises(TypeError, match="negatives is a torch.sparse_coo tensor"):
        st.simclr_loss(torch.tensor(za), torch.tensor(zb),
                       negatives=torch.tensor(bank).to_sparse())


def test_the_cuda_route_refuses_negatives(monkeypatch):
    # The CUDA route (a build with SIMCLR_WITH_CUDA=ON and CUDA tensors) has no extra negatives: it
    # refuses them before it computes anything. Routed here by pretending the tensors take it.
    za, zb, bank, _ = _batch()
    monkeypatch.setattr(st, "_cuda_route", lambda z: True)
    monkeypatch.setattr(st._torch_cuda, "simclr_loss_cuda", lambda *a, **k: pytest.fail("called"))
    a, b, k = torch.tensor(za), torch.tensor(zb), torch.tensor(bank)
    for call in (lambda: st.simclr_loss(a, b, negatives=k),
                 lambda: st.SimCLRLoss()(a, b, negatives=k),
                 lambda: st.SimCLRLoss()(a, b, temperature=torch.tensor(0.1), negatives=k)):
        with pytest.raises(NotImplementedError, match="the CUDA route has none"):
            call()


# ---- distributed: a two-rank gloo group ----

def _gloo_worker(rank, size, path, queue):
    import torch.distributed as dist
    try:
        dist.init_process_group("gloo", init_method="file://" + path, rank=rank, world_size=size)
        torch.set_num_threads(1)
        rows = [3, 5]
        banks_k = [4, 2]
        za, zb, _, weight = _batch(n=sum(rows), d=4, k=0, seed=11)
        rng = np.random.default_rng(12)
        banks = [rng.standard_normal((k, 4)) for k in banks_k]
        begin = sum(rows[:rank])
        mine = slice(begin, begin + rows[rank])
        world = dist.group.WORLD
        results = []
        for scope in ("local", "global"):
            seen = banks[rank] if scope == "local" else np.concatenate(banks)
            # Values: this rank's rows of the batch against the batch and the bank it sees.
            want = reference_per_example(za, zb, seen, 0.3, rows=mine) * weight[mine]
            a = torch.tensor(za[mine], requires_grad=True)
            b = torch.tensor(zb[mine], requires_grad=True)
            t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
            got = st.simclr_loss(a, b, torch.tensor(weight[mine]), temperature=t, reduction="none",
                                 process_group=world, gradient_reduction="sum",
                                 negatives=torch.tensor(banks[rank]), negatives_scope=scope)
            got.sum().backward()
            # Gradients of J = the sum over ranks of their losses (gradient_reduction "sum"): every
            # rank's rows with the bank that rank's anchors see.
            ra = torch.tensor(za, requires_grad=True)
            rb = torch.tensor(zb, requires_grad=True)
            rt = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
            total = 0
            for r in range(size):
                r_rows = slice(sum(rows[:r]), sum(rows[:r + 1]))
                r_bank = banks[r] if scope == "local" else np.concatenate(banks)
                total = total + (torch_reference_per_example(
                    ra, rb, torch.tensor(r_bank), rt, rows=r_rows)
                    * torch.tensor(weight[r_rows])).sum()
            total.backward()
            share = torch.tensor([t.grad.item()], dtype=torch.float64)
            dist.all_reduce(share)  # the ranks' dJ/dT shares add up to dJ/dT
            # The numpy front end over the same group's communicator, for its values.
            tc = st._TorchComm(world)
            comm = simclr_loss.comm.from_callbacks(rank, size, tc._all_gather, tc._all_gather_v,
                                                   tc._barrier)
            np_value = simclr_loss.SimCLRLoss(temperature=0.3, reduction="none")(
                za[mine], zb[mine], sample_weight=weight[mine], comm=comm,
                negatives=banks[rank], negatives_scope=scope)
            results.append({
                "scope": scope,
                "value": float(np.max(np.abs(got.detach().numpy() - want.astype(np.float64)))),
                "grad_a": float((a.grad - ra.grad[mine]).abs().max()),
                "grad_b": float((b.grad - rb.grad[mine]).abs().max()),
                "grad_t": abs(share.item() - rt.grad.item()) / max(1.0, abs(rt.grad.item())),
                "numpy": float(np.max(np.abs(np_value - want.astype(np.float64)))),
            })
        # A bank on rank 0 only (rank 1 passes K = 0), in either scope: rank 0's anchors see it,
        # and with the global scope rank 1's too.
        for scope in ("local", "global"):
            seen = banks[0] if rank == 0 or scope == "global" else None
            want = reference_per_example(za, zb, seen, 0.3, rows=mine) * weight[mine]
            got = st.simclr_loss(torch.tensor(za[mine]), torch.tensor(zb[mine]),
                                 torch.tensor(weight[mine]), temperature=0.3, reduction="none",
                                 process_group=world,
                                 negatives=torch.tensor(banks[0][:0] if rank else banks[0]),
                                 negatives_scope=scope)
            results.append({"scope": scope + ", one bank",
                             "value": float(np.max(np.abs(got.numpy() - want.astype(np.float64)))),
                             "grad_a": 0.0, "grad_b": 0.0, "grad_t": 0.0, "numpy": 0.0})
        # A scope that differs between ranks is refused on every rank.
        try:
            st.simclr_loss(torch.tensor(za[mine]), torch.tensor(zb[mine]), reduction="sum",
                           process_group=world, negatives=torch.tensor(banks[rank]),
                           negatives_scope="global" if rank == 1 else "local")
            mismatch = "no error"
        except ValueError as exc:
            mismatch = str(exc)
        # A NaN in the last rank's bank: every rank raises it, naming that rank.
        bad = torch.tensor(banks[rank])
        if rank == size - 1:
            bad[0, 1] = float("nan")
        try:
            st.simclr_loss(torch.tensor(za[mine]), torch.tensor(zb[mine]), reduction="sum",
                           process_group=world, negatives=bad)
            nan = "no error"
        except ValueError as exc:
            nan = str(exc)
        dist.destroy_process_group()
        queue.put((rank, {"results": results, "mismatch": mismatch, "nan": nan}))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        import traceback
        queue.put((rank, "failed: %s: %s\n%s" % (type(exc).__name__, exc, traceback.format_exc())))


def test_two_ranks_local_and_global_scope_over_gloo(spawn_ranks):
    import torch.distributed as dist
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    size = 2
    got = spawn_ranks(_gloo_worker, size)
    for rank, out in got.items():
        assert isinstance(out, dict), out
        for r in out["results"]:
            assert r["value"] <= 1e-12, (rank, r)
            assert r["grad_a"] <= 1e-11 and r["grad_b"] <= 1e-11, (rank, r)
            assert r["grad_t"] <= 1e-10, (rank, r)
            assert r["numpy"] <= 1e-12, (rank, r)
        assert "negatives_scope" in out["mismatch"], out["mismatch"]
        assert "negatives has NaN at row 0, column 1" in out["nan"] and "(rank 1)" in out["nan"], \
            out["nan"]
    assert got[0]["mismatch"] == got[1]["mismatch"]
    assert got[0]["nan"] == got[1]["nan"]


# ---- MemoryBank ----

def test_memory_bank_starts_empty_and_fills_in_order():
    bank = st.MemoryBank(5, 3)
    assert len(bank) == 0 and bank.negatives.shape == (0, 3)
    assert bank  # a module is true even when empty
    assert bank.negatives.dtype == torch.float32
    z = torch.arange(1.0, 13.0).reshape(4, 3)
    bank.update(z[:2])
    assert bank.negatives.shape == (2, 3)
    torch.testing.assert_close(bank.negatives, torch.nn.functional.normalize(z[:2], dim=1))
    bank.update(z[2:])
    assert len(bank) == 4
    torch.testing.assert_close(bank.negatives, torch.nn.functional.normalize(z, dim=1))


def test_memory_bank_wraps_around_dropping_the_oldest():
    bank = st.MemoryBank(4, 2, dtype=torch.float64)
    rows = [torch.tensor([[float(i + 1), 1.0]], dtype=torch.float64) for i in range(7)]
    for r in rows[:5]:
        bank.update(r)
    held = {tuple(x) for x in bank.negatives.tolist()}
    want = {tuple(torch.nn.functional.normalize(r, dim=1)[0].tolist()) for r in rows[1:5]}
    assert len(bank) == 4 and held == want  # the first row is gone
    bank.update(torch.cat(rows[5:7]))  # two rows across the end of the storage
    held = {tuple(x) for x in bank.negatives.tolist()}
    want = {tuple(torch.nn.functional.normalize(r, dim=1)[0].tolist()) for r in rows[3:7]}
    assert held == want


def test_memory_bank_keeps_the_last_rows_of_a_large_update():
    bank = st.MemoryBank(3, 2, dtype=torch.float64)
    bank.update(torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    z = torch.tensor([[float(i), 1.0] for i in range(1, 8)], dtype=torch.float64)
    bank.update(z)
    held = sorted(tuple(x) for x in bank.negatives.tolist())
    want = sorted(tuple(x) for x in torch.nn.functional.normalize(z[-3:], dim=1).tolist())
    assert held == want and len(bank) == 3


def test_memory_bank_rows_are_detached_normalised_and_of_its_dtype():
    bank = st.MemoryBank(8, 3, dtype=torch.float64)
    z = torch.tensor([[3.0, 0.0, 4.0], [0.0, 0.0, 0.0]], requires_grad=True)  # float32 input
    bank.update(z * 2)
    assert not bank.negatives.requires_grad and bank.negatives.dtype == torch.float64
    torch.testing.assert_close(bank.negatives,
                               torch.tensor([[0.6, 0.0, 0.8], [0.0, 0.0, 0.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"z must be a tensor \[m, 3\]"):
        bank.update(torch.ones(2, 4))
    with pytest.raises(ValueError, match="size must be an integer"):
        st.MemoryBank(-1, 3)
    empty = st.MemoryBank(0, 3)
    empty.update(torch.ones(2, 3))
    assert empty.negatives.shape == (0, 3)


def test_memory_bank_call_returns_the_rows_before_the_update():
    bank = st.MemoryBank(4, 2)
    assert bank(torch.ones(1, 2)).shape == (0, 2)
    before = bank(torch.tensor([[0.0, 2.0]]))
    torch.testing.assert_close(before, torch.tensor([[2 ** -0.5, 2 ** -0.5]]))
    assert len(bank) == 2
    assert bank().shape == (2, 2)


def test_memory_bank_state_dict_and_to():
    bank = st.MemoryBank(3, 2)
    bank.update(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.5]]))
    copy = st.MemoryBank(3, 2)
    copy.load_state_dict(bank.state_dict())
    assert len(copy) == 3
    torch.testing.assert_close(copy.negatives, bank.negatives)
    copy.update(torch.tensor([[5.0, 1.0]]))
    bank.update(torch.tensor([[5.0, 1.0]]))
    torch.testing.assert_close(copy.negatives, bank.negatives)  # the position came along
    as64 = bank.to(torch.float64)
    assert as64.negatives.dtype == torch.float64 and len(as64) == 3
    assert "size=3, dim=2" in repr(bank)


def test_memory_bank_in_a_training_loop_matches_the_reference():
    g = torch.Generator().manual_seed(0)
    bank = st.MemoryBank(6, 4, dtype=torch.float64)
    crit = st.SimCLRLoss(temperature=0.2, reduction="sum")
    stored = []
    for step in range(4):
        za = torch.randn(3, 4, generator=g, dtype=torch.float64)
        zb = torch.randn(3, 4, generator=g, dtype=torch.float64)
        loss = crit(za, zb, negatives=bank.negatives)
        held = np.concatenate(stored)[-6:] if stored else np.zeros((0, 4))
        _close(loss.item(), reference_loss(za.numpy(), zb.numpy(), held, 0.2, "sum"), 1e-12)
        bank.update(zb)
        stored.append(zb.numpy())
    assert len(bank) == 6


# ---- Keras 3 on the torch backend ----

KERAS_SCRIPT = r"""
import numpy as np, torch, keras
import simclr_loss.keras as sk
rng = np.random.default_rng(0)
za, zb, bank = (rng.standard_normal((5, 3)), rng.standard_normal((5, 3)),
                rng.standard_normal((4, 3)))
loss = sk.SimCLRLoss(temperature=0.3, reduction="sum", dtype="float64")
with_bank = float(loss(za, zb, negatives=bank))
plain = float(loss(za, zb))
import simclr_loss
want = float(simclr_loss.SimCLRLoss(temperature=0.3, reduction="sum")(za, zb, negatives=bank))
assert abs(with_bank - want) <= 1e-12 * max(1, abs(want)), (with_bank, want)
assert with_bank > plain
try:
    loss(za, zb, negatives=bank, negatives_scope="sideways")
    raise SystemExit("no error")
except ValueError as exc:
    assert "negatives_scope" in str(exc)
print("ok")
"""


KERAS_JAX_SCRIPT = r"""
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
import simclr_loss, simclr_loss.jax as sj, simclr_loss.keras as sk
rng = np.random.default_rng(0)
za, zb, bank = (rng.standard_normal((5, 3)), rng.standard_normal((5, 3)),
                rng.standard_normal((4, 3)))
loss = sk.SimCLRLoss(temperature=0.3, reduction="sum", dtype="float64")
got = float(loss(za, zb, negatives=bank))
want = float(simclr_loss.SimCLRLoss(temperature=0.3, reduction="sum")(za, zb, negatives=bank))
assert abs(got - want) <= 1e-12 * max(1, abs(want)), (got, want)
print("ok")
"""


def _keras3_subprocess(backend, script, *modules):
    import subprocess
    import sys
    try:
        import keras
        if int(keras.__version__.split(".")[0]) < 3:
            pytest.skip("Keras 3 is not installed")
    except ImportError:
        pytest.skip("Keras 3 is not installed")
    for m in modules:
        pytest.importorskip(m)
    env = dict(os.environ, KERAS_BACKEND=backend)
    # Keras 3 on a backend older than it supports (Debian's torch 1.13 has no float8 dtypes) fails
    # at import: that environment does not run Keras on that backend.
    probe = subprocess.run([sys.executable, "-c", "import keras"], capture_output=True, text=True,
                           timeout=300, env=env, check=False)
    if probe.returncode != 0:
        pytest.skip("Keras 3 does not import on the " + backend + " backend here: " +
                    probe.stderr.strip().splitlines()[-1])
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=300, env=env, check=False)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


def test_keras3_torch_backend_passes_negatives_through():
    _keras3_subprocess("torch", KERAS_SCRIPT)


def test_keras3_jax_backend_passes_negatives_through():
    # Keras on JAX hands them to simclr_loss.jax: the numpy front end's value.
    _keras3_subprocess("jax", KERAS_JAX_SCRIPT, "jax", "simclr_loss._jax_ffi")
