"""The SimCLR loss for PyTorch: TensorFlow Similarity's ``SimCLRLoss`` with the library's closed-form
backward, local or contrasted with the global batch of a ``torch.distributed`` process group.

    crit = simclr_loss.torch.SimCLRLoss(temperature=0.1)
    loss = crit(za, zb)          # za, zb: [n, d] CPU tensors, float32/float64 (float16/bfloat16 too)
    loss.backward()

With ``process_group`` every rank passes its own rows; each anchor is contrasted with all 2G - 1
other embeddings of the global batch (G = the sum of the ranks' rows, which may differ and may be
0), and the call is collective: every rank of the group must call forward and backward in the same
order. docs/python.md describes the gradient convention (``gradient_reduction``).

Extra negatives (a memory bank, ``negatives=``, see ``MemoryBank``) join every anchor's candidates as
negatives only, on the CPU route.
"""

import functools
import json

import numpy as np
import torch
import torch.distributed as dist

from . import _args, _core, _torch_cuda
from ._torch_cuda import _group_rank_size

__all__ = ["MemoryBank", "SimCLRLoss", "simclr_loss"]

# The default gradient convention: DistributedDataParallel (and Horovod, FSDP) average parameter
# gradients over ranks, so "mean" makes their training step equal one process on the whole batch.
_DEFAULT_GRADIENT_REDUCTION = "mean"
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class _TorchComm:
    """torch.distributed collectives of a process group behind a ``_core.Comm.from_callbacks``
    communicator. The library's agreement step runs over them: an input error found here or in the
    extension on one rank (``input_error``) reaches every rank there, and every rank raises it."""

    def __init__(self, group):
        self.group = group
        self.rank, self.size = _group_rank_size(group)
        backend = dist.get_backend(group)
        # NCCL moves only CUDA tensors: stage the bytes through the current device.
        self.device = (torch.device("cuda", torch.cuda.current_device())
                       if str(backend) == "nccl" else torch.device("cpu"))

    def core_comm(self):
        # The communicator holds these callbacks; this object must not hold the communicator back (a
        # cycle through the extension that the garbage collector cannot see).
        return _core.Comm.from_callbacks(self.rank, self.size, "torch.distributed", self._all_gather,
                                         self._all_gather_v, self._barrier)

    def _gather(self, send, width):
        """All-gather a uint8 numpy array of `width` bytes per rank; returns a [size, width] array."""
        out = torch.empty((self.size, width), dtype=torch.uint8, device=self.device)
        src = torch.from_numpy(send).to(self.device)
        dist.all_gather(list(out.unbind(0)), src, group=self.group)
        return out.cpu().numpy()

    def _all_gather(self, send, recv):
        nbytes = send.shape[0]
        recv.reshape(self.size, nbytes)[...] = self._gather(np.array(send), nbytes)

    def _all_gather_v(self, send, recv, recv_bytes):
        # torch's all_gather needs equal sizes: pad every rank's part to the largest, drop the padding.
        counts = [int(c) for c in recv_bytes]
        width = max(counts)
        buf = np.zeros(width, dtype=np.uint8)
        buf[:send.shape[0]] = send
        got = self._gather(buf, width)
        offset = 0
        for r, c in enumerate(counts):
            recv[offset:offset + c] = got[r, :c]
            offset += c

    def _barrier(self):
        dist.barrier(group=self.group)


def _tensor_error(name, z):
    """What the CPU route cannot take in the embedding `name`: (exception type, message), or None.
    Shapes, NaN/Inf and the rest are the library's to check."""
    accepts = "a dense CPU or CUDA tensor [n, d] of float32, float64, float16 or bfloat16"
    if not isinstance(z, torch.Tensor):
        return TypeError, f"simclr_loss.torch: {name} must be {accepts}, got {_args.describe(z)}"
    if z.layout != torch.strided:
        return TypeError, (f"simclr_loss.torch: {name} is a {z.layout} tensor; the loss takes {accepts} "
                           f"({name}.to_dense() makes one)")
    if z.is_cuda:
        return NotImplementedError, (
            f"simclr_loss.torch: {name} is on {z.device}, and this build of simclr has no CUDA route "
            f"(simclr_loss._device, built with SIMCLR_WITH_CUDA=ON; docs/gpu.md); pass CPU tensors "
            f"({name}.cpu())")
    if z.device.type != "cpu":
        return NotImplementedError, (f"simclr_loss.torch: {name} is on device {z.device}; the loss takes "
                                     f"{accepts}")
    if z.dtype not in _FLOATS:
        return TypeError, (f"simclr_loss.torch: {name} has dtype {z.dtype}; the loss takes float32 or "
                           f"float64 (float16 and bfloat16 are computed in float32)")
    return None


