"""The PyTorch CUDA route of simclr.torch: CUDA tensors go to the library's device engine.

Not imported by ``simclr`` itself, and safe to import without torch, without CUDA and without the
``simclr._device`` extension (built only with ``SIMCLR_WITH_CUDA=ON``; docs/gpu.md): what is
missing is reported when a call is made. ``simclr.torch`` dispatches CUDA tensors here::

    if za.is_cuda: return _torch_cuda.simclr_loss_cuda(za, zb, temperature, reduction, ...)

What it does (docs/gpu.md, "The PyTorch CUDA route"):

- the work is enqueued on ``torch.cuda.current_stream()`` and nothing synchronises the host: the
  library runs in its asynchronous mode, and NaN/Inf inputs are recorded in the device status
  array (``last_status()``) instead of raising;
- the workspace comes from PyTorch's caching allocator (``torch.empty(bytes, dtype=torch.uint8)``)
  in the size the library reports, so the library allocates nothing; the forward's workspace holds
  the state the backward needs and is kept by autograd;
- float32, bfloat16 and float16 inputs; logits, log-sum-exp and gradient sums are float32 inside;
- local calls only for now: a distributed CUDA call needs the device communicator in the C API
  (docs/gpu.md, "Not done yet"), and raises NotImplementedError.
"""

from __future__ import annotations

import importlib

__all__ = ["available", "simclr_loss_cuda", "last_status", "workspace_bytes"]

_REDUCTIONS = {"auto": 0, "none": 1, "sum": 2, "sum_over_batch_size": 3}
_last_status = None  # the status tensor of the latest forward (a view of its workspace)


def _device_module():
    try:
        return importlib.import_module("simclr._device")
    except ImportError as exc:  # pragma: no cover - depends on the build
        raise RuntimeError(
            "simclr was built without the GPU path (simclr._device is missing); rebuild with "
            "`pip install . -Ccmake.define.SIMCLR_WITH_CUDA=ON` on a machine with the CUDA "
            "toolkit (docs/gpu.md)"
        ) from exc


def available() -> bool:
    """Whether the CUDA route can run here (torch with CUDA and simclr._device)."""
    try:
        import torch

        importlib.import_module("simclr._device")
        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def _dtype_code(dev, tensor):
    import torch

    codes = {torch.float32: dev.FLOAT32, torch.bfloat16: dev.BFLOAT16, torch.float16: dev.FLOAT16}
    if tensor.dtype not in codes:
        raise TypeError(
            f"the CUDA route takes float32, bfloat16 or float16 tensors, not {tensor.dtype}"
        )
    return codes[tensor.dtype]


def _row_major(t):
    """A view the library can read: rows of contiguous elements at some row stride."""
    if t.dim() != 2:
        raise ValueError(f"embeddings must be [n, d]; got shape {tuple(t.shape)}")
    if t.stride(1) != 1 or (t.shape[0] > 1 and t.stride(0) < t.shape[1]):
        t = t.contiguous()
    return t, (t.stride(0) if t.shape[0] > 0 else t.shape[1])


def workspace_bytes(rows, dim, dtype, tile_bytes=0, symmetric=True):
    """(forward_bytes, backward_bytes) the library needs for a local call."""
    dev = _device_module()
    import torch

    probe = torch.empty(0, dtype=dtype)
    return dev.workspace_size(rows, rows, dim, _dtype_code(dev, probe), tile_bytes, symmetric)


def last_status():
    """The device status array of the latest forward: int64 [4] on the device, each the flat index
    of the first NaN/Inf in za, zb, the sample weight and the upstream gradient, or -1 (all bits
    set) when clean. Reading it (``.cpu()``) synchronises; do it when the step allows."""
    return _last_status


