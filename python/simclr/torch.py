"""The SimCLR loss for PyTorch: TensorFlow Similarity's ``SimCLRLoss`` with the library's closed-form
backward, local or contrasted with the global batch of a ``torch.distributed`` process group.

    crit = simclr.torch.SimCLRLoss(temperature=0.1)
    loss = crit(za, zb)          # za, zb: [n, d] CPU tensors, float32/float64 (float16/bfloat16 too)
    loss.backward()

With ``process_group`` every rank passes its own rows; each anchor is contrasted with all 2G - 1
other embeddings of the global batch (G = the sum of the ranks' rows, which may differ and may be
0), and the call is collective: every rank of the group must call forward and backward in the same
order. docs/python.md describes the gradient convention (``gradient_reduction``).
"""

import json
import struct

import numpy as np
import torch
import torch.distributed as dist

from . import _core

__all__ = ["SimCLRLoss", "simclr_loss"]

_REDUCTIONS = ("auto", "none", "sum", "sum_over_batch_size")
_GRADIENT_REDUCTIONS = ("sum", "mean")
# The default gradient convention: DistributedDataParallel (and Horovod, FSDP) average parameter
# gradients over ranks, so "mean" makes their training step equal one process on the whole batch.
_DEFAULT_GRADIENT_REDUCTION = "mean"

# Per-rank status bytes sent in front of every collective payload (see _TorchComm).
_STATUS_BYTES = 512


class _LocalInputError(Exception):
    """An input error found in Python on some rank of a collective call (carried to every rank)."""

    def __init__(self, kind, message):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


def _raise_as(kind, message):
    exc = {"TypeError": TypeError, "ValueError": ValueError,
           "NotImplementedError": NotImplementedError}.get(kind, RuntimeError)
    raise exc(message)


def _group_rank_size(group):
    """(rank, size) of this process in ``group``, for the CPU and CUDA routes' communicators; a clear
    error when torch.distributed is not initialised or this process is not a member."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "simclr.torch: process_group was given but torch.distributed is not initialised; "
            "call torch.distributed.init_process_group(...) first, or pass process_group=None "
            "for a local call")
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    if rank < 0:
        raise ValueError("simclr.torch: this process is not a member of process_group")
    return rank, size


class _TorchComm:
    """torch.distributed collectives behind a ``_core.Comm.from_callbacks`` communicator.

    Every payload is preceded by a fixed status record of this rank: an input error found in Python
    (a CUDA tensor, an integer dtype, a bad shape) on one rank is then seen by every rank in the first
    collective of the call, and every rank raises the same exception instead of leaving the others
    waiting. With no error the record costs 512 bytes per rank and collective, no extra round trip.
    """

    def __init__(self, group):
        self.group = group
        self.rank, self.size = _group_rank_size(group)
        backend = dist.get_backend(group)
        # NCCL moves only CUDA tensors: stage the bytes through the current device.
        self.device = (torch.device("cuda", torch.cuda.current_device())
                       if str(backend) == "nccl" else torch.device("cpu"))
        self.local_error = None  # (kind, message) set before a call whose input failed here
        self.remote_error = None  # the first rank's error, as every rank decoded it

    def core_comm(self):
        # The communicator holds these callbacks; this object must not hold the communicator back (a
        # cycle through the extension that the garbage collector cannot see).
        return _core.Comm.from_callbacks(self.rank, self.size, "torch.distributed", self._all_gather,
                                         self._all_gather_v, self._barrier)

    def _status(self):
        out = np.zeros(_STATUS_BYTES, dtype=np.uint8)
        if self.local_error is not None:
            kind, message = self.local_error
            text = f"{kind}\n{message}".encode("utf-8")[:_STATUS_BYTES - 5]
            out[:5] = np.frombuffer(struct.pack("<BI", 1, len(text)), dtype=np.uint8)
            out[5:5 + len(text)] = np.frombuffer(text, dtype=np.uint8)
        return out

    def _check_status(self, records):
        """records: [size, _STATUS_BYTES] uint8. Raises the first failing rank's error everywhere."""
        for r in range(self.size):
            flag, length = struct.unpack("<BI", records[r, :5].tobytes())
            if flag:
                kind, _, message = records[r, 5:5 + length].tobytes().decode("utf-8", "replace") \
                    .partition("\n")
                if "(rank " not in message:
                    message = f"{message} (rank {r})"
                self.remote_error = (kind, message)
                raise _LocalInputError(kind, message)

    def _gather(self, send, width):
        """All-gather a uint8 numpy array of `width` bytes per rank; returns a [size, width] tensor."""
        out = torch.empty((self.size, width), dtype=torch.uint8, device=self.device)
        src = torch.from_numpy(send).to(self.device)
        dist.all_gather(list(out.unbind(0)), src, group=self.group)
        return out.cpu()

    def _all_gather(self, send, recv):
        nbytes = send.shape[0]
        buf = np.empty(_STATUS_BYTES + nbytes, dtype=np.uint8)
        buf[:_STATUS_BYTES] = self._status()
        buf[_STATUS_BYTES:] = send
        got = self._gather(buf, buf.shape[0]).numpy()
        self._check_status(got[:, :_STATUS_BYTES])
        recv.reshape(self.size, nbytes)[...] = got[:, _STATUS_BYTES:]

    def _all_gather_v(self, send, recv, recv_bytes):
        # torch's all_gather needs equal sizes: pad every rank's part to the largest, drop the padding.
        counts = [int(c) for c in recv_bytes]
        width = _STATUS_BYTES + max(counts)
        buf = np.zeros(width, dtype=np.uint8)
        buf[:_STATUS_BYTES] = self._status()
        buf[_STATUS_BYTES:_STATUS_BYTES + send.shape[0]] = send
        got = self._gather(buf, width).numpy()
        self._check_status(got[:, :_STATUS_BYTES])
        offset = 0
        for r, c in enumerate(counts):
            recv[offset:offset + c] = got[r, _STATUS_BYTES:_STATUS_BYTES + c]
            offset += c

    def _barrier(self):
        dist.barrier(group=self.group)


