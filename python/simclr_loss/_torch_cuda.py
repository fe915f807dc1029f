"""The PyTorch CUDA route of simclr_loss.torch: CUDA tensors go to the library's device engine.

Not imported by ``simclr`` itself, and safe to import without torch, without CUDA and without the
``simclr_loss._device`` extension (built only with ``SIMCLR_WITH_CUDA=ON``; docs/gpu.md): what is
missing is reported when a call is made. ``simclr_loss.torch`` dispatches CUDA tensors here::

    if za.is_cuda: return _torch_cuda.simclr_loss_cuda(za, zb, temperature, reduction, ...)

What it does (docs/gpu.md, "The PyTorch CUDA route"):

- the work is enqueued on ``torch.cuda.current_stream()`` and nothing synchronises the host: the
  library runs in its asynchronous mode, and NaN/Inf inputs are recorded in the device status
  array (``last_status()``) instead of raising;
- the workspaces come from PyTorch's caching allocator (``torch.empty(bytes, dtype=torch.uint8)``)
  in the sizes the library reports, so the library allocates nothing. The forward's is two
  buffers: the part the backward reads (U, the per-row statistics, the status array), saved for
  the backward and freed by autograd once the backward has run, and a scratch (the logits tile,
  staging), freed as soon as the forward is enqueued; nothing of a step stays in module state;
- float32, bfloat16 and float16 inputs; logits, log-sum-exp and gradient sums are float32 inside;
- ``sample_weight``: Keras's shapes ([], [1], [1, 1], [n], [n, 1]), float32 on the device;
- ``process_group``: the call is collective over the group's ranks, as on the CPU route. The big
  gathers (the normalised rows, then the per-row log-sum-exp and weights) are NCCL all-gathers of
  the group on ``torch.cuda.current_stream()`` (torch orders them after the stream and makes the
  stream wait for them, without a host synchronisation); the small agreement records go through
  the group's CPU backend when it has one (``backend="cpu:gloo,cuda:nccl"``, or torch's default
  ``backend=None``), otherwise through one CUDA all-gather read back with one ``.cpu()`` (a host
  synchronisation per gather, whatever the group's size). A step makes three such gathers: this
  route's own before the forward, the library's agreement in the forward and in the backward
  (docs/gpu.md). Every rank's agreement record is gathered first (the library's
  records and verdict: simclr_record_call, simclr_step_agree), which gives the rows that size the
  workspace for the global batch; an input error found in Python on one rank is carried by it,
  so every rank raises it.
"""

from __future__ import annotations

import contextlib
import importlib

from . import _args

__all__ = ["available", "simclr_loss_cuda", "last_status", "workspace_bytes"]

# The status array of the latest forward: a copy of its 4 values (32 bytes, filled in stream order),
# never a view of its workspace, so no step's buffers outlive the step through module state.
_last_status = None


def _device_module():
    try:
        return importlib.import_module("simclr_loss._device")
    except ImportError as exc:  # pragma: no cover - depends on the build
        raise RuntimeError(
            "simclr was built without the GPU path (simclr_loss._device is missing); rebuild with "
            "`pip install . -Ccmake.define.SIMCLR_WITH_CUDA=ON` on a machine with the CUDA "
            "toolkit (docs/gpu.md)"
        ) from exc


def available() -> bool:
    """Whether the CUDA route can run here (torch with CUDA and simclr_loss._device)."""
    try:
        import torch

        importlib.import_module("simclr_loss._device")
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
    of the first NaN/Inf in za, zb, the sample weight and (once its backward has run, with a
    per-example upstream) the upstream gradient, or -1 (all bits set) when clean. A copy, in
    stream order: reading it (``.cpu()``) synchronises; do it when the step allows."""
    return _last_status


def _device_bytes(nbytes, device):
    """A workspace: nbytes (at least 1) of device memory from PyTorch's caching allocator, whose
    blocks are 512-byte aligned (the library needs 256). Freeing it is stream-ordered: the
    allocator hands the block to later work on the same stream only."""
    import torch

    return torch.empty(max(int(nbytes), 1), dtype=torch.uint8, device=device)


# ---- collectives of a process group on device addresses ----


def _group_rank_size(group):
    """(rank, size) of this process in ``group``, for the CPU and CUDA routes' communicators; a clear
    error when torch.distributed is not initialised or this process is not a member."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "simclr_loss.torch: process_group was given but torch.distributed is not initialised; "
            "call torch.distributed.init_process_group(...) first, or pass process_group=None "
            "for a local call")
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    if rank < 0:
        raise ValueError("simclr_loss.torch: this process is not a member of process_group")
    return rank, size