def _input_error(za, zb):
    if isinstance(za, torch.Tensor) and isinstance(zb, torch.Tensor) and za.device != zb.device:
        return ValueError, (f"simclr_loss.torch: za is on {za.device} but zb on {zb.device}; za and zb "
                            f"must be on one device")
    error = _tensor_error("za", za) or _tensor_error("zb", zb)
    if error is None and za.dtype != zb.dtype:
        error = TypeError, (f"simclr_loss.torch: za and zb must have the same dtype, got {za.dtype} and "
                            f"{zb.dtype}")
    return error


def _negatives_error(negatives, za):
    """What the CPU route cannot take in the extra negatives (exception type, message), or None.
    Their shape, width, dtype and NaN/Inf are the library's to check."""
    if negatives is None:
        return None
    accepts = "None or a dense tensor [K, d] on za's device"
    if not isinstance(negatives, torch.Tensor):
        return TypeError, (f"simclr_loss.torch: negatives must be {accepts}, got "
                           f"{_args.describe(negatives)}")
    if negatives.layout != torch.strided:
        return TypeError, (f"simclr_loss.torch: negatives is a {negatives.layout} tensor; the loss takes "
                           f"{accepts} (negatives.to_dense() makes one)")
    if negatives.device != za.device:
        return ValueError, (f"simclr_loss.torch: negatives are on {negatives.device} but za on "
                            f"{za.device}; they must be on one device")
    return None


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _host_view(z, dtype):
    """z in dtype, handed to the core through DLPack: zero copy for a float32/float64 CPU tensor with
    unit column stride (any row stride); other layouts are copied once here. A tensor that is not
    2-D goes as it is, for the extension to reject."""
    z = z.detach()
    if z.dtype != dtype:
        z = z.to(dtype)
    if z.dim() == 2 and z.shape[1] > 1 and z.stride(1) != 1:
        z = z.contiguous()
    return z


def _weight_array(sample_weight):
    """sample_weight as the extension takes it (a float64 host array, or None)."""
    if isinstance(sample_weight, torch.Tensor):
        try:
            sample_weight = sample_weight.detach().to("cpu", torch.float64).numpy()
        except (RuntimeError, TypeError):  # a sparse or meta tensor
            raise _args.sample_weight_error(sample_weight) from None
    return _args.sample_weight(sample_weight)


def _core_forward(core_loss, za, zb, weight, comm, global_batch, gradient_reduction, threads,
                  temperature=None, temperature_gradient=False, negatives=None, negatives_scope=0):
    """The library's forward of CPU float tensors za, zb: (the step's state, the compute dtype, the
    values as a tensor: 0-d, or [n] for reduction "none"). Half-precision inputs give a float32 loss,
    as autocast does for losses. temperature: None (the loss's) or this call's own, a float;
    temperature_gradient: the backward also gives dJ/dT. negatives: None or the extra negatives
    [K, d] (za's dtype; detached here: constants of the loss), read during this forward only;
    negatives_scope: the C API's code."""
    dtype = _compute_dtype(za.dtype)
    a, b = _host_view(za, dtype), _host_view(zb, dtype)
    # In their own compute dtype: the library refuses one that is not the views' (TypeError).
    k = None if negatives is None else _host_view(negatives, _compute_dtype(negatives.dtype))
    fwd = core_loss.forward(a, b, weight=weight, comm=comm, global_batch_size=global_batch,
                            threads=threads, gradient_reduction=gradient_reduction,
                            temperature=temperature, temperature_gradient=temperature_gradient,
                            negatives=k, negatives_scope=negatives_scope)
    values = torch.from_numpy(np.asarray(fwd.values))
    return fwd, dtype, (values if fwd.reduction == "none" else values.reshape(()))


def _core_backward(fwd, upstream, shape, dtype):
    """The library's closed-form backward of a _core_forward step, for the upstream gradient (a float,
    or the [n] tensor of reduction "none"): (grad_a, grad_b) in the compute dtype. The gradient
    convention (gradient_reduction) is the library's: it scales a distributed backward itself."""
    if isinstance(upstream, torch.Tensor):
        upstream = upstream.detach().to("cpu", dtype).contiguous().numpy()
    grad_a = torch.empty(shape, dtype=dtype)
    grad_b = torch.empty(shape, dtype=dtype)
    fwd.backward(upstream, grad_a, grad_b)  # written in place through DLPack
    return grad_a, grad_b


