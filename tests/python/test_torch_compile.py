"""simclr_loss.torch under torch.compile (torch >= 2.4): the loss is a pair of torch.library custom ops
while Dynamo traces, so fullgraph=True holds and the compiled step equals the eager one. The eager
route (tests/python/test_torch.py) is the reference; older torch skips this file."""

import copy

import numpy as np
import pytest
import torch

import simclr_loss.torch as st
from simclr_loss import _args

pytestmark = pytest.mark.skipif(not st._HAS_OPS, reason="torch.library.custom_op needs torch >= 2.4 "
                                f"(this is torch {torch.__version__})")

NONE, SUM = _args.GLOBAL_BATCH_NONE, _args.GRADIENT_REDUCTIONS["sum"]


def _views(n=12, d=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype))


def _loss(za, zb, w=None, t=0.2, reduction="sum", with_grad=True):
    return torch.ops.simclr_loss.loss(za, zb, w, t, reduction, NONE, SUM, "", with_grad)[0]


@pytest.mark.parametrize("reduction", ["sum", "none", "auto"])
@pytest.mark.parametrize("weighted", [False, True])
def test_opcheck(reduction, weighted):
    # The fake implementations, the schema and the autograd registration, as torch checks them.
    za, zb = _views()
    za.requires_grad_(True)
    zb.requires_grad_(True)
    w = torch.linspace(0.5, 2.0, za.shape[0], dtype=torch.float64) if weighted else None
    torch.library.opcheck(torch.ops.simclr_loss.loss.default,
                          (za, zb, w, 0.2, reduction, NONE, SUM, "", True))
    up = torch.linspace(-1.0, 1.0, za.shape[0], dtype=torch.float64)
    torch.library.opcheck(torch.ops.simclr_loss.loss_backward.default,
                          (za.detach(), zb.detach(), w, 0.2, reduction, NONE, SUM, "",
                           up if reduction == "none" else up.sum()))


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_op_gradcheck(reduction):
    za, zb = _views(n=6, d=4)
    za.requires_grad_(True)
    zb.requires_grad_(True)
    w = torch.linspace(0.5, 2.0, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: _loss(a, b, w, 0.3, reduction), (za, zb))


def _step_models(seed=0, d_in=7, d_out=5, dtype=torch.float32):
    torch.manual_seed(seed)
    enc = torch.nn.Sequential(torch.nn.Linear(d_in, 16), torch.nn.ReLU(), torch.nn.Linear(16, d_out))
    return enc.to(dtype), copy.deepcopy(enc).to(dtype)


def _forward(enc, crit, xa, xb, w):
    loss = crit(enc(xa), enc(xb), sample_weight=w)
    if loss.dim():
        loss = (loss * torch.linspace(0.5, 1.5, loss.shape[0])).sum()
    return loss


@pytest.mark.parametrize("reduction", ["auto", "sum", "none"])
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_training_step_equals_eager(reduction, backend):
    if backend == "inductor" and reduction != "auto":
        pytest.skip("one inductor compile is enough (a C++ compile each)")
    torch._dynamo.reset()
    eager, compiled = _step_models()
    crit = st.SimCLRLoss(temperature=0.1, reduction=reduction)
    g = torch.Generator().manual_seed(1)
    xa, xb = torch.randn(10, 7, generator=g), torch.randn(10, 7, generator=g)
    w = torch.rand(10, generator=g) + 0.5
    want = _forward(eager, crit, xa, xb, w)
    want.backward()
    # The forward (encoder and loss) is one graph; AOTAutograd compiles its backward, which holds
    # the loss's registered autograd formula.
    forward = torch.compile(lambda a, b, ww: _forward(compiled, crit, a, b, ww), fullgraph=True,
                            backend=backend)
    got = forward(xa, xb, w)
    got.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for p, q in zip(compiled.parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)


def test_compiled_functional_form_and_no_grad():
    torch._dynamo.reset()
    za, zb = _views(dtype=torch.float32)
    f = torch.compile(lambda a, b: st.simclr_loss(a, b, temperature=0.3, reduction="none"),
                      fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(za, zb), st.simclr_loss(za, zb, temperature=0.3, reduction="none"))
    with torch.no_grad():
        torch.testing.assert_close(f(za, zb), st.simclr_loss(za, zb, temperature=0.3,
                                                             reduction="none"))


def test_compiled_bfloat16_gives_float32_loss_and_bfloat16_grads():
    torch._dynamo.reset()
    za, zb = _views(dtype=torch.bfloat16)
    crit = st.SimCLRLoss(temperature=0.2)
    a1, b1 = za.clone().requires_grad_(True), zb.clone().requires_grad_(True)
    a2, b2 = za.clone().requires_grad_(True), zb.clone().requires_grad_(True)
    want = crit(a1, b1)
    want.backward()
    got = torch.compile(crit, fullgraph=True, backend="aot_eager")(a2, b2)
    got.backward()
    assert got.dtype == torch.float32 and a2.grad.dtype == torch.bfloat16
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(a2.grad, a1.grad)
    torch.testing.assert_close(b2.grad, b1.grad)


