"""A learnable temperature in simclr_loss.torch: a temperature tensor that requires grad gets dJ/dT
from the library (docs/math.md section 4.6). Checked by torch.autograd.gradcheck in float64 (central
differences of the library's own forward), against an independent autograd formulation of the loss
(tests/python/torch_reference.py) for every reduction with sample weights and a zero row, through the
module's per-call temperature, and for what is refused."""

import os
import sys

import pytest

torch = pytest.importorskip("torch")
simclr_torch = pytest.importorskip("simclr_loss.torch")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402

REDUCTIONS = ["auto", "none", "sum", "sum_over_batch_size"]


def _views(n=6, d=4, zero_row=True):
    g = torch.Generator().manual_seed(5)
    za = torch.randn(n, d, generator=g, dtype=torch.float64)
    zb = za + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    if zero_row:
        za[2] = 0
    return za, zb


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_gradcheck_with_the_temperature(reduction, weighted):
    w = torch.tensor([1.0, 0.5, 2.0, 0.0, 1.5, 3.0], dtype=torch.float64) if weighted else None
    fn = lambda a, b, temp: simclr_torch.simclr_loss(a, b, w, temperature=temp,  # noqa: E731
                                                       reduction=reduction)
    # Every input at once (no zero row: a step of eps on a zero row leaves the normalisation's
    # clamp, whose gradient is 1e6 times larger).
    za, zb = _views(zero_row=False)
    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (za.requires_grad_(True), zb.requires_grad_(True), t),
                                    eps=1e-6, atol=1e-8, rtol=1e-7)
    # The temperature alone, with a zero row in za.
    za, zb = _views(zero_row=True)
    assert torch.autograd.gradcheck(fn, (za, zb, t), eps=1e-6, atol=1e-8, rtol=1e-7)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("temperature", [0.05, 0.5, 2e-3])
def test_matches_autograd_of_an_independent_formulation(reduction, temperature):
    za, zb = _views(8, 5)
    w = torch.linspace(0.5, 2.0, 8, dtype=torch.float64)
    up = torch.linspace(-1.0, 1.0, 8, dtype=torch.float64)

    def grads(loss_fn):
        t = torch.tensor(temperature, dtype=torch.float64, requires_grad=True)
        value = loss_fn(t)
        (value * up).sum().backward() if reduction == "none" else (2.5 * value).backward()
        return value.detach(), t.grad

    got_v, got_t = grads(lambda t: simclr_torch.simclr_loss(za, zb, w, temperature=t,
                                                            reduction=reduction))
    want_v, want_t = grads(lambda t: ref.loss(za, zb, w, t, reduction))
    assert torch.allclose(got_v, want_v, rtol=1e-11, atol=1e-11 * float(want_v.abs().max()))
    assert abs(got_t.item() - want_t.item()) <= 1e-9 * abs(want_t.item()), (got_t, want_t)


def test_the_module_takes_a_per_call_temperature():
    za, zb = _views(5, 3, zero_row=False)
    crit = simclr_torch.SimCLRLoss(temperature=0.9, reduction="sum")
    log_scale = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))  # OpenCLIP's logit_scale
    loss = crit(za, zb, temperature=1 / log_scale.exp())
    loss.backward()
    t = torch.tensor(float(1 / torch.tensor(2.0, dtype=torch.float64).exp()), dtype=torch.float64,
                     requires_grad=True)
    want = ref.loss(za, zb, None, t, "sum")
    want.backward()
    assert torch.allclose(loss.detach(), want.detach(), rtol=1e-12)
    # d loss / d log_scale = dJ/dT * dT/dlog_scale, dT/dlog_scale = -T.
    assert abs(log_scale.grad.item() - (-t.item() * t.grad.item())) <= 1e-10 * abs(t.grad.item())
    assert crit.get_config()["temperature"] == 0.9  # a call's temperature leaves the config alone
    assert torch.equal(crit(za, zb, temperature=0.25),
                       simclr_torch.SimCLRLoss(temperature=0.25, reduction="sum")(za, zb))


def test_float32_and_the_embeddings_gradients_unchanged():
    za, zb = _views(6, 4)
    za, zb = za.float().requires_grad_(True), zb.float().requires_grad_(True)
    t = torch.tensor(0.2, requires_grad=True)
    loss = simclr_torch.simclr_loss(za, zb, temperature=t, reduction="sum")
    loss.backward()
    assert t.grad.dtype == torch.float32 and t.grad.shape == ()
    ga, gb = za.grad.clone(), zb.grad.clone()
    za.grad = zb.grad = None
    simclr_torch.simclr_loss(za, zb, temperature=0.2, reduction="sum").backward()
    assert torch.equal(za.grad, ga) and torch.equal(zb.grad, gb)
    t64 = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    ref.loss(za.detach().double(), zb.detach().double(), None, t64, "sum").backward()
    assert abs(t.grad.item() - t64.grad.item()) <= 1e-4 * abs(t64.grad.item())


def test_bad_temperatures_are_the_librarys_errors():
    za, zb = _views(3, 2, zero_row=False)
    for bad, kind, text in ((0.0, ValueError, "temperature must be a finite number > 0, got 0"),
                            (-1.0, ValueError, "temperature must be a finite number > 0, got -1"),
                            (float("nan"), ValueError, "finite number > 0, got nan")):
        with pytest.raises(kind, match=text):
            simclr_torch.simclr_loss(za, zb, temperature=torch.tensor(bad, requires_grad=True))
    with pytest.raises(TypeError, match="temperature must be a number > 0"):
        simclr_torch.simclr_loss(za, zb, temperature=torch.tensor([0.1, 0.2], requires_grad=True))


def test_second_order_through_the_temperature_is_refused():
    za, zb = _views(4, 3, zero_row=False)
    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    (gt,) = torch.autograd.grad(simclr_torch.simclr_loss(za, zb, temperature=t), t,
                                create_graph=True)
    with pytest.raises(RuntimeError, match="second-order gradients"):
        gt.backward()