def _core_backward_temperature(fwd, upstream, shape, dtype):
    """_core_backward, and dJ/dT (a float: this rank's share when distributed) of a forward that had
    temperature_gradient."""
    if isinstance(upstream, torch.Tensor):
        upstream = upstream.detach().to("cpu", dtype).contiguous().numpy()
    grad_a = torch.empty(shape, dtype=dtype)
    grad_b = torch.empty(shape, dtype=dtype)
    _, _, grad_t = fwd.backward_with_temperature(upstream, grad_a, grad_b)
    return grad_a, grad_b, grad_t


class _SimCLRFunction(torch.autograd.Function):
    """Forward through the core; backward is the core's closed form (no autograd through the math).
    za and zb are float tensors on the CPU (_input_error found nothing)."""

    @staticmethod
    def forward(ctx, za, zb, temperature, core_loss, weight, comm, global_batch, gradient_reduction,
                threads, call_temperature, negatives, negatives_scope):
        # temperature: the tensor of a learnable temperature (its gradient is asked of the library),
        # or None; call_temperature: None (the loss's) or the float this call runs at. negatives:
        # the extra negatives (a tensor, or None), constants of the loss: no gradient reaches them.
        with_t = temperature is not None
        fwd, ctx.dtype, values = _core_forward(core_loss, za, zb, weight, comm, global_batch,
                                               gradient_reduction, threads, call_temperature, with_t,
                                               negatives, negatives_scope)
        ctx.fwd = fwd
        ctx.with_t = with_t
        # References: what a second-order gradient is tied to.
        ctx.save_for_backward(za, zb, *((temperature,) if with_t else ()))
        ctx.in_dtypes = (za.dtype, zb.dtype)
        ctx.none = fwd.reduction == "none"
        return values

    @staticmethod
    def backward(ctx, grad_output):
        za, zb = ctx.saved_tensors[:2]
        upstream = grad_output if ctx.none else float(grad_output)
        grad_t = None
        if ctx.with_t:
            t = ctx.saved_tensors[2]
            grad_a, grad_b, gt = _core_backward_temperature(ctx.fwd, upstream, tuple(za.shape),
                                                            ctx.dtype)
            grad_t = torch.full(t.shape, gt, dtype=t.dtype)
        else:
            grad_a, grad_b = _core_backward(ctx.fwd, upstream, tuple(za.shape), ctx.dtype)
        if ctx.in_dtypes[0] != ctx.dtype:
            grad_a = grad_a.to(ctx.in_dtypes[0])
        if ctx.in_dtypes[1] != ctx.dtype:
            grad_b = grad_b.to(ctx.in_dtypes[1])
        if torch.is_grad_enabled():
            # create_graph=True: the closed form has no graph of its own, so a second-order
            # gradient through it (a gradient penalty, gradgradcheck) is refused when it is taken,
            # instead of treating these gradients as constants (silently wrong).
            grad_a = _NoSecondOrder.apply(grad_a, za)
            grad_b = _NoSecondOrder.apply(grad_b, zb)
            if grad_t is not None:
                grad_t = _NoSecondOrder.apply(grad_t, ctx.saved_tensors[2])
        return (grad_a, grad_b, grad_t) + (None,) * 9


class _NoSecondOrder(torch.autograd.Function):
    """The identity on a first-order gradient, tied to the input it is the gradient of; its own
    backward (a second-order gradient) raises."""

    @staticmethod
    def forward(ctx, grad, like):
        return grad.clone()

    @staticmethod
    def backward(ctx, _grad):
        raise RuntimeError(
            "simclr_loss.torch: second-order gradients through the SimCLR loss are not supported (its "
            "backward is a closed form with no graph of its own); a gradient penalty or "
            "gradgradcheck over it cannot be computed")


def _cuda_route(za):
    """Whether the call goes to the CUDA route (docs/gpu.md): CUDA tensors go to the device engine,
    local or over process_group (NCCL for the rows), when this build has it."""
    return isinstance(za, torch.Tensor) and za.is_cuda and _torch_cuda.available()


