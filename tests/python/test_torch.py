"""simclr_loss.torch in one process: the TF Similarity goldens, gradcheck, an independent autograd
reference, dtypes, layouts, errors and the config."""

import json
import math
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
simclr_torch = pytest.importorskip("simclr_loss.torch")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")
REDUCTIONS = ["auto", "none", "sum", "sum_over_batch_size"]


def _golden_cases():
    with open(os.path.join(DATA, "golden_single.json")) as f:
        return json.load(f)["cases"]


CASES = _golden_cases()


def _max_rel(got, want, floor):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    return float(np.max(np.abs(got - want), initial=0.0) / max(float(np.max(np.abs(want), initial=0.0)), floor))


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_golden(case):
    # Tolerances as the C++ golden test: float64 to rounding, float32 a few ulps of the output scale.
    dtype = torch.float32 if case["dtype"] == "float32" else torch.float64
    tol = 5e-6 if dtype == torch.float32 else 1e-12
    za = torch.tensor(case["za"], dtype=dtype, requires_grad=True)
    zb = torch.tensor(case["zb"], dtype=dtype, requires_grad=True)
    w = case["sample_weight"]
    weight = None if w is None else np.array(w["values"], dtype=np.float64).reshape(w["shape"])
    crit = simclr_torch.SimCLRLoss(temperature=case["temperature"], reduction=case["reduction"])
    out = crit(za, zb, sample_weight=weight)
    assert out.dtype == dtype
    want = case["loss"]
    if case["reduction"] == "none":
        assert tuple(out.shape) == (len(want),)
    else:
        assert out.dim() == 0
    assert _max_rel(out.detach(), want, 1.0) <= tol
    out.sum().backward()  # the goldens' gradients are of tf.reduce_sum(loss)
    max_norm = max(float(za.detach().double().norm(dim=1).max()), float(zb.detach().double().norm(dim=1).max()))
    scale = 1.0 / (case["temperature"] * max(max_norm, 1e-6))
    scale = max(scale, float(np.abs(case["grad_za"]).max()), float(np.abs(case["grad_zb"]).max()))
    assert _max_rel(za.grad, case["grad_za"], scale) <= tol
    assert _max_rel(zb.grad, case["grad_zb"], scale) <= tol


def test_golden_cover_both_dtypes_and_all_reductions():
    assert len(CASES) >= 50
    assert {c["dtype"] for c in CASES} == {"float32", "float64"}
    assert {c["reduction"] for c in CASES} == set(REDUCTIONS)