def _make_function():
    import torch

    class _SimCLRCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, za, zb, temperature, reduction, global_batch_size, symmetric, tile_bytes):
            global _last_status
            dev = _device_module()
            if za.shape != zb.shape:
                raise ValueError(
                    f"za and zb must have the same shape: {tuple(za.shape)} vs. {tuple(zb.shape)}"
                )
            if za.dtype != zb.dtype:
                raise TypeError(f"za and zb must have the same dtype: {za.dtype} vs. {zb.dtype}")
            if za.device != zb.device:
                raise ValueError(f"za is on {za.device} but zb on {zb.device}")
            code = _dtype_code(dev, za)
            za, stride_a = _row_major(za)
            zb, stride_b = _row_major(zb)
            n, d = za.shape
            device = za.device
            stream = torch.cuda.current_stream(device)
            fwd_bytes, _ = dev.workspace_size(n, n, d, code, tile_bytes, symmetric)
            # The caching allocator's blocks are 512-byte aligned; the library needs 256.
            workspace = torch.empty(max(fwd_bytes, 1), dtype=torch.uint8, device=device)
            red = _REDUCTIONS[reduction]
            values = torch.empty((n,) if red == 1 else (), dtype=za.dtype, device=device)
            per_example = torch.empty((n,), dtype=za.dtype, device=device)
            objective = torch.empty((), dtype=torch.float32, device=device)
            loss = dev.DeviceLoss(float(temperature), red)
            gbs = dev.GLOBAL_BATCH_NONE if global_batch_size is None else int(global_batch_size)
            saved = loss.forward(
                za.data_ptr(), zb.data_ptr(), n, d, stride_a, stride_b, code, device.index,
                stream.cuda_stream, workspace.data_ptr(), workspace.numel(), values.data_ptr(),
                per_example.data_ptr(), objective.data_ptr(), gbs, tile_bytes, symmetric, True,
            )
            _last_status = workspace[: 8 * dev.STATUS_SLOTS].view(torch.int64)
            # Autograd keeps the workspace (the saved state) and the C++ objects for the backward.
            ctx.loss, ctx.saved, ctx.workspace = loss, saved, workspace
            ctx.shape, ctx.code, ctx.reduction = (n, d), code, red
            ctx.tile_bytes, ctx.symmetric = tile_bytes, symmetric
            ctx.mark_non_differentiable(per_example)
            return values, per_example

        @staticmethod
        def backward(ctx, grad_values, _grad_per_example):
            dev = _device_module()
            n, d = ctx.shape
            device = ctx.workspace.device
            stream = torch.cuda.current_stream(device)
            _, bwd_bytes = dev.workspace_size(n, n, d, ctx.code, ctx.tile_bytes, ctx.symmetric)
            scratch = torch.empty(max(bwd_bytes, 1), dtype=torch.uint8, device=device)
            if grad_values is None:
                return None, None, None, None, None, None, None
            grad_a = torch.empty((n, d), dtype=_torch_dtype(ctx.code, dev), device=device)
            grad_b = torch.empty_like(grad_a)
            if ctx.reduction == 1:
                # Per-example upstream, float32 on the device: no host read.
                up = grad_values.to(torch.float32).contiguous()
                ctx.loss.backward(
                    ctx.saved, 0.0, up.data_ptr(), grad_a.data_ptr(), grad_b.data_ptr(), n, d,
                    ctx.code, device.index, stream.cuda_stream, scratch.data_ptr(),
                    scratch.numel(), True,
                )
            else:
                # The loss is linear in a scalar upstream g: the gradient for g = 1, scaled on the
                # device (reading g on the host would synchronise).
                ctx.loss.backward(
                    ctx.saved, 1.0, 0, grad_a.data_ptr(), grad_b.data_ptr(), n, d, ctx.code,
                    device.index, stream.cuda_stream, scratch.data_ptr(), scratch.numel(), True,
                )
                g = grad_values.reshape(()).to(grad_a.dtype)
                grad_a = grad_a * g
                grad_b = grad_b * g
            return grad_a, grad_b, None, None, None, None, None

    return _SimCLRCuda


def _torch_dtype(code, dev):
    import torch

    return {dev.FLOAT32: torch.float32, dev.BFLOAT16: torch.bfloat16, dev.FLOAT16: torch.float16}[
        code
    ]


_function = None


def simclr_loss_cuda(
    za,
    zb,
    temperature=0.05,
    reduction="auto",
    global_batch_size=None,
    process_group=None,
    symmetric=True,
    tile_bytes=0,
    return_per_example=False,
):
    """SimCLR loss of CUDA tensors za, zb ([n, d], one dtype, one device), differentiable.

    Returns the loss as simclr.torch does (a scalar, or [n] for reduction 'none'), plus the
    unweighted per-example loss when ``return_per_example``. A distributed call (a process group of
    more than one rank) is not available on this route yet."""
    global _function
    import torch

    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {sorted(_REDUCTIONS)}; got {reduction!r}")
    if process_group is not None:
        raise NotImplementedError(
            "simclr: the distributed CUDA route needs the device communicator in the C API, which "
            "is not there yet; move the embeddings to the CPU route or call per rank without a "
            "process group (docs/gpu.md)"
        )
    if not (za.is_cuda and zb.is_cuda):
        raise ValueError("the CUDA route takes CUDA tensors; CPU tensors go to simclr.torch's CPU route")
    if _function is None:
        _function = _make_function()
    with torch.cuda.device(za.device):
        values, per_example = _function.apply(
            za, zb, temperature, reduction, global_batch_size, symmetric, tile_bytes
        )
    return (values, per_example) if return_per_example else values