class _DeviceBytes:
    """``nbytes`` bytes of device memory at ``address``, for torch.as_tensor (zero copy). Version 2
    of the interface carries no stream: the memory is ready in the order of the stream the
    library's call passes, on which the gathers are enqueued."""

    def __init__(self, address, nbytes):
        self.__cuda_array_interface__ = {
            "shape": (nbytes,), "typestr": "|u1", "data": (address, False), "version": 2,
        }


def _bytes_tensor(address, nbytes, device):
    import torch

    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8, device=device)
    return torch.as_tensor(_DeviceBytes(address, nbytes), device=device)


def _all_gather_into(out, tensor, group, size):
    """out [size * k] = every rank's tensor [k], in rank order (one collective)."""
    import torch.distributed as dist

    gather = getattr(dist, "all_gather_into_tensor", None) or getattr(dist, "_all_gather_base", None)
    if gather is not None and out.is_cuda:
        gather(out, tensor, group=group)
    else:  # CPU tensors (gloo before torch 2 has no fused all-gather), or an old torch
        dist.all_gather(list(out.chunk(size)), tensor, group=group)


def _has_cpu_backend(group):
    """Whether the group moves CPU tensors (gloo or MPI, alone or next to NCCL)."""
    import torch.distributed as dist

    try:
        config = str(dist.get_backend_config(group))  # "cpu:gloo,cuda:nccl" (torch >= 2.1)
    except (AttributeError, RuntimeError, ValueError):
        config = str(dist.get_backend(group))
    return "gloo" in config or "mpi" in config


class _TorchDeviceComm:
    """torch.distributed collectives of ``group`` behind a ``simclr_loss._device.DeviceComm``."""

    def __init__(self, group, device):
        import torch

        self.group = group
        self.rank, self.size = _group_rank_size(group)
        self.device = device
        self.host_device = torch.device("cpu") if _has_cpu_backend(group) else device

    def device_comm(self):
        # The C communicator holds these bound methods; this object holds nothing back (no cycle).
        return _device_module().DeviceComm(self.rank, self.size, "torch.distributed",
                                           self.all_gather_v, self.host_all_gather)

    def _on(self, stream):
        """The library's stream as torch's current stream (it is already, when called from here)."""
        import torch

        if stream == torch.cuda.current_stream(self.device).cuda_stream:
            return contextlib.nullcontext()
        return torch.cuda.stream(torch.cuda.ExternalStream(stream, device=self.device))

    def all_gather_v(self, send, send_bytes, recv, recv_bytes, stream):
        import torch

        counts = [int(c) for c in recv_bytes]
        width = max(counts)
        if width == 0:
            return
        with self._on(stream):
            out = _bytes_tensor(recv, sum(counts), self.device)
            mine = _bytes_tensor(send, send_bytes, self.device)
            if all(c == width for c in counts):
                _all_gather_into(out, mine, self.group, self.size)
                return
            # Uneven rows: NCCL's all-gather takes equal parts; pad to the largest, then compact.
            staged = torch.zeros(width, dtype=torch.uint8, device=self.device)
            staged[:send_bytes].copy_(mine)
            padded = torch.empty(self.size * width, dtype=torch.uint8, device=self.device)
            _all_gather_into(padded, staged, self.group, self.size)
            offset = 0
            for r, c in enumerate(counts):
                out[offset:offset + c].copy_(padded[r * width:r * width + c])
                offset += c

    def host_all_gather(self, send):
        import torch

        mine = torch.frombuffer(bytearray(send), dtype=torch.uint8) if send else \
            torch.empty(0, dtype=torch.uint8)
        return b"".join(_host_gather(mine, self.group, self.size, self.host_device))

    def agree(self, core_loss, rows, cols, dtype, error, global_batch_size=None,
              gradient_reduction=None):
        """The first collective of a call: every rank's rows, or the first failing rank's error
        (error: (exception type, message) found here, or None) raised on every rank. The records
        and the verdict are the library's (simclr_record_call, simclr_step_agree); this only moves
        the bytes."""
        from . import _core

        record = core_loss.record_call(
            int(rows), int(cols), int(dtype),
            global_batch_size=_args.GLOBAL_BATCH_NONE if global_batch_size is None
            else global_batch_size,
            gradient_reduction=_args.GRADIENT_REDUCTIONS["sum"] if gradient_reduction is None
            else gradient_reduction,
            input_error=error)
        assert len(record) == _core.RECORD_BYTES
        return core_loss.agree(self.host_all_gather(record))