def _checked_weight(core_loss, za, zb, sample_weight, comm, global_batch, gradient, threads,
                    config_error=None, parse_error=None, negatives_error=None):
    """The call's sample weight as the library takes it, once the inputs are checked. Whatever this
    rank rejects is handed to the library as the call's input error: with a communicator every rank
    then raises it (naming this rank) in the call's agreement step, where it would otherwise wait for
    this one. The first error wins: configuration, tensors, arguments, negatives, the weight."""
    error, weight = (config_error or _input_error(za, zb) or parse_error or negatives_error), None
    if error is None:
        try:
            weight = _weight_array(sample_weight)
        except (TypeError, ValueError) as exc:
            error = (type(exc), str(exc))
    if error is not None:
        core_loss.forward(None, None, comm=comm, global_batch_size=global_batch, threads=threads,
                          gradient_reduction=gradient, input_error=error)  # raises
    return weight


def _parsed(global_batch_size, gradient_reduction):
    """(global batch code, gradient code, error or None): an error is the call's to raise collectively."""
    global_batch, gradient = _args.GLOBAL_BATCH_NONE, _args.GRADIENT_REDUCTIONS["sum"]
    try:
        global_batch = _args.global_batch_size(global_batch_size)
        gradient = _args.gradient_reduction(gradient_reduction)
    except (TypeError, ValueError) as exc:
        return global_batch, gradient, (type(exc), str(exc))
    return global_batch, gradient, None


def _temperature_arg(temperature):
    """A call's own temperature (a number, or a one-element tensor such as a learnable parameter):
    (its value as a float, the tensor whose gradient is wanted or None, error or None). The value
    itself (finite, > 0) is the library's to check, on every rank alike."""
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1 or not temperature.dtype.is_floating_point:
            return 1.0, None, (TypeError, "temperature must be a number > 0, got "
                               + _args.describe(temperature))
        wanted = temperature if temperature.requires_grad and torch.is_grad_enabled() else None
        return float(temperature.detach().reshape(())), wanted, None
    try:
        return _args.temperature_value(temperature), None, None
    except TypeError as exc:
        return 1.0, None, (type(exc), str(exc))


def _negatives_scope_arg(negatives_scope):
    """(the C API's code, error or None): an error is the call's to raise collectively."""
    try:
        return _args.negatives_scope_code(negatives_scope), None
    except ValueError as exc:
        return _args.NEGATIVES_SCOPES["local"], (type(exc), str(exc))


_NEGATIVES_CPU_ONLY = ("simclr_loss.torch: extra negatives (negatives=) are supported on the CPU route "
                       "only ")


def _no_device_negatives(where):
    """The routes without extra negatives refuse them, as the library's device calls do."""
    if where == "cuda":
        raise NotImplementedError(
            _NEGATIVES_CPU_ONLY + "so far: the CUDA route has none (the library's device calls "
            "refuse them); pass CPU tensors")
    raise NotImplementedError(
        _NEGATIVES_CPU_ONLY + "so far: torch.compile's custom ops carry none; call the loss "
        "outside the compiled region (torch.compiler.disable)")


def _call(core_loss, za, zb, sample_weight, process_group, global_batch_size, gradient_reduction,
          config_error=None, temperature=None, negatives=None, negatives_scope="local"):
    """The call; temperature: None (the loss's) or this call's own (a number or a tensor);
    negatives: None or the extra negatives [K, d] (treated as constants), negatives_scope "local"
    or "global"."""
    call_t, t_tensor, t_error = (None, None, None) if temperature is None else (
        _temperature_arg(temperature))
    if _cuda_route(za):
        if negatives is not None:
            _no_device_negatives("cuda")
        if t_tensor is not None:
            raise NotImplementedError(
                "simclr_loss.torch: a temperature that requires grad (a learnable temperature) is "
                "supported on the CPU route only so far; the CUDA route has no dJ/dT yet (pass "
                "temperature.detach(), or CPU tensors)")
        if t_error is not None:
            raise t_error[0](t_error[1])
        cfg = json.loads(core_loss.get_config_json())
        return _torch_cuda.simclr_loss_cuda(
            za, zb, temperature=cfg["temperature"] if call_t is None else call_t,
            reduction=cfg["reduction"], global_batch_size=global_batch_size,
            process_group=process_group, sample_weight=sample_weight,
            gradient_reduction=gradient_reduction)
    comm = None if process_group is None else _TorchComm(process_group).core_comm()
    threads = torch.get_num_threads()
    global_batch, gradient, parse_error = _parsed(global_batch_size, gradient_reduction)
    scope, scope_error = _negatives_scope_arg(negatives_scope)
    negatives_error = scope_error
    if negatives_error is None and isinstance(za, torch.Tensor):
        negatives_error = _negatives_error(negatives, za)
    weight = _checked_weight(core_loss, za, zb, sample_weight, comm, global_batch, gradient, threads,
                             config_error or t_error, parse_error, negatives_error)
    if negatives is not None:
        negatives = negatives.detach()  # a constant of the loss (a memory bank's rows)
    return _SimCLRFunction.apply(za, zb, t_tensor, core_loss, weight, comm, global_batch, gradient,
                                 threads, call_t, negatives, scope)