def _comm_of(process_group):
    if process_group is None:
        return None
    return _TorchComm(process_group)


def _check_tensor(name, z):
    """Python-level checks the core cannot make (it only sees CPU arrays). Returns (kind, message)."""
    if not isinstance(z, torch.Tensor):
        return ("TypeError", f"simclr.torch: {name} must be a torch.Tensor, got {type(z).__name__}")
    if z.device.type != "cpu":
        return ("NotImplementedError",
                f"simclr.torch: {name} is on {z.device}, and this build of simclr has no CUDA front "
                f"end yet (only CPU tensors are supported); move the embeddings to the CPU with "
                f"{name}.cpu() before the loss")
    if z.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return ("TypeError", f"simclr.torch: {name} has dtype {z.dtype}; the loss takes float32 or "
                             f"float64 (float16 and bfloat16 are computed in float32)")
    if z.dim() != 2:
        return ("ValueError", f"simclr.torch: {name} must be 2-D [n, d], got shape {tuple(z.shape)}")
    return None


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _host_view(z, dtype):
    """z in dtype, handed to the core through DLPack: zero copy for a float32/float64 CPU tensor with
    unit column stride (any row stride); other layouts are copied once here."""
    z = z.detach()
    if z.dtype != dtype:
        z = z.to(dtype)
    if z.shape[1] > 1 and z.stride(1) != 1:
        z = z.contiguous()
    return z


def _weight_array(sample_weight):
    if sample_weight is None:
        return None
    if isinstance(sample_weight, torch.Tensor):
        sample_weight = sample_weight.detach().cpu().to(torch.float64).numpy()
    return np.ascontiguousarray(np.asarray(sample_weight, dtype=np.float64))


def _global_batch_arg(global_batch_size):
    if global_batch_size is None:
        return -2
    if isinstance(global_batch_size, str):
        if global_batch_size != "infer":
            raise ValueError(f"simclr.torch: global_batch_size must be None, an int >= 0 or \"infer\", "
                             f"got {global_batch_size!r}")
        return -1
    if isinstance(global_batch_size, torch.Tensor):
        global_batch_size = int(global_batch_size.item())
    if isinstance(global_batch_size, bool) or int(global_batch_size) != global_batch_size:
        raise TypeError(f"simclr.torch: global_batch_size must be an integer, got {global_batch_size!r}")
    if global_batch_size < 0:
        raise ValueError(f"simclr.torch: global_batch_size must be >= 0, got {global_batch_size}")
    return int(global_batch_size)