def _inputs(n, d, dtype=torch.float64, seed=0, zero_row=None):
    g = torch.Generator().manual_seed(seed)
    za = torch.randn(n, d, generator=g, dtype=dtype) * torch.exp(torch.rand(n, 1, generator=g, dtype=dtype) * 2 - 1)
    zb = torch.randn(n, d, generator=g, dtype=dtype)
    if zero_row is not None:
        za[zero_row] = 0
    return za, zb


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("zero_row", [None, 2])
def test_gradcheck(reduction, weighted, zero_row):
    za, zb = _inputs(5, 4, zero_row=zero_row)
    za.requires_grad_(True)
    zb.requires_grad_(True)
    w = torch.tensor([1.0, 0.5, 2.0, 0.0, 3.0], dtype=torch.float64) if weighted else None

    def f(a, b):
        return simclr_torch.simclr_loss(a, b, w, temperature=0.3, reduction=reduction)

    # gradcheck drives reduction none with per-example upstream vectors (every unit vector). Near a
    # zero row the normalisation is x / 1e-6 (its gradient ~1e6): the step must stay well inside
    # |x| < 1e-6 for finite differences to see that linear piece.
    eps, atol = (1e-6, 1e-6) if zero_row is None else (1e-10, 1e-4)
    assert torch.autograd.gradcheck(f, (za, zb), eps=eps, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_independent_autograd_reference(reduction, dtype):
    za, zb = _inputs(9, 7, dtype=dtype, seed=3, zero_row=4)
    w = torch.linspace(0.0, 2.0, 9, dtype=torch.float64)
    upstream = torch.linspace(-1.0, 1.5, 9, dtype=dtype) if reduction == "none" else torch.tensor(0.7, dtype=dtype)
    grads = []
    values = []
    for impl in ("simclr", "reference"):
        a = za.clone().requires_grad_(True)
        b = zb.clone().requires_grad_(True)
        if impl == "simclr":
            out = simclr_torch.SimCLRLoss(temperature=0.2, reduction=reduction)(a, b, sample_weight=w)
        else:
            out = ref.loss(a, b, w, temperature=0.2, reduction=reduction)
        out.backward(upstream)
        values.append(out.detach())
        grads.append((a.grad, b.grad))
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert torch.allclose(values[0], values[1], rtol=tol, atol=tol)
    for g0, g1 in zip(grads[0], grads[1]):
        scale = max(float(g1.abs().max()), 1.0)
        assert float((g0 - g1).abs().max()) <= tol * scale


def test_all_identical_rows_closed_form():
    n = 4
    za = torch.ones(n, 3, dtype=torch.float64)
    out = simclr_torch.simclr_loss(za, za.clone(), reduction="none", temperature=0.5)
    assert torch.allclose(out, torch.full((n,), 2 * math.log(2 * n - 1), dtype=torch.float64), atol=1e-12)


def test_hand_values():
    # docs/math.md: temperature 1, za = [[1,0],[0,1],[1,1]], zb = [[1,0],[0,1],[1,-1]].
    za = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    zb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    none = simclr_torch.simclr_loss(za, zb, temperature=1.0, reduction="none")
    assert np.allclose(none.numpy(), [2.343702263, 1.959094756, 4.008438580], atol=1e-9)
    weighted = simclr_torch.simclr_loss(za, zb, torch.tensor([1.0, 2.0, 3.0]), temperature=1.0)
    assert abs(float(weighted) - 6.095735838) < 1e-9


def test_per_example_upstream_for_reduction_none():
    za, zb = _inputs(6, 5, seed=5)
    up = torch.tensor([1.0, 0.0, -2.0, 0.5, 3.0, 0.0], dtype=torch.float64)
    a = za.clone().requires_grad_(True)
    b = zb.clone().requires_grad_(True)
    simclr_torch.simclr_loss(a, b, reduction="none", temperature=0.1).backward(up)
    a2 = za.clone().requires_grad_(True)
    b2 = zb.clone().requires_grad_(True)
    (simclr_torch.simclr_loss(a2, b2, reduction="none", temperature=0.1) * up).sum().backward()
    assert torch.allclose(a.grad, a2.grad, rtol=1e-12, atol=1e-12)
    assert torch.allclose(b.grad, b2.grad, rtol=1e-12, atol=1e-12)


def test_non_contiguous_inputs():
    za, zb = _inputs(8, 6, dtype=torch.float32, seed=7)
    want = simclr_torch.simclr_loss(za, zb, reduction="none", temperature=0.1)
    # A row-strided slice, a transposed (column-major) tensor, and an expanded layout.
    big_a = torch.zeros(16, 10)
    big_a[::2, 2:8] = za
    zb_t = zb.t().contiguous().t()
    a = big_a[::2, 2:8].requires_grad_(False)
    assert not a.is_contiguous() and not zb_t.is_contiguous()
    got = simclr_torch.simclr_loss(a, zb_t, reduction="none", temperature=0.1)
    assert torch.equal(got, want)
    a_leaf = big_a.clone().requires_grad_(True)
    b_leaf = zb_t.detach().clone().t().contiguous().t().requires_grad_(True)
    simclr_torch.simclr_loss(a_leaf[::2, 2:8], b_leaf, temperature=0.1).backward()
    a_ref = za.clone().requires_grad_(True)
    b_ref = zb.clone().requires_grad_(True)
    simclr_torch.simclr_loss(a_ref, b_ref, temperature=0.1).backward()
    assert torch.equal(a_leaf.grad[::2, 2:8], a_ref.grad)
    assert float(a_leaf.grad[1::2].abs().sum()) == 0.0
    assert torch.equal(b_leaf.grad, b_ref.grad)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_computed_in_float32(half):
    za, zb = _inputs(6, 8, dtype=torch.float32, seed=11)
    za[1] = 0  # a zero row
    za[3] = 1e-6  # a row whose squared norm underflows in half precision
    a = za.to(half).requires_grad_(True)
    b = zb.to(half).requires_grad_(True)
    out = simclr_torch.simclr_loss(a, b, temperature=0.1)
    assert out.dtype == torch.float32
    want = simclr_torch.simclr_loss(za.to(half).float(), zb.to(half).float(), temperature=0.1)
    assert float(out) == float(want)
    out.backward()
    assert a.grad.dtype == half and b.grad.dtype == half
    assert not torch.isnan(a.grad).any() and not torch.isnan(b.grad).any()
    a32 = za.to(half).float().requires_grad_(True)
    b32 = zb.to(half).float().requires_grad_(True)
    simclr_torch.simclr_loss(a32, b32, temperature=0.1).backward()
    assert torch.equal(b.grad, b32.grad.to(half))
    if half == torch.bfloat16:  # float32's range: every gradient is finite
        assert torch.isfinite(a.grad).all()


def test_autocast_cpu_bfloat16():
    torch.manual_seed(0)
    enc = torch.nn.Linear(8, 4)
    x = torch.randn(6, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        za = enc(x)
        zb = enc(x + 0.1)
        assert za.dtype == torch.bfloat16
        out = simclr_torch.SimCLRLoss(temperature=0.1)(za, zb)
    assert out.dtype == torch.float32
    out.backward()
    assert torch.isfinite(enc.weight.grad).all() and enc.weight.grad.abs().sum() > 0


def test_non_cpu_tensor_is_a_clear_error():
    za = torch.empty(4, 3, device="meta")
    with pytest.raises(NotImplementedError,
                       match="za is on device meta; the loss takes a dense CPU or CUDA tensor"):
        simclr_torch.simclr_loss(za, za)
    from simclr_loss import _torch_cuda
    if torch.cuda.is_available() and not _torch_cuda.available():
        z = torch.randn(4, 3, device="cuda")
        with pytest.raises(NotImplementedError, match="no CUDA route"):
            simclr_torch.simclr_loss(z, z)


def test_input_errors():
    z = torch.randn(4, 3)
    with pytest.raises(TypeError, match="dtype"):
        simclr_torch.simclr_loss(z.long(), z.long())
    with pytest.raises(TypeError, match="same dtype"):
        simclr_torch.simclr_loss(z, z.double())
    with pytest.raises(ValueError, match="2-D"):
        simclr_torch.simclr_loss(z[0], z[0])
    with pytest.raises(ValueError):
        simclr_torch.simclr_loss(z, torch.randn(5, 3))
    with pytest.raises(ValueError):
        simclr_torch.simclr_loss(z, torch.randn(4, 2))
    bad = z.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        simclr_torch.simclr_loss(bad, z)
    with pytest.raises(ValueError, match="Incompatible shapes"):
        simclr_torch.simclr_loss(z, z, torch.ones(3))
    with pytest.raises(ValueError, match="Invalid Reduction Key"):
        simclr_torch.SimCLRLoss(reduction="mean")
    with pytest.raises(ValueError):
        simclr_torch.SimCLRLoss(temperature=0.0)
    with pytest.raises(ValueError, match="gradient_reduction"):
        simclr_torch.SimCLRLoss(gradient_reduction="avg")
    with pytest.raises(ValueError, match="global_batch_size"):
        simclr_torch.SimCLRLoss(global_batch_size="all")


def test_empty_batch():
    za = torch.empty(0, 5, requires_grad=True)
    zb = torch.empty(0, 5, requires_grad=True)
    out = simclr_torch.simclr_loss(za, zb)
    assert float(out) == 0.0
    out.backward()
    assert za.grad.shape == (0, 5)


def test_config_round_trip():
    crit = simclr_torch.SimCLRLoss()
    assert crit.get_config() == {"reduction": "auto", "name": None, "temperature": 0.05}
    assert list(crit.get_config()) == ["reduction", "name", "temperature"]
    crit2 = simclr_torch.SimCLRLoss(temperature=0.2, reduction="sum", name="x")
    back = simclr_torch.SimCLRLoss.from_config(crit2.get_config())
    assert back.get_config() == crit2.get_config()
    wrapped = simclr_torch.SimCLRLoss.from_config(
        {"class_name": "Similarity>SimCLRLoss", "config": {"reduction": "none", "name": None, "temperature": 0.5}})
    assert wrapped.get_config()["reduction"] == "none"
    with pytest.raises(TypeError, match="margin"):
        simclr_torch.SimCLRLoss.from_config({"temperature": 0.1, "margin": 0.001})
    assert back.gradient_reduction == "mean"


def test_module_matches_functional_and_is_a_module():
    za, zb = _inputs(5, 3, seed=2)
    crit = simclr_torch.SimCLRLoss(temperature=0.3, reduction="sum")
    assert isinstance(crit, torch.nn.Module)
    assert "temperature=0.3" in repr(crit)
    assert torch.equal(crit(za, zb), simclr_torch.simclr_loss(za, zb, temperature=0.3, reduction="sum"))


def test_local_call_ignores_gradient_reduction():
    za, zb = _inputs(5, 3, seed=4)
    grads = []
    for mode in ("sum", "mean"):
        a = za.clone().requires_grad_(True)
        simclr_torch.simclr_loss(a, zb, gradient_reduction=mode).backward()
        grads.append(a.grad)
    assert torch.equal(grads[0], grads[1])


# ---- argument messages: each names the argument and what it accepts (simclr_loss/_args.py) ----

@pytest.mark.parametrize("t,shown", [("abc", "str 'abc'"), (None, "NoneType None"),
                                     ([0.1], r"list \[0.1\]")])
def test_temperature_that_is_not_a_number(t, shown):
    with pytest.raises(TypeError, match="temperature must be a number > 0, got " + shown):
        simclr_torch.SimCLRLoss(temperature=t)
    with pytest.raises(TypeError, match="temperature must be a number > 0, got " + shown):
        simclr_torch.simclr_loss(torch.ones(2, 3), torch.ones(2, 3), temperature=t)


def test_reduction_none_is_the_invalid_reduction_key():
    # Keras's message for a key that is not one (nanobind's "incompatible function arguments"
    # before).
    with pytest.raises(ValueError, match="Invalid Reduction Key: None. Expected keys are"):
        simclr_torch.SimCLRLoss(reduction=None)
    with pytest.raises(ValueError, match="Invalid Reduction Key: None."):
        simclr_torch.simclr_loss(torch.ones(2, 3), torch.ones(2, 3), reduction=None)


@pytest.mark.parametrize("g,error,what", [
    (float("nan"), TypeError, 'global_batch_size must be None, "infer" or an integer >= 0, got float nan'),
    (float("inf"), TypeError, 'global_batch_size must be None, "infer" or an integer >= 0, got float inf'),
    ([1], TypeError, r'global_batch_size must be None, "infer" or an integer >= 0, got list \[1\]'),
    (2**70, ValueError, r"an integer in \[0, 2\*\*63 - 1\] \(int64\), got 1180591620717411303424"),
])
def test_global_batch_size_messages(g, error, what):
    with pytest.raises(error, match=what):
        simclr_torch.SimCLRLoss(global_batch_size=g)


def test_global_batch_size_of_an_integer_tensor():
    crit = simclr_torch.SimCLRLoss(global_batch_size=torch.tensor(4))
    za, zb = _inputs(2, 3)
    assert float(crit(za, zb)) == float(simclr_torch.SimCLRLoss(reduction="sum")(za, zb)) / 4


def test_gradient_reduction_that_is_not_a_string():
    with pytest.raises(TypeError, match='gradient_reduction must be "sum" or "mean", got NoneType'):
        simclr_torch.SimCLRLoss(gradient_reduction=None)


def test_from_config_with_a_nan_temperature():
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got nan"):
        simclr_torch.SimCLRLoss.from_config({"temperature": float("nan")})


def test_not_a_tensor():
    # The dtype was read before the check (an AttributeError).
    z = torch.ones(2, 3)
    with pytest.raises(TypeError, match=r"simclr_loss.torch: za must be a dense CPU or CUDA tensor \[n, d\] "
                                        r"of float32, float64, float16 or bfloat16, got list \[\["):
        simclr_torch.simclr_loss(z.tolist(), z)
    with pytest.raises(TypeError, match="simclr_loss.torch: zb must be a dense CPU or CUDA tensor"):
        simclr_torch.simclr_loss(z, z.numpy())


def test_tensors_on_two_devices():
    with pytest.raises(ValueError, match="simclr_loss.torch: za is on cpu but zb on meta; za and zb must be "
                                         "on one device"):
        simclr_torch.simclr_loss(torch.ones(2, 3), torch.empty(2, 3, device="meta"))


def test_sparse_tensor():
    z = torch.eye(4, 3)
    with pytest.raises(TypeError, match=r"simclr_loss.torch: za is a torch.sparse_coo tensor; the loss takes "
                                        r"a dense CPU or CUDA tensor .*za.to_dense\(\)"):
        simclr_torch.simclr_loss(z.to_sparse(), z)


def test_sample_weight_that_is_not_numbers():
    z = torch.ones(2, 3)
    with pytest.raises(TypeError, match="sample_weight must be None, a number or an array of "
                                        "numbers .*got str 'abc'"):
        simclr_torch.simclr_loss(z, z, "abc")


def test_zero_dimensional_embeddings():
    # [n, 0]: the library's all-zero rows, 2 ln(2n - 1); the binding passes the empty tensors on.
    za = torch.zeros(3, 0, requires_grad=True)
    zb = torch.zeros(3, 0, requires_grad=True)
    out = simclr_torch.simclr_loss(za, zb, reduction="none")
    assert torch.allclose(out, torch.full((3,), 2 * math.log(5)))
    out.sum().backward()
    assert za.grad.shape == (3, 0) and zb.grad.shape == (3, 0)


def test_the_torch_modules_do_not_import_each_other():
    # simclr_loss.torch imports simclr_loss._torch_cuda (the CUDA route), never the other way round.
    import ast
    import inspect
    from simclr_loss import _torch_cuda

    tree = ast.parse(inspect.getsource(_torch_cuda))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.add(("." * node.level) + (node.module or ""))
            names.update(("." * node.level) + a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    assert not {"simclr_loss.torch", ".torch"} & names, names


@pytest.mark.parametrize("shape,message", [
    ((3,), r"Incompatible shapes: \[4\] vs. \[3\]"),
    ((4, 2), r"Can not squeeze dim\[1\], expected a dimension of 1, got 2"),
    ((4, 1, 1), "sample_weight of rank 3 is not supported for a \\[4\\] loss"),
])
def test_cuda_route_weight_shapes_are_the_librarys_rules(shape, message):
    # The CUDA route's sample weight is shaped on the host side by the library's own rules (the same
    # messages as every other front end); CPU tensors stand in for device ones here.
    from simclr_loss import _torch_cuda
    assert _torch_cuda._device_weight(torch.ones(4, 1), 4, "cpu").shape == (4,)
    with pytest.raises(ValueError, match=message):
        _torch_cuda._device_weight(torch.ones(shape), 4, "cpu")


def test_copies_pickles_and_saved_models_keep_the_loss(tmp_path):
    import copy
    import pickle

    crit = simclr_torch.SimCLRLoss(temperature=0.2, reduction="sum", name="l",
                                   gradient_reduction="sum")
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    model.loss = crit
    za, zb = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    want = crit(za, zb)
    for other in (copy.deepcopy(crit), pickle.loads(pickle.dumps(crit)), copy.copy(crit),
                  copy.deepcopy(model).loss):
        assert other.get_config() == crit.get_config()
        assert other.gradient_reduction == "sum"
        assert torch.equal(other(za, zb), want)
    torch.save(model, tmp_path / "m.pt")
    kwargs = {"weights_only": False} if "weights_only" in torch.load.__code__.co_varnames else {}
    loaded = torch.load(tmp_path / "m.pt", **kwargs)
    assert torch.equal(loaded.loss(za, zb), want)


def test_a_second_order_gradient_is_refused_not_wrong():
    # A gradient penalty through a Linear layer: the second backward must fail loudly (it used to
    # give a silently wrong value).
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 4).double()
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 5, dtype=torch.float64)
    loss = simclr_torch.simclr_loss(layer(x), layer(y), temperature=0.2, reduction="sum")
    (grad_x,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="second-order gradients through the SimCLR loss"):
        grad_x.pow(2).sum().backward()


def test_a_plain_tensor_temperature_is_a_number():
    za, zb = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.equal(simclr_torch.simclr_loss(za, zb, temperature=torch.tensor(0.1)),
                       simclr_torch.simclr_loss(za, zb, temperature=0.1))