# ---- torch.compile: the loss as torch.library custom ops (torch >= 2.4) -------------------------
# Dynamo cannot trace into the extension, so while torch.compile traces, a call is two custom ops
# with fake (shape-only) implementations and a registered autograd formula: the graph holds the loss
# as one node and stays whole (fullgraph=True). The ops run the eager route itself on detached
# inputs (the CPU route, or the CUDA route for CUDA tensors: one implementation for both devices)
# and are stateless: "simclr_loss::loss" returns the values and, when a gradient will be taken of a
# reduced loss, the gradient of the loss itself (the backward only scales it by the upstream scalar);
# for reduction "none" the backward op "simclr_loss::loss_backward" runs the step again with the
# upstream vector. Eager calls keep _SimCLRFunction (the backward walk only when backward is called).
_HAS_OPS = (hasattr(torch.library, "custom_op") and hasattr(torch, "compiler")
            and hasattr(torch.compiler, "is_compiling"))


def _group_name(group):
    """An op's arguments are tensors and plain values: a process group goes by its name ("" for none),
    as torch's functional collectives pass it."""
    return "" if group is None else group.group_name


def _op_step(za, zb, weight, temperature, reduction, global_batch, gradient, group, upstream,
             with_grad):
    """The eager route on detached za, zb: (values, grad_a, grad_b), the gradients (None unless
    with_grad) for `upstream` (None: of the loss itself). The arguments are the ops' encodings."""
    floats = za.is_floating_point() and zb.is_floating_point()
    a = za.detach().requires_grad_(with_grad and floats)
    b = zb.detach().requires_grad_(with_grad and floats)
    global_batch_size = (None if global_batch == _args.GLOBAL_BATCH_NONE else
                         "infer" if global_batch == _args.GLOBAL_BATCH_INFER else int(global_batch))
    with torch.enable_grad():
        values = simclr_loss(a, b, weight, temperature=temperature, reduction=reduction,
                             process_group=(dist.distributed_c10d._resolve_process_group(group)
                                            if group else None),
                             global_batch_size=global_batch_size,
                             gradient_reduction=_args.gradient_reduction_name(gradient))
        if not with_grad:
            return values.detach(), None, None
        grad_a, grad_b = torch.autograd.grad(values, (a, b), grad_outputs=upstream)
    return values.detach(), grad_a, grad_b


def _compiling():
    return _HAS_OPS and torch.compiler.is_compiling()