class _SimCLRFunction(torch.autograd.Function):
    """Forward through the core; backward is the core's closed form (no autograd through the math)."""

    @staticmethod
    def forward(ctx, za, zb, core_loss, weight, comm, global_batch, gradient_scale, threads):
        in_dtype = za.dtype
        dtype = _compute_dtype(in_dtype)
        error = _check_tensor("za", za) or _check_tensor("zb", zb)
        if error is None and za.dtype != zb.dtype:
            error = ("TypeError", f"simclr.torch: za and zb must have the same dtype, got {za.dtype} "
                                  f"and {zb.dtype}")
        if error is None:
            try:
                weight = _weight_array(weight)
            except (TypeError, ValueError) as exc:
                error = (type(exc).__name__, f"simclr.torch: sample_weight: {exc}")
        if error is not None and comm is None:
            _raise_as(*error)
        if error is not None:
            # Take part in the call with an empty input that the status record replaces by the error.
            a = b = np.zeros((0, 1), dtype=np.float32)
            weight = None
            comm.local_error = error
        else:
            a, b = _host_view(za, dtype), _host_view(zb, dtype)
        core_comm = None if comm is None else comm.core_comm()
        try:
            fwd = core_loss.forward(a, b, weight=weight, comm=core_comm, global_batch_size=global_batch,
                                    threads=threads)
        except _core.CommError:
            if comm is not None and comm.remote_error is not None:
                _raise_as(*comm.remote_error)
            raise
        finally:
            if comm is not None:
                comm.local_error = None
                comm.remote_error = None
        ctx.fwd = fwd
        ctx.in_dtypes = (za.dtype, zb.dtype)
        ctx.dtype = dtype
        ctx.shape = (a.shape[0], a.shape[1])
        ctx.gradient_scale = gradient_scale
        ctx.none = fwd.reduction == "none"
        values = torch.from_numpy(np.asarray(fwd.values))
        # Half-precision inputs give a float32 loss, as autocast does for losses.
        return values if ctx.none else values.reshape(())

    @staticmethod
    def backward(ctx, grad_output):
        fwd = ctx.fwd
        n, d = ctx.shape
        np_dtype = np.float64 if ctx.dtype == torch.float64 else np.float32
        if ctx.none:
            upstream = grad_output.detach().to(ctx.dtype).contiguous().numpy()
            if ctx.gradient_scale != 1.0:
                upstream = upstream * np_dtype(ctx.gradient_scale)
            upstream = np.ascontiguousarray(upstream, dtype=np_dtype)
        else:
            upstream = float(grad_output) * ctx.gradient_scale
        grad_a = torch.empty((n, d), dtype=ctx.dtype)
        grad_b = torch.empty((n, d), dtype=ctx.dtype)
        fwd.backward(upstream, grad_a, grad_b)  # written in place through DLPack
        if ctx.in_dtypes[0] != ctx.dtype:
            grad_a = grad_a.to(ctx.in_dtypes[0])
        if ctx.in_dtypes[1] != ctx.dtype:
            grad_b = grad_b.to(ctx.in_dtypes[1])
        return grad_a, grad_b, None, None, None, None, None, None


def _core_loss(temperature, reduction, name=None):
    return _core.Loss(float(temperature), reduction, name)


def _call(core_loss, za, zb, sample_weight, process_group, global_batch_size, gradient_reduction):
    if gradient_reduction not in _GRADIENT_REDUCTIONS:
        raise ValueError(f"simclr.torch: gradient_reduction must be \"sum\" or \"mean\", got "
                         f"{gradient_reduction!r}")
    if isinstance(za, torch.Tensor) and za.is_cuda:
        # The CUDA route (docs/gpu.md): CUDA tensors go to the device engine when this build has it,
        # local or over process_group (NCCL for the rows); otherwise the checks below raise the
        # clear "no CUDA front end" error.
        from . import _torch_cuda
        if _torch_cuda.available():
            cfg = json.loads(core_loss.get_config_json())
            gbs = _global_batch_arg(global_batch_size)
            return _torch_cuda.simclr_loss_cuda(
                za, zb, temperature=cfg["temperature"], reduction=cfg["reduction"],
                global_batch_size=None if gbs == -2 else gbs, process_group=process_group,
                sample_weight=sample_weight, gradient_reduction=gradient_reduction)
    comm = _comm_of(process_group)
    scale = float(comm.size) if (comm is not None and gradient_reduction == "mean") else 1.0
    return _SimCLRFunction.apply(za, zb, core_loss, sample_weight, comm,
                                 _global_batch_arg(global_batch_size), scale, torch.get_num_threads())