def _to_device(tensor, device):
    """A CPU tensor on ``device`` without a host synchronisation: torch's blocking copy to a CUDA
    device waits for the stream (cudaStreamSynchronize after the copy); from pinned memory with
    non_blocking it is only enqueued (torch's pinned-memory allocator keeps the block until the copy
    is done)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _host_gather(tensor, group, size, device):
    """Every rank's CPU uint8 tensor (same length), as bytes, in rank order: one all-gather into
    one buffer. On a CUDA-only group the record goes to the device without waiting (_to_device)
    and the buffer comes back with one .cpu(), which waits for the stream: one host
    synchronisation per gather, whatever the group's size (on a CPU backend .cpu() is the tensor
    itself)."""
    import torch

    if tensor.numel() == 0:
        return [b""] * size
    t = _to_device(tensor, device)
    out = torch.empty(size * t.numel(), dtype=torch.uint8, device=device)
    _all_gather_into(out, t, group, size)
    data = out.cpu().numpy().tobytes()
    k = t.numel()
    return [data[r * k:(r + 1) * k] for r in range(size)]


# ---- the autograd function ----


def _make_function():
    import torch

    class _SimCLRCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, za, zb, weight, temperature, reduction, global_batch_size, symmetric,
                    tile_bytes, comm, global_rows, gradient_scale):
            global _last_status
            dev = _device_module()
            code = _dtype_code(dev, za)
            za, stride_a = _row_major(za)
            zb, stride_b = _row_major(zb)
            n, d = za.shape
            device = za.device
            stream = torch.cuda.current_stream(device)
            dcomm = None if comm is None else comm.device_comm()
            total = n if comm is None else global_rows
            fwd_bytes, _ = dev.workspace_size(n, total, d, code, tile_bytes, symmetric, dcomm)
            saved_bytes = dev.saved_size(n, total, d, code, tile_bytes, symmetric, dcomm)
            # What the backward reads (kept by autograd until the backward has run), and the
            # rest (the logits tile, staging), freed as soon as the forward is enqueued.
            workspace = _device_bytes(saved_bytes, device)
            scratch = _device_bytes(fwd_bytes - saved_bytes, device)
            red = _args.reduction_code(reduction)
            none = red == _args.REDUCTIONS["none"]
            values = torch.empty((n,) if none else (), dtype=za.dtype, device=device)
            per_example = torch.empty((n,), dtype=za.dtype, device=device)
            objective = torch.empty((), dtype=torch.float32, device=device)
            loss = dev.DeviceLoss(float(temperature), red)
            gbs = global_batch_size  # the C API's code (_args.global_batch_size)
            saved = loss.forward(
                za.data_ptr(), zb.data_ptr(), n, d, stride_a, stride_b, code, device.index,
                stream.cuda_stream, workspace.data_ptr(), workspace.numel(), values.data_ptr(),
                per_example.data_ptr(), objective.data_ptr(), gbs, tile_bytes, symmetric, True,
                dcomm, 0 if weight is None else weight.data_ptr(),
                0 if weight is None else weight.numel(), scratch.data_ptr(), scratch.numel(),
            )
            del scratch  # back to the caching allocator, in the order of this stream
            status = workspace[: 8 * dev.STATUS_SLOTS].view(torch.int64).clone()
            _last_status = status
            # Autograd keeps the saved workspace until the backward has run (save_for_backward:
            # released after it unless the graph is retained), and the C++ objects and the
            # communicator (a distributed backward gathers again) on ctx.
            ctx.save_for_backward(workspace)
            ctx.loss, ctx.saved, ctx.dcomm, ctx.status = loss, saved, dcomm, status
            ctx.shape, ctx.code, ctx.reduction, ctx.total = (n, d), code, red, total
            ctx.tile_bytes, ctx.symmetric = tile_bytes, symmetric
            ctx.gradient_scale = gradient_scale
            ctx.mark_non_differentiable(per_example)
            return values, per_example

        @staticmethod
        def backward(ctx, grad_values, _grad_per_example):
            dev = _device_module()
            (workspace,) = ctx.saved_tensors  # torch raises here if it was freed already
            n, d = ctx.shape
            device = workspace.device
            stream = torch.cuda.current_stream(device)
            nones = (None,) * 9
            if grad_values is None:
                return (None, None) + nones
            _, bwd_bytes = dev.workspace_size(n, ctx.total, d, ctx.code, ctx.tile_bytes,
                                              ctx.symmetric, ctx.dcomm)
            scratch = _device_bytes(bwd_bytes, device)
            grad_a = torch.empty((n, d), dtype=_torch_dtype(ctx.code, dev), device=device)
            grad_b = torch.empty_like(grad_a)
            if ctx.reduction == _args.REDUCTIONS["none"]:
                # Per-example upstream, float32 on the device: no host read.
                up = grad_values.to(torch.float32).contiguous()
                if ctx.gradient_scale != 1.0:
                    up = up * ctx.gradient_scale
                ctx.loss.backward(
                    ctx.saved, 0.0, up.data_ptr(), grad_a.data_ptr(), grad_b.data_ptr(), n, d,
                    ctx.code, device.index, stream.cuda_stream, scratch.data_ptr(),
                    scratch.numel(), True,
                )
                # The upstream's verdict (slot 3 of the workspace's status array) into the
                # forward's status copy, in stream order, before autograd frees the workspace.
                slot = dev.STATUS_SLOTS - 1
                ctx.status[slot:].copy_(workspace[: 8 * dev.STATUS_SLOTS].view(torch.int64)[slot:])
            else:
                # The loss is linear in a scalar upstream g: the gradient for g = 1 (times the
                # gradient convention's scale, a host number), scaled by g on the device (reading
                # g on the host would synchronise).
                ctx.loss.backward(
                    ctx.saved, float(ctx.gradient_scale), 0, grad_a.data_ptr(), grad_b.data_ptr(),
                    n, d, ctx.code, device.index, stream.cuda_stream, scratch.data_ptr(),
                    scratch.numel(), True,
                )
                g = grad_values.reshape(()).to(grad_a.dtype)
                grad_a = grad_a * g
                grad_b = grad_b * g
            return (grad_a, grad_b) + nones

    return _SimCLRCuda


def _torch_dtype(code, dev):
    import torch

    return {dev.FLOAT32: torch.float32, dev.BFLOAT16: torch.bfloat16, dev.FLOAT16: torch.float16}[
        code
    ]


_function = None


def _input_error(za, zb):
    """The first problem of the embeddings this route cannot take: (exception type, message)."""
    import torch

    for name, z in (("za", za), ("zb", zb)):
        if not isinstance(z, torch.Tensor):
            return TypeError, f"simclr_loss.torch: {name} must be a torch.Tensor, got {type(z).__name__}"
        if not z.is_cuda:
            return ValueError, (f"simclr_loss.torch: {name} is on {z.device}; the CUDA route takes CUDA "
                                "tensors (za and zb on one device)")
        if z.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return TypeError, (f"simclr_loss.torch: {name} has dtype {z.dtype}; the CUDA route takes "
                               "float32, bfloat16 or float16")
    from . import _core

    try:  # the library's shape rules and messages
        _core.check_shapes(list(za.shape), list(zb.shape))
    except ValueError as exc:
        return ValueError, str(exc)
    if za.dtype != zb.dtype:
        return TypeError, f"simclr_loss.torch: za and zb must have the same dtype: {za.dtype} vs. {zb.dtype}"
    if za.device != zb.device:
        return ValueError, f"simclr_loss.torch: za is on {za.device} but zb on {zb.device}"
    return None


def _core_dtype(t):
    """The C API dtype code of a tensor (for the agreement record)."""
    import torch

    from . import _core

    return {torch.float32: _core.FLOAT32, torch.float64: _core.FLOAT64,
            torch.float16: _core.FLOAT16, torch.bfloat16: _core.BFLOAT16}.get(t.dtype, 0)


def _device_weight(sample_weight, rows, device):
    """Keras's sample_weight as a float32 device vector of 1 or rows values. The shape rules are
    the library's (simclr_loss._core.check_shapes), with its messages."""
    import torch

    from . import _core

    w = torch.as_tensor(sample_weight, dtype=torch.float32, device=device)
    _core.check_shapes([rows, 1], [rows, 1], list(w.shape))
    return w.detach().reshape(-1).contiguous()


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
    sample_weight=None,
    gradient_reduction="mean",
):
    """SimCLR loss of CUDA tensors za, zb ([n, d], one dtype, one device), differentiable.

    Returns the loss as simclr_loss.torch does (a scalar, or [n] for reduction 'none'), plus the
    unweighted per-example loss when ``return_per_example``. ``process_group``: a torch.distributed
    group (NCCL for the rows); the call is then collective, rows may differ between ranks (and may
    be 0), and ``gradient_reduction`` is simclr_loss.torch's ("mean": the gradients times the group
    size, for DDP's averaging; "sum": TensorFlow's). global_batch_size: None, an int, or
    "infer" (the sum of the ranks' rows)."""
    global _function
    import torch

    # An argument or input this rank rejects is raised by every rank of process_group (agree).
    error, mean = None, False
    try:
        temperature = _args.temperature(temperature)
        reduction = _args.reduction(reduction)
        global_batch_size = _args.global_batch_size(global_batch_size)
        mean = _args.gradient_reduction(gradient_reduction) == _args.GRADIENT_REDUCTIONS["mean"]
    except (TypeError, ValueError) as exc:
        error = (type(exc), str(exc))
    error = error or _input_error(za, zb)
    weight = None
    if error is None and sample_weight is not None:
        try:
            weight = _device_weight(sample_weight, za.shape[0], za.device)
        except (TypeError, ValueError, RuntimeError) as exc:
            error = (type(exc) if isinstance(exc, (TypeError, ValueError)) else ValueError, str(exc))
    comm, global_rows, scale = None, 0, 1.0
    if process_group is not None:
        device = za.device if error is None else torch.device("cuda", torch.cuda.current_device())
        comm = _TorchDeviceComm(process_group, device)
        # Every rank's rows (the workspace's size), or an error found here raised on every rank.
        if error is None:
            rows = comm.agree(_args.make_loss(temperature, reduction), za.shape[0], za.shape[1],
                              _core_dtype(za), None, global_batch_size,
                              _args.gradient_reduction(gradient_reduction))
        else:  # this rank's rejection, raised by the library on every rank
            rows = comm.agree(_args.make_loss(0.05, "sum"), 0, 0, 0, error)
        global_rows = sum(rows)
        scale = float(comm.size) if mean else 1.0
    elif error is not None:
        raise error[0](error[1])
    if _function is None:
        _function = _make_function()
    with torch.cuda.device(za.device):
        values, per_example = _function.apply(
            za, zb, weight, temperature, reduction, global_batch_size, symmetric, tile_bytes,
            comm, global_rows, scale,
        )
    return (values, per_example) if return_per_example else values