if _HAS_OPS:
    from typing import Optional, Tuple

    @torch.library.custom_op("simclr_loss::loss", mutates_args=())
    def _loss_op(za: torch.Tensor, zb: torch.Tensor, weight: Optional[torch.Tensor],
                 temperature: float, reduction: str, global_batch: int, gradient: int, group: str,
                 with_grad: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        values, grad_a, grad_b = _op_step(za, zb, weight, temperature, reduction, global_batch,
                                          gradient, group, None, with_grad and reduction != "none")
        if grad_a is None:
            grad_a, grad_b = za.new_empty(0), zb.new_empty(0)
        return values, grad_a, grad_b

    @_loss_op.register_fake
    def _loss_fake(za, zb, weight, temperature, reduction, global_batch, gradient, group, with_grad):
        grads = with_grad and reduction != "none"
        # The CPU route returns float32 for half inputs; the CUDA route the input's dtype.
        dtype = za.dtype if za.device.type == "cuda" else _compute_dtype(za.dtype)
        return (za.new_empty((za.shape[0],) if reduction == "none" else (), dtype=dtype),
                za.new_empty(za.shape if grads else (0,)), zb.new_empty(zb.shape if grads else (0,)))

    @torch.library.custom_op("simclr_loss::loss_backward", mutates_args=())
    def _loss_backward_op(za: torch.Tensor, zb: torch.Tensor, weight: Optional[torch.Tensor],
                          temperature: float, reduction: str, global_batch: int, gradient: int,
                          group: str, upstream: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        _, grad_a, grad_b = _op_step(za, zb, weight, temperature, reduction, global_batch,
                                     gradient, group, upstream, True)
        return grad_a, grad_b

    @_loss_backward_op.register_fake
    def _loss_backward_fake(za, zb, weight, temperature, reduction, global_batch, gradient, group,
                            upstream):
        return za.new_empty(za.shape), zb.new_empty(zb.shape)

    def _loss_op_setup(ctx, inputs, output):
        za, zb, weight = inputs[:3]
        ctx.config = tuple(inputs[3:8])  # temperature, reduction, global_batch, gradient, group
        ctx.dtypes = (za.dtype, zb.dtype)
        if ctx.config[1] == "none":
            ctx.save_for_backward(za, zb, weight)
        else:
            ctx.save_for_backward(output[1], output[2])

    def _loss_op_backward(ctx, grad_values, _grad_a, _grad_b):
        if ctx.config[1] == "none":
            za, zb, weight = ctx.saved_tensors
            grad_a, grad_b = torch.ops.simclr_loss.loss_backward(za, zb, weight, *ctx.config,
                                                                 grad_values)
        else:
            grad_a, grad_b = ctx.saved_tensors
            grad_a, grad_b = grad_a * grad_values, grad_b * grad_values
        return (grad_a.to(ctx.dtypes[0]), grad_b.to(ctx.dtypes[1])) + (None,) * 7

    _loss_op.register_autograd(_loss_op_backward, setup_context=_loss_op_setup)


def _compiled_call(za, zb, sample_weight, temperature, reduction, process_group, global_batch_size,
                   gradient_reduction):
    """The call while torch.compile traces: the custom ops above."""
    global_batch, gradient, error = _parsed(global_batch_size, gradient_reduction)
    if error is not None:
        raise error[0](error[1])
    if sample_weight is not None and not isinstance(sample_weight, torch.Tensor):
        sample_weight = torch.as_tensor(sample_weight, dtype=torch.float64)
    with_grad = torch.is_grad_enabled() and (za.requires_grad or zb.requires_grad)
    values, _, _ = torch.ops.simclr_loss.loss(za, zb, sample_weight, float(temperature), reduction,
                                              global_batch, gradient, _group_name(process_group),
                                              with_grad)
    return values


def _compile_route(za, zb, temperature=0.0, reduction=""):
    """Whether a call takes the custom ops: while torch.compile traces, for CPU or CUDA tensors and a
    plain configuration (anything else takes the eager route, which raises its error or
    graph-breaks)."""
    return (_compiling() and isinstance(za, torch.Tensor) and isinstance(zb, torch.Tensor)
            and za.device.type in ("cpu", "cuda") and isinstance(temperature, (int, float))
            and not isinstance(temperature, bool) and isinstance(reduction, str))


def simclr_loss(za, zb, sample_weight=None, *, temperature=0.05, reduction="auto", process_group=None,
                global_batch_size=None, gradient_reduction=_DEFAULT_GRADIENT_REDUCTION,
                negatives=None, negatives_scope="local"):
    """TF Similarity's SimCLR loss of two views za, zb ([n, d] CPU tensors; row i of each is a pair).

    Returns a 0-d tensor, or [n] for reduction "none" (the weighted per-example loss). The dtype is the
    input's (float32 for float16/bfloat16 inputs). With process_group (a torch.distributed group, or
    torch.distributed.group.WORLD) the call is collective and contrasts with the group's global batch;
    "auto" and "sum_over_batch_size" then need global_batch_size (an int, or "infer"). See SimCLRLoss.

    negatives: None, or extra negatives [K, d] (a memory bank; K may be 0): a CPU tensor of za's
    dtype, L2-normalised by the library, whose rows join every anchor's candidates as negatives only
    (never anchors or positives). They are constants of the loss: no gradient flows into them, even
    when they require grad (they are detached). negatives_scope: "local" (with process_group, each
    rank's anchors see that rank's negatives only, as lightly's memory bank under DDP) or "global"
    (every rank's, gathered, as MoCo's shared queue); every rank passes the same. The CUDA route and
    torch.compile refuse negatives (NotImplementedError).
    """
    if negatives is not None and _compiling():
        _no_device_negatives("compile")
    if _compile_route(za, zb, temperature, reduction):
        return _compiled_call(za, zb, sample_weight, temperature, reduction, process_group,
                              global_batch_size, gradient_reduction)
    if _cuda_route(za) and not isinstance(temperature, torch.Tensor):
        if negatives is not None:
            _no_device_negatives("cuda")
        return _torch_cuda.simclr_loss_cuda(
            za, zb, temperature=temperature, reduction=reduction,
            global_batch_size=global_batch_size, process_group=process_group,
            sample_weight=sample_weight, gradient_reduction=gradient_reduction)
    if isinstance(temperature, torch.Tensor):
        # A learnable temperature (or any tensor): this call's own, with dJ/dT when it requires grad.
        # The loss's own temperature is never used then (1.0 is a placeholder).
        config_error = None
        try:
            core_loss = _args.make_loss(1.0, reduction)
        except (TypeError, ValueError) as exc:
            if process_group is None:
                raise
            core_loss, config_error = _args.make_loss(1.0, "sum"), (type(exc), str(exc))
        return _call(core_loss, za, zb, sample_weight, process_group, global_batch_size,
                     gradient_reduction, config_error, temperature=temperature,
                     negatives=negatives, negatives_scope=negatives_scope)
    config_error = None
    try:
        core_loss = _args.make_loss(temperature, reduction)
    except (TypeError, ValueError) as exc:
        if process_group is None:
            raise
        # Raised by every rank of the group, as any other input error of this rank.
        core_loss, config_error = _args.make_loss(0.05, "sum"), (type(exc), str(exc))
    return _call(core_loss, za, zb, sample_weight, process_group, global_batch_size,
                 gradient_reduction, config_error, negatives=negatives,
                 negatives_scope=negatives_scope)


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
        # Checked now, and again (cheaply) by every call.
        _args.gradient_reduction(gradient_reduction)
        _args.global_batch_size(global_batch_size)
        self._core = _args.make_loss(temperature, reduction, name)
        cfg = json.loads(self._core.get_config_json())
        self.temperature = cfg["temperature"]
        self.reduction = cfg["reduction"]
        self.name = cfg["name"]
        self.process_group = process_group
        self.global_batch_size = global_batch_size
        self.gradient_reduction = gradient_reduction

    def forward(self, za, zb, sample_weight=None, temperature=None, negatives=None,
                negatives_scope="local"):
        """temperature: None (the constructor's), or this call's own: a number, or a one-element
        tensor such as a learnable temperature, whose gradient dJ/dT then flows (CPU tensors). It
        does not change get_config(), which keeps the constructor's. negatives, negatives_scope:
        extra negatives [K, d] (e.g. ``MemoryBank.negatives``), as simclr_loss() takes them:
        constants of the loss (detached), CPU tensors only."""
        t = self.temperature if temperature is None else temperature
        if negatives is not None and _compiling():
            _no_device_negatives("compile")
        if _compile_route(za, zb, t, self.reduction):
            return _compiled_call(za, zb, sample_weight, t, self.reduction,
                                  self.process_group, self.global_batch_size, self.gradient_reduction)
        return _call(self._core, za, zb, sample_weight, self.process_group, self.global_batch_size,
                     self.gradient_reduction, temperature=temperature, negatives=negatives,
                     negatives_scope=negatives_scope)

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
        cfg = json.loads(_args.from_config(config).get_config_json())
        return cls(cfg["temperature"], cfg["reduction"], cfg["name"], process_group=process_group,
                   global_batch_size=global_batch_size, gradient_reduction=gradient_reduction)

    def extra_repr(self):
        return (f"temperature={self.temperature}, reduction={self.reduction!r}, "
                f"gradient_reduction={self.gradient_reduction!r}"
                + ("" if self.process_group is None else ", distributed"))

    # Copies and pickles (copy.deepcopy for EMA teachers, torch.save of a model that holds the loss):
    # the library's loss object is rebuilt from the config; a process group is a handle to the
    # running job, shared by a deep copy and saved as the default group when it is that one.
    _WORLD = "torch.distributed.group.WORLD"

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_core"] = self.get_config()
        group = state.get("process_group")
        if group is not None and dist.is_available() and group is dist.group.WORLD:
            state["process_group"] = self._WORLD
        return state

    def __setstate__(self, state):
        state = dict(state)
        state["_core"] = _args.from_config(state["_core"])
        if state.get("process_group") == self._WORLD:
            state["process_group"] = dist.group.WORLD
        self.__dict__.update(state)

    def __deepcopy__(self, memo):
        import copy

        state = self.__getstate__()
        group = state.pop("process_group", None)
        out = type(self).__new__(type(self))
        memo[id(self)] = out
        state = copy.deepcopy(state, memo)
        state["process_group"] = group
        out.__setstate__(state)
        return out


class MemoryBank(torch.nn.Module):
    """A first-in, first-out bank of extra negatives for the loss's ``negatives=`` (lightly's
    ``MemoryBankModule``, MoCo's queue): ``MemoryBank(size, dim, dtype=torch.float32, device=None)``.

        bank = simclr_loss.torch.MemoryBank(4096, 128)
        loss = crit(za, zb, negatives=bank.negatives)   # [K, d], K grows from 0 to size
        loss.backward()
        bank.update(zb)                                  # enqueue the newest rows, drop the oldest

    ``update(z)`` stores the rows of z ([m, dim]) detached and L2-normalised, in the bank's dtype and
    device: no gradient ever reaches them, and a row of all zeros stays zeros. When the bank is full
    each new row replaces the oldest; of more than ``size`` rows only the last ``size`` are kept.
    ``negatives`` is the bank's current rows [K, dim] (a view of its storage, which ``update``
    overwrites in place: the loss reads it during its forward only). Calling the module,
    ``bank(z)``, returns the rows as they were before it enqueues z (a copy), as lightly's does.
    The loss does not depend on the order of the rows. The rows and the fill state are buffers, so
    they travel with ``state_dict()`` and ``.to()``.

    Distributed (``process_group``): each rank keeps a bank of its own rows. With
    ``negatives_scope="local"`` each rank's anchors see its own bank (lightly under DDP); with
    ``negatives_scope="global"`` the library gathers every rank's bank, so every anchor sees the
    union (MoCo's shared queue of all-gathered keys). Keep the bank out of a module that
    DistributedDataParallel wraps (or pass it broadcast_buffers=False): DDP broadcasts rank 0's
    buffers to every rank at each forward, which would replace every rank's bank with rank 0's.
    """

    def __init__(self, size, dim, dtype=torch.float32, device=None):
        super().__init__()
        for name, value in (("size", size), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"MemoryBank: {name} must be an integer >= 0, got "
                                 + _args.describe(value))
        if dtype not in _FLOATS:
            raise TypeError(f"MemoryBank: dtype must be a floating dtype, got {dtype}")
        self.size, self.dim = int(size), int(dim)
        self.register_buffer("bank", torch.zeros((self.size, self.dim), dtype=dtype, device=device))
        # The next row to write and the rows held (0 to size), as tensors so state_dict has them.
        self.register_buffer("position", torch.zeros((), dtype=torch.int64, device=device))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64, device=device))

    def __len__(self):
        return int(self.count)

    def __bool__(self):
        # A module is true even when its bank is empty (len() is the rows it holds).
        return True

    @property
    def negatives(self):
        """The current rows [K, dim], K = len(self) (the first K rows of the storage: until it is
        full the bank fills it in order, and once full every row is held)."""
        return self.bank[:int(self.count)]

    @torch.no_grad()
    def update(self, z):
        """Enqueues the rows of z [m, dim], detached and L2-normalised; returns self."""
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.dim:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else _args.describe(z)
            raise ValueError(f"MemoryBank.update: z must be a tensor [m, {self.dim}], got {shape}")
        rows = torch.nn.functional.normalize(
            z.detach().to(device=self.bank.device, dtype=torch.float64), dim=1)
        rows = rows.to(self.bank.dtype)
        if self.size == 0 or rows.shape[0] == 0:
            return self
        rows = rows[-self.size:]
        m, at = rows.shape[0], int(self.position)
        first = min(m, self.size - at)
        self.bank[at:at + first] = rows[:first]
        self.bank[:m - first] = rows[first:]
        self.position.fill_((at + m) % self.size)
        self.count.fill_(min(self.size, int(self.count) + m))
        return self

    def forward(self, z=None):
        """The current rows (a copy when z is given), then ``update(z)`` unless z is None."""
        if z is None:
            return self.negatives
        out = self.negatives.clone()
        self.update(z)
        return out

    def reset(self):
        """Empties the bank."""
        self.bank.zero_()
        self.position.zero_()
        self.count.zero_()
        return self

    def extra_repr(self):
        return f"size={self.size}, dim={self.dim}, dtype={self.bank.dtype}, rows={len(self)}"