def test_compiled_input_error_is_the_eager_error():
    torch._dynamo.reset()
    crit = torch.compile(st.SimCLRLoss(), fullgraph=True, backend="aot_eager")
    za, zb = _views(dtype=torch.float32)
    bad = za.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError) as compiled:
        crit(bad, zb)
    with pytest.raises(ValueError) as eager:
        st.SimCLRLoss()(bad, zb)
    assert str(compiled.value) == str(eager.value)
    with pytest.raises(ValueError, match="same shape"):
        crit(za, zb[:5])


def test_compiled_step_recompiles_for_a_new_batch_size():
    torch._dynamo.reset()
    crit = st.SimCLRLoss(temperature=0.1)
    f = torch.compile(crit, fullgraph=True, backend="aot_eager", dynamic=True)
    for n in (4, 9, 16):
        za, zb = _views(n=n, dtype=torch.float32, seed=n)
        torch.testing.assert_close(f(za, zb), crit(za, zb))


def _gloo_worker(rank, size, path, queue):
    import torch.distributed as dist
    try:
        dist.init_process_group("gloo", init_method="file://" + path, rank=rank, world_size=size)
        g = torch.Generator().manual_seed(rank)
        n = 2 + 3 * rank  # unequal rows
        za, zb = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)
        world = dist.group.WORLD
        for reduction in ("auto", "none"):
            crit = st.SimCLRLoss(temperature=0.2, reduction=reduction, process_group=world,
                                 global_batch_size="infer")
            forms = {"module": crit,
                     "function": lambda a, b: st.simclr_loss(a, b, temperature=0.2,
                                                             reduction=reduction,
                                                             process_group=world,
                                                             global_batch_size="infer")}
            a1, b1 = za.clone().requires_grad_(), zb.clone().requires_grad_()
            want = crit(a1, b1)
            want.sum().backward()
            for form, f in forms.items():
                a2, b2 = za.clone().requires_grad_(), zb.clone().requires_grad_()
                got = torch.compile(f, fullgraph=True, backend="aot_eager")(a2, b2)
                got.sum().backward()
                torch.testing.assert_close(got, want)
                torch.testing.assert_close(a2.grad, a1.grad)
                torch.testing.assert_close(b2.grad, b1.grad)
        # An input error on the last rank only: every rank raises it, naming that rank.
        bad = za.clone()
        if rank == size - 1:
            bad[0, 0] = float("nan")
        compiled = torch.compile(st.SimCLRLoss(process_group=world, global_batch_size="infer"),
                                 fullgraph=True, backend="aot_eager")
        try:
            compiled(bad, zb)
            queue.put((rank, "no error"))
        except ValueError as exc:
            queue.put((rank, str(exc)))
        dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        queue.put((rank, "failed: %s: %s" % (type(exc).__name__, exc)))


def test_compiled_over_a_gloo_group_equals_eager(spawn_ranks):
    size = 2
    got = spawn_ranks(_gloo_worker, size)
    for rank, message in got.items():
        assert "za has NaN at row 0, column 0" in message and "(rank %d)" % (size - 1) in message, \
            message
    assert got[0] == got[1]


def test_second_order_through_a_compiled_step_is_refused():
    # Never a silent wrong value: AOTAutograd refuses a double backward through the compiled graph.
    torch._dynamo.reset()
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(6, 4)
    crit = st.SimCLRLoss(temperature=0.2)
    loss = torch.compile(lambda a, b: crit(lin(a), lin(b)), fullgraph=True,
                         backend="aot_eager")(x, x + 0.1)
    (g,) = torch.autograd.grad(loss, lin.weight, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.norm().backward()


def test_compiled_call_refuses_extra_negatives():
    # The custom ops carry no extra negatives: a call with negatives= while torch.compile traces is
    # refused with the CPU route's NotImplementedError, never compiled without them. (Here, not in
    # test_negatives.py: torch.compile runs in a process of its own in the test scripts.)
    torch._dynamo.reset()
    za, zb = _views(n=6, d=4)
    bank = torch.randn(5, 4, dtype=torch.float64)
    crit = st.SimCLRLoss(temperature=0.2)
    for form in (lambda a, b, k: crit(a, b, negatives=k),
                 lambda a, b, k: st.simclr_loss(a, b, temperature=0.2, negatives=k)):
        f = torch.compile(form, backend="eager", fullgraph=True)
        with pytest.raises(Exception, match="extra negatives .negatives=. are supported on the "
                                            "CPU route only") as info:
            f(za, zb, bank)
        # Dynamo may wrap the error it traced; it is the refusal's NotImplementedError.
        assert isinstance(info.value, NotImplementedError) or \
            "NotImplementedError" in str(info.value), repr(info.value)
    # Eager, the same call works.
    assert torch.isfinite(crit(za, zb, negatives=bank))
