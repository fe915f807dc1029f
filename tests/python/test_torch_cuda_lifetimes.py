"""Buffer lifetimes and host synchronisations of simclr_loss.torch's CUDA route
(simclr_loss/_torch_cuda.py) on a CPU machine: the route's autograd function runs on CPU tensors
over a stand-in for the ``simclr_loss._device`` extension (the library's device calls need a GPU;
scripts/device_check.sh runs them there). What is checked is the route's own bookkeeping:

- the forward's workspace is two buffers: the part the backward reads, kept until the backward
  has run, and a scratch (the logits tile), freed when the forward returns;
- after the backward nothing of the step is alive, the module's state included (``last_status()``
  is a 4-value copy, not a view of a workspace), unless the graph is retained;
- the upstream's verdict the backward writes into the workspace reaches ``last_status()``;
- a gather of the agreement records reads the result back with one ``.cpu()``, whatever the
  group's size (one host synchronisation on a CUDA-only group).
"""

import ctypes
import types
import weakref

import pytest

torch = pytest.importorskip("torch")

from simclr_loss import _args  # noqa: E402
from simclr_loss import _torch_cuda as tc  # noqa: E402

FORWARD_BYTES, SAVED_BYTES, BACKWARD_BYTES = 1 << 16, 3 << 10, 5 << 12
UPSTREAM_VERDICT = 7  # what the stand-in's backward records in status slot 3


class _Saved:
    def __init__(self, workspace):
        self.workspace = workspace  # an address, as the library's saved state holds


class _Loss:
    """The stand-in for simclr_loss._device.DeviceLoss: checks the buffers it is given, writes the
    status array as the library does (all bits set: clean), and keeps addresses only."""

    calls = []

    def __init__(self, temperature, reduction):
        self.reduction = reduction

    def forward(self, za, zb, rows, dim, stride_a, stride_b, dtype, device, stream, workspace,
                workspace_size, values, per_example, objective, global_batch_size, tile_bytes,
                symmetric, async_, comm, weight, weight_size, scratch=0, scratch_size=0):
        _Loss.calls.append(("forward", workspace_size, scratch, scratch_size))
        ctypes.memset(workspace, 0xFF, 32)
        return _Saved(workspace)

    def backward(self, saved, upstream, upstream_per_example, grad_a, grad_b, rows, dim, dtype,
                 device, stream, workspace, workspace_size, async_):
        _Loss.calls.append(("backward", workspace_size))
        if upstream_per_example:
            ctypes.c_int64.from_address(saved.workspace + 24).value = UPSTREAM_VERDICT


_FAKE = types.SimpleNamespace(
    FLOAT32=0, BFLOAT16=1, FLOAT16=2, STATUS_SLOTS=4, DeviceLoss=_Loss,
    workspace_size=lambda *args: (FORWARD_BYTES, BACKWARD_BYTES),
    saved_size=lambda *args: SAVED_BYTES)


@pytest.fixture
def route(monkeypatch):
    """The route over the stand-in, its workspaces recorded as (bytes, weakref)."""
    buffers = []
    make = tc._device_bytes

    def device_bytes(nbytes, device):
        t = make(nbytes, device)
        buffers.append((t.numel(), weakref.ref(t)))
        return t

    monkeypatch.setattr(tc, "_device_module", lambda: _FAKE)
    monkeypatch.setattr(tc, "_device_bytes", device_bytes)
    monkeypatch.setattr(torch.cuda, "current_stream",
                        lambda device=None: types.SimpleNamespace(cuda_stream=0))
    monkeypatch.setattr(tc, "_last_status", None)
    _Loss.calls.clear()
    return buffers


def _alive(buffers, nbytes):
    return sum(1 for size, ref in buffers if size == nbytes and ref() is not None)


def _step(reduction, n=6, d=4):
    za = torch.randn(n, d, requires_grad=True)
    zb = torch.randn(n, d, requires_grad=True)
    values, _ = tc._make_function().apply(za, zb, None, 0.1, reduction, _args.GLOBAL_BATCH_NONE,
                                          True, 0, None, 0, 1.0)
    return za, values