def simclr_loss(za, zb, sample_weight=None, *, temperature=0.05, reduction="auto", process_group=None,
                global_batch_size=None, gradient_reduction=_DEFAULT_GRADIENT_REDUCTION):
    """TF Similarity's SimCLR loss of two views za, zb ([n, d] CPU tensors; row i of each is a pair).

    Returns a 0-d tensor, or [n] for reduction "none" (the weighted per-example loss). The dtype is the
    input's (float32 for float16/bfloat16 inputs). With process_group (a torch.distributed group, or
    torch.distributed.group.WORLD) the call is collective and contrasts with the group's global batch;
    "auto" and "sum_over_batch_size" then need global_batch_size (an int, or "infer"). See SimCLRLoss.
    """
    return _call(_core_loss(temperature, reduction), za, zb, sample_weight, process_group,
                 global_batch_size, gradient_reduction)


class SimCLRLoss(torch.nn.Module):
    """TensorFlow Similarity's SimCLRLoss as an nn.Module: ``crit(za, zb, sample_weight=None)``.

    temperature, reduction ("auto", "none", "sum", "sum_over_batch_size") and name are the Keras
    loss's arguments (get_config() returns the same dict as TF Similarity's). process_group: None for a
    local call, or a torch.distributed group; global_batch_size: None, an int, or "infer" (the sum of
    the group's row counts); gradient_reduction: "mean" (the default; for DDP, Horovod and FSDP, which
    average gradients over ranks) or "sum" (the gradient of the sum over ranks of their losses, for
    frameworks that sum, like TF MirroredStrategy). Not collective unless process_group is set.
    """

    def __init__(self, temperature=0.05, reduction="auto", name=None, process_group=None,
                 global_batch_size=None, gradient_reduction=_DEFAULT_GRADIENT_REDUCTION):
        super().__init__()
        if gradient_reduction not in _GRADIENT_REDUCTIONS:
            raise ValueError(f"simclr.torch: gradient_reduction must be \"sum\" or \"mean\", got "
                             f"{gradient_reduction!r}")
        _global_batch_arg(global_batch_size)  # validate early
        # The core validates temperature and reduction with the Keras messages.
        self._core = _core.Loss(float(temperature), reduction, name)
        cfg = json.loads(self._core.get_config_json())
        self.temperature = cfg["temperature"]
        self.reduction = cfg["reduction"]
        self.name = cfg["name"]
        self.process_group = process_group
        self.global_batch_size = global_batch_size
        self.gradient_reduction = gradient_reduction

    def forward(self, za, zb, sample_weight=None):
        return _call(self._core, za, zb, sample_weight, self.process_group, self.global_batch_size,
                     self.gradient_reduction)

    def get_config(self):
        """TF Similarity's config dict: {'reduction': ..., 'name': ..., 'temperature': ...}."""
        return json.loads(self._core.get_config_json())

    @classmethod
    def from_config(cls, config, process_group=None, global_batch_size=None,
                    gradient_reduction=_DEFAULT_GRADIENT_REDUCTION):
        """From get_config()'s dict (or the Keras wrapper {"class_name": ..., "config": {...}}).

        The runtime settings (process group, global batch size, gradient convention) are not part of
        the loss's config; pass them here.
        """
        core = _core.Loss.from_config(json.dumps(config))
        cfg = json.loads(core.get_config_json())
        return cls(cfg["temperature"], cfg["reduction"], cfg["name"], process_group=process_group,
                   global_batch_size=global_batch_size, gradient_reduction=gradient_reduction)

    def extra_repr(self):
        return (f"temperature={self.temperature}, reduction={self.reduction!r}, "
                f"gradient_reduction={self.gradient_reduction!r}"
                + ("" if self.process_group is None else ", distributed"))