def test_the_forward_keeps_only_what_the_backward_reads_and_the_backward_frees_it(route):
    za, values = _step("sum")
    assert _Loss.calls == [("forward", SAVED_BYTES, _Loss.calls[0][2], FORWARD_BYTES - SAVED_BYTES)]
    assert _Loss.calls[0][2] != 0, "the forward got no scratch"
    assert _alive(route, SAVED_BYTES) == 1, "the saved part must live until the backward"
    assert _alive(route, FORWARD_BYTES - SAVED_BYTES) == 0, "the forward's scratch outlived it"
    status = tc.last_status()
    assert status.dtype == torch.int64 and status.shape == (4,)
    storage = status.untyped_storage() if hasattr(status, "untyped_storage") else status.storage()
    assert status._base is None and storage.nbytes() == 32, "a view of a workspace"
    assert status.tolist() == [-1] * 4
    values.backward()
    assert _Loss.calls[-1] == ("backward", BACKWARD_BYTES)
    assert za.grad is not None and za.grad.shape == za.shape
    assert _alive(route, SAVED_BYTES) == 0, "the saved workspace outlived the backward"
    assert _alive(route, BACKWARD_BYTES) == 0, "the backward's scratch outlived it"
    assert tc.last_status().tolist() == [-1] * 4
    # The graph itself (values and its grad_fn) is still alive here, and holds no workspace.
    assert values.grad_fn is not None


def test_a_retained_graph_keeps_the_saved_part_until_its_last_backward(route):
    _, values = _step("sum")
    values.backward(retain_graph=True)
    assert _alive(route, SAVED_BYTES) == 1
    values.backward()
    assert _alive(route, SAVED_BYTES) == 0


def test_the_upstream_verdict_reaches_last_status_after_the_workspace_is_gone(route):
    _, values = _step("none")
    values.backward(torch.ones_like(values))
    assert _alive(route, SAVED_BYTES) == 0
    assert tc.last_status().tolist() == [-1, -1, -1, UPSTREAM_VERDICT]


def test_no_module_state_keeps_a_step_alive(route):
    for _ in range(3):
        _, values = _step("sum")
        values.backward()
        del values
    assert _alive(route, SAVED_BYTES) == 0
    assert sum(1 for _, ref in route if ref() is not None) == 0


def test_a_record_gather_reads_back_once_whatever_the_group_size(monkeypatch):
    size, k = 3, 512
    gathers, reads = [], []

    def all_gather(parts, tensor, group=None):
        gathers.append(len(parts))
        for r, p in enumerate(parts):
            p.copy_((tensor.to(torch.int64) + r) % 256)

    cpu = torch.Tensor.cpu

    def counted_cpu(self, *args, **kwargs):
        reads.append(self.numel())
        return cpu(self, *args, **kwargs)

    monkeypatch.setattr(torch.distributed, "all_gather", all_gather)
    monkeypatch.setattr(torch.Tensor, "cpu", counted_cpu)
    mine = torch.arange(k, dtype=torch.int64).remainder(251).to(torch.uint8)
    got = tc._host_gather(mine, None, size, torch.device("cpu"))
    assert gathers == [size], "one collective"
    assert reads == [size * k], "one read-back (one host synchronisation on a CUDA-only group)"
    assert got == [bytes(((mine.to(torch.int64) + r) % 256).to(torch.uint8).tolist())
                   for r in range(size)]
    assert tc._host_gather(torch.empty(0, dtype=torch.uint8), None, size,
                           torch.device("cpu")) == [b""] * size


def test_a_record_goes_to_the_device_without_waiting_for_the_stream(monkeypatch):
    # torch's blocking copy to a CUDA device synchronises the stream; the route copies from pinned
    # memory with non_blocking instead, leaving the gather's .cpu() its one synchronisation.
    calls = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append("pin") or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: calls.append((a, k)) or self)
    cuda = torch.device("cuda", 0)
    tc._to_device(torch.zeros(4, dtype=torch.uint8), cuda)
    assert calls == ["pin", ((cuda,), {"non_blocking": True})]
    calls.clear()
    tc._to_device(torch.zeros(4, dtype=torch.uint8), torch.device("cpu"))
    assert calls == [((torch.device("cpu"),), {})]
