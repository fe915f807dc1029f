"""simclr_loss.jax: TensorFlow Similarity's SimCLRLoss for JAX, through XLA FFI custom calls on the CPU
(and on CUDA GPUs when the package was built with the GPU path: simclr_loss._jax_ffi_cuda).

    import jax, simclr_loss.jax as sj
    loss = sj.simclr_loss(za, zb, temperature=0.1)           # under jax.jit, jax.grad, ...

The forward and backward are XLA FFI custom calls into the library (simclr_loss._jax_ffi), tied together
by a jax.custom_vjp. XLA never holds the [2G, 2G] logits: the library streams them in tiles, so what
XLA keeps for the backward is the normalised rows ([2G, d]) and two scalars per row.

Inside jax.shard_map (or jax.pmap) pass axis_name: every device then contrasts its rows with the
rows of all devices on that axis (global negatives). The rows are gathered with jax.lax.all_gather,
and in the backward each row's log-sum-exp and weight too: XLA's collectives, part of the compiled
program. Before the rows, the devices all-gather a small record of their inputs and check them all
(the C API's agreement step), so bad input on one device (a NaN) fails every device alike, naming
that device, and none is left waiting in an all-gather. The loss a device returns is its share J_r
of the global objective (sum over devices), and the gradient it returns for its own rows is dJ/dz_r
of that global objective: combine the devices' parameter gradients with jax.lax.psum
(gradient_reduction="sum", the default), or with jax.lax.pmean after gradient_reduction="mean",
which scales the returned gradients by the number of devices so that the mean is that sum.

Extra negatives (a memory bank; docs/python.md, JAX, "Extra negatives and a memory bank"):
negatives=[K, d] rows join every anchor's candidates as negatives only (never anchors or
positives), L2-normalised, with no gradient (as under jax.lax.stop_gradient). Under axis_name, negatives_scope="local" (the default) lets each device's
anchors see its own rows, "global" every device's (all-gathered over the axis like the batch).
memory_bank_init / memory_bank_update / memory_bank_negatives keep such a bank, FIFO, functionally.
"""

import functools

import numpy as np

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from . import _args, _core, _install
from ._loss import _ConfigMixin

try:
    from . import _jax_ffi
except ImportError as e:  # the package was built without jax's FFI headers
    _jax_ffi = None
    _IMPORT_ERROR = e

try:
    # The same handlers for platform "CUDA", over the device step calls (docs/gpu.md, "JAX on the
    # GPU"); built only with the GPU path (SIMCLR_WITH_CUDA=ON) and jax's FFI headers.
    from . import _jax_ffi_cuda
except ImportError:
    _jax_ffi_cuda = None

__all__ = ["simclr_loss", "SimCLRLoss", "MemoryBank", "memory_bank_init", "memory_bank_update",
           "memory_bank_negatives"]

_REDUCTIONS = _args.REDUCTIONS  # the C API's codes, from the extension
_GLOBAL_BATCH_NONE = _args.GLOBAL_BATCH_NONE
_GLOBAL_BATCH_INFER = _args.GLOBAL_BATCH_INFER
_registered = False


def _register():
    global _registered
    if _registered:
        return
    if _jax_ffi is None:
        raise RuntimeError(
            "simclr_loss.jax needs the extension simclr_loss._jax_ffi, which this installation of "
            "simclr-loss was built without (no jaxlib headers where it was built). With jax (jax>=0.7.1) "
            "installed, rebuild it: " + _install.REBUILD + " (" + str(_IMPORT_ERROR) + ")")
    for name, capsule in _jax_ffi.handlers().items():
        try:
            jax.ffi.register_ffi_target(name, capsule, platform="cpu")
        except Exception as e:  # XLA refuses handlers built against a newer FFI API than its own
            if "API version" not in str(e):
                raise
            raise RuntimeError(
                "simclr_loss._jax_ffi was compiled against a newer jaxlib than this jax " + jax.__version__ +
                " (" + str(e).splitlines()[0] + "); rebuild it against this jax: " + _install.REBUILD) from e
    if _jax_ffi_cuda is not None:
        # Same target names: XLA picks the handler of the platform the computation runs on, so
        # arrays on a GPU take these (float32 inside; float64 stays on the CPU).
        for name, capsule in _jax_ffi_cuda.handlers().items():
            jax.ffi.register_ffi_target(name, capsule, platform="CUDA")
    _registered = True


# ---- static configuration and trace-time validation ----

def _checked_loss_config(temperature, reduction):
    # The library's own checks (temperature > 0 and finite, a Keras reduction key), at trace time.
    return _args.loss_config(temperature, reduction)


class _Static:
    """The hashable, static part of a call (a nondiff argument of the custom_vjp)."""

    __slots__ = ("temperature", "reduction", "global_batch", "axis_name", "gradient_scale_mean",
                 "has_weight", "threads", "negatives_scope", "negative_rows")

    def __init__(self, temperature, reduction, global_batch, axis_name, gradient_scale_mean,
                 has_weight, threads, negatives_scope=0, negative_rows=0):
        self.temperature = temperature
        self.reduction = reduction
        self.global_batch = global_batch
        self.axis_name = axis_name
        self.gradient_scale_mean = gradient_scale_mean
        self.has_weight = has_weight
        self.threads = threads
        # Extra negatives: their scope (the C API's SIMCLR_NEGATIVES_* code, in the records) and the
        # rows that end u_global (this device's K when local; every device's when global).
        self.negatives_scope = negatives_scope
        self.negative_rows = negative_rows

    def _key(self):
        return tuple(getattr(self, k) for k in self.__slots__)

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, _Static) and self._key() == other._key()

    def attrs(self):
        return dict(temperature=np.float64(self.temperature),
                    reduction=np.int64(_REDUCTIONS[self.reduction]),
                    global_batch=np.int64(self.global_batch),
                    has_weight=np.int64(self.has_weight))


def _global_batch_code(g):
    return _args.global_batch_size(g)


def _compute_dtype(dtype, what):
    dtype = jnp.dtype(dtype)
    if dtype in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        return dtype
    if dtype in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return jnp.dtype(jnp.float32)  # computed in float32, returned in the input dtype
    raise TypeError("{} has dtype {}; simclr_loss.jax takes float32, float64 (jax_enable_x64), "
                    "bfloat16 or float16".format(what, dtype))


# ---- the FFI calls ----

def _varying_axes(x):
    """The mesh axes x varies over inside shard_map (empty outside, or where JAX does not track it)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "mat", None)  # jax >= 0.9: ManualAxisType
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", frozenset()))  # jax 0.7, 0.8


def _like(shape, dtype, ref):
    """A result type of `shape` and `dtype` varying over the same mesh axes as `ref`."""
    if not _varying_axes(ref):
        return jax.ShapeDtypeStruct(shape, dtype)
    aval = jax.typeof(ref)
    if getattr(aval, "mat", None) is not None:
        return jax.ShapeDtypeStruct(shape, dtype,
                                    sharding=aval.sharding.update(spec=PartitionSpec()),
                                    manual_axis_type=aval.mat)
    return jax.ShapeDtypeStruct(shape, dtype, vma=aval.vma)


def _to_varying(x, axes):
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(x, axes, to="varying")
    return jax.lax.pvary(x, axes)


def _same_vma(*xs):
    # Inside shard_map every operand of one custom call must vary over the same mesh axes.
    axes = [_varying_axes(x) for x in xs]
    union = frozenset().union(*axes)
    if not union:
        return xs
    return tuple(x if a == union else _to_varying(x, tuple(sorted(union - a)))
                 for x, a in zip(xs, axes))


def _normalize(za, zb):
    n, d = za.shape
    return jax.ffi.ffi_call("simclr_normalize",
                            (_like((2 * n, d), za.dtype, za), _like((2 * n,), za.dtype, za)))(
                                *_same_vma(za, zb))


def _normalize_rows(negatives):
    """The extra negatives' unit rows (simclr_step_normalize_rows; NaN or Inf fails the call)."""
    return jax.ffi.ffi_call("simclr_normalize_rows",
                            _like(negatives.shape, negatives.dtype, negatives))(negatives)


def _agreed_normalize(s, za, zb, weight, negatives):
    """_normalize after the agreement of the devices on axis_name, the weight as agreed, and the
    unit rows of this device's extra negatives ([K, d], K may be 0).

    Each device's record (its shapes, settings, the negatives' scope and the first error of its
    negatives, za, zb and weight) is all-gathered, and the normalisation of every device first
    checks all the records, so an input error on one device fails on every device alike, before the
    rows' all-gather that the failed device would never join. The weight passes through that step,
    so that the steps reading it (forward, alpha) cannot run, and fail on one device, before the
    agreement."""
    n, d = za.shape
    za, zb, weight, negatives = _same_vma(za, zb, weight, negatives)
    record = jax.ffi.ffi_call("simclr_record", _like((_jax_ffi.RECORD_BYTES,), jnp.uint8, za))(
        za, zb, weight, negatives, gradient_reduction=np.int64(1 if s.gradient_scale_mean else 0),
        negatives_scope=np.int64(s.negatives_scope), **s.attrs())
    records = jax.lax.all_gather(record, s.axis_name)  # [devices, RECORD_BYTES], device order
    records, za, zb, weight, negatives = _same_vma(records, za, zb, weight, negatives)
    return jax.ffi.ffi_call(
        "simclr_agree_normalize",
        (_like((2 * n, d), za.dtype, za), _like((2 * n,), za.dtype, za),
         _like(weight.shape, weight.dtype, weight),
         _like(negatives.shape, negatives.dtype, negatives)))(
            records, za, zb, weight, negatives, temperature=np.float64(s.temperature),
            reduction=np.int64(_REDUCTIONS[s.reduction]))


def _forward_call(s, u_global, offset, weight, n, temperature=None):
    """The forward step; temperature: None (s.temperature, an attribute) or a traced scalar (an
    operand of "simclr_forward_t")."""
    nv = n if s.reduction == "none" else 1
    t = u_global.dtype
    if temperature is None:
        u_global, offset, weight = _same_vma(u_global, offset, weight)
        return jax.ffi.ffi_call(
            "simclr_forward",
            (_like((2 * n,), t, u_global), _like((n,), t, u_global), _like((nv,), t, u_global)))(
                u_global, offset, weight, threads=np.int64(s.threads),
                negative_rows=np.int64(s.negative_rows), **s.attrs())
    u_global, offset, weight, temperature = _same_vma(u_global, offset, weight,
                                                      temperature.astype(t))
    attrs = s.attrs()
    del attrs["temperature"]
    return jax.ffi.ffi_call(
        "simclr_forward_t",
        (_like((2 * n,), t, u_global), _like((n,), t, u_global), _like((nv,), t, u_global)))(
            u_global, offset, weight, temperature, threads=np.int64(s.threads),
            negative_rows=np.int64(s.negative_rows), **attrs)


def _alpha_call(s, upstream, weight, n, global_pairs):
    upstream, weight = _same_vma(upstream, weight)
    return jax.ffi.ffi_call("simclr_alpha", _like((2 * n,), upstream.dtype, upstream))(
        upstream, weight, global_pairs=np.int64(global_pairs), **s.attrs())


def _alpha_record_call(s, upstream, weight, n, global_pairs):
    """alpha as _alpha_call, and this device's record of the backward: a bad upstream gradient on
    one device is carried in it (the call does not fail), for every device to raise it alike."""
    upstream, weight = _same_vma(upstream, weight)
    return jax.ffi.ffi_call(
        "simclr_alpha_record",
        (_like((2 * n,), upstream.dtype, upstream),
         _like((_jax_ffi.RECORD_BYTES,), jnp.uint8, upstream)))(
            upstream, weight, global_pairs=np.int64(global_pairs),
            gradient_reduction=np.int64(1 if s.gradient_scale_mean else 0), **s.attrs())


def _backward_call(s, u_global, offset, squared_norms, lse_all, alpha_all, n, records=None,
                   temperature=None):
    """grad_a, grad_b; with records (every device's backward record), after their agreement. With a
    traced temperature, (grad_a, grad_b, this device's share of dJ/dT)."""
    args = (u_global, offset, squared_norms, lse_all, alpha_all)
    if temperature is not None:
        args += (temperature.astype(u_global.dtype),)
    if records is not None:
        args = (records,) + args
    args = _same_vma(*args)
    d = u_global.shape[1]
    t = u_global.dtype
    if temperature is not None:
        return jax.ffi.ffi_call(
            "simclr_backward_t" if records is None else "simclr_agree_backward_t",
            (_like((n, d), t, args[0]), _like((n, d), t, args[0]), _like((), t, args[0])))(
                *args, reduction=np.int64(_REDUCTIONS[s.reduction]), threads=np.int64(s.threads),
                negative_rows=np.int64(s.negative_rows))
    return jax.ffi.ffi_call(
        "simclr_backward" if records is None else "simclr_agree_backward",
        (_like((n, d), t, args[0]), _like((n, d), t, args[0])))(
            *args, temperature=np.float64(s.temperature),
            reduction=np.int64(_REDUCTIONS[s.reduction]), threads=np.int64(s.threads),
            negative_rows=np.int64(s.negative_rows))


def _gather_rows(s, u_local):
    """u_global [2G, d] and this device's first anchor row (an int32 scalar)."""
    if s.axis_name is None:
        return u_local, jnp.zeros((), jnp.int32)
    u_global = jax.lax.all_gather(u_local, s.axis_name, tiled=True)
    offset = jax.lax.axis_index(s.axis_name).astype(jnp.int32) * np.int32(u_local.shape[0])
    return u_global, offset


def _forward(s, za, zb, weight, negatives, temperature=None):
    """negatives: None, or this device's extra negatives [K, d] (K > 0), appended to u_global as
    unit rows after the batch's (every device's, gathered, when the scope is global)."""
    n, d = za.shape
    negatives_unit = None
    if s.axis_name is None:
        u_local, squared_norms = _normalize(za, zb)
        if negatives is not None:
            negatives_unit = _normalize_rows(negatives)
    else:
        # The record checks the negatives too (an empty [0, d] when there are none).
        own = negatives if negatives is not None else jnp.zeros((0, d), za.dtype)
        u_local, squared_norms, weight, own_unit = _agreed_normalize(s, za, zb, weight, own)
        if negatives is not None:
            negatives_unit = own_unit
            if s.negatives_scope == _args.negatives_scope_code("global"):
                negatives_unit = jax.lax.all_gather(negatives_unit, s.axis_name, tiled=True)
    u_global, offset = _gather_rows(s, u_local)
    if negatives_unit is not None:
        u_global = jnp.concatenate(_same_vma(u_global, negatives_unit), axis=0)
    row_lse, _, values = _forward_call(s, u_global, offset, weight, n, temperature)
    return values, (u_global, offset, squared_norms, row_lse, weight)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _loss(s, za, zb, weight, negatives):
    return _forward(s, za, zb, weight, negatives)[0]


def _loss_fwd(s, za, zb, weight, negatives):
    return _forward(s, za, zb, weight, negatives)


def _loss_bwd(s, res, g):
    # The extra negatives get no gradient (None: a zero cotangent), as under stop_gradient.
    return _backward(s, res, g)[:3] + (None,)


def _backward(s, res, g, temperature=None):
    """The cotangents (za, zb, weight), and with a traced temperature this device's share of dJ/dT
    as a fourth."""
    u_global, offset, squared_norms, row_lse, weight = res
    n = squared_norms.shape[0] // 2
    global_pairs = (u_global.shape[0] - s.negative_rows) // 2
    if s.gradient_scale_mean and s.axis_name is not None:
        # The caller averages the devices' gradients (pmean): undo its 1/P.
        g = g * jax.lax.axis_size(s.axis_name)
    if s.axis_name is None:
        alpha = _alpha_call(s, g.astype(u_global.dtype), weight, n, global_pairs)
        grads = _backward_call(s, u_global, offset, squared_norms, row_lse, alpha, n,
                               temperature=temperature)
    else:
        # A bad upstream gradient on one device travels in its record, so every device joins the
        # gathers below and then fails alike in the backward's agreement.
        alpha, record = _alpha_record_call(s, g.astype(u_global.dtype), weight, n, global_pairs)
        records = jax.lax.all_gather(record, s.axis_name)
        # One gather of both per-row scalars: [P, 2, 2n] -> two [2G] vectors in U's row order.
        both = jax.lax.all_gather(jnp.stack(_same_vma(row_lse, alpha)), s.axis_name)
        lse_all = both[:, 0, :].reshape(-1)
        alpha_all = both[:, 1, :].reshape(-1)
        grads = _backward_call(s, u_global, offset, squared_norms, lse_all, alpha_all, n, records,
                               temperature)
    # sample_weight is treated as a constant (as Keras does): no gradient flows into it.
    return (grads[0], grads[1], None) + tuple(grads[2:])  # (None: a zero cotangent)


_loss.defvjp(_loss_fwd, _loss_bwd)


# A traced temperature (a learnable one): the temperature is an operand of the forward and backward
# steps, and the backward also gives dJ/dT (docs/math.md section 4.6).
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _loss_t(s, za, zb, weight, negatives, temperature):
    return _forward(s, za, zb, weight, negatives, temperature)[0]


def _loss_t_fwd(s, za, zb, weight, negatives, temperature):
    values, res = _forward(s, za, zb, weight, negatives, temperature)
    return values, (res, temperature)


def _loss_t_bwd(s, res, g):
    res, temperature = res
    grad_a, grad_b, _, share = _backward(s, res, g, temperature)
    grad_t = share.astype(temperature.dtype)
    if s.axis_name is not None and s.axis_name not in _varying_axes(temperature):
        # A temperature replicated over the axis (the same on every device, as a parameter is):
        # its cotangent must be replicated too, the sum of the devices' shares, which is dJ/dT of the
        # global objective, what JAX's own transpose of a replicated input gives. The shares carry
        # the "mean" scaling of the upstream (every device's times the devices); undo it here, as
        # the result is no longer averaged.
        grad_t = jax.lax.psum(grad_t, s.axis_name)
        if s.gradient_scale_mean:
            grad_t = grad_t / jax.lax.axis_size(s.axis_name)
    return grad_a, grad_b, None, None, grad_t


_loss_t.defvjp(_loss_t_fwd, _loss_t_bwd)


def _traced(temperature):
    """Whether a temperature is a JAX value (an array or a tracer: a learnable temperature), rather
    than static configuration (a number, a numpy scalar)."""
    return isinstance(temperature, (jax.Array, jax.core.Tracer))


def _on_gpu(x):
    """Whether x is a concrete array placed on a GPU (tracers: unknown until the call runs)."""
    if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
        return False
    try:
        return any(dev.platform not in ("cpu",) for dev in x.devices())
    except Exception:  # a deleted array, an exotic sharding: leave it to the call
        return False


def _checked_negatives(negatives, negatives_scope, za):
    """negatives as an array [K, d] of za's dtype with K > 0, or None (none, or K = 0); raised now,
    at trace time: a bad scope, a dtype or width other than the views'."""
    scope = _args.negatives_scope_code(negatives_scope)
    if negatives is None:
        return None, scope
    negatives = jnp.asarray(negatives)
    # The library's rules and messages (the shape, the views' dtype and width), at trace time.
    _core.check_negatives(list(negatives.shape), jnp.dtype(negatives.dtype).name, scope,
                          za.shape[1] if za.ndim == 2 else 0, jnp.dtype(za.dtype).name)
    if negatives.shape[0] == 0:
        return None, scope
    if _on_gpu(negatives) or _on_gpu(za):
        raise NotImplementedError(
            "simclr_loss.jax: extra negatives (negatives=) are not supported on the GPU (the device "
            "step calls refuse them); run the loss on the CPU, or pass none")
    return negatives, scope


def simclr_loss(za, zb, *, temperature=0.05, reduction="auto", sample_weight=None, axis_name=None,
                global_batch_size=None, gradient_reduction="sum", threads=0, negatives=None,
                negatives_scope="local"):
    """TensorFlow Similarity's SimCLRLoss of the pairs (za[i], zb[i]), differentiable in za and zb.

    za, zb: [n, d] float32, float64 (jax_enable_x64), bfloat16 or float16 (computed in float32 and
    returned in the input dtype). reduction: "auto" (= "sum_over_batch_size"), "none" (returns [n]),
    "sum" or "sum_over_batch_size". sample_weight: None, a scalar, [n], [n, 1], [1] or [1, 1]
    (treated as a constant: no gradient flows into it).

    axis_name: inside shard_map or pmap, the mesh axis whose devices share their rows as negatives
    (every device holds n pairs; G = n * devices). The returned loss is then this device's share of
    the global objective, and "auto" / "sum_over_batch_size" need global_batch_size (an int, or
    "infer": G) to divide by. gradient_reduction: "sum" when the devices' parameter gradients are
    combined with jax.lax.psum, "mean" when with jax.lax.pmean (the returned gradients are then
    scaled by the number of devices). threads: CPU threads of the custom calls (0: the default).

    temperature: a number (static configuration), or a JAX scalar (a learnable temperature: a traced
    value, differentiable; jax.grad gives dJ/dT, docs/math.md section 4.6). Under axis_name a traced
    temperature replicated over the axis gets the global dJ/dT (the devices' shares summed, as JAX
    sums the cotangent of a replicated input); one that varies over the axis gets this device's share
    (scaled as the embeddings' gradients by gradient_reduction), and must hold the same value on
    every device (not checked). CPU only: the CUDA handlers have no traced temperature yet.

    negatives: None, or extra negatives [K, d] of the views' dtype (K may be 0: none), e.g. a memory
    bank (memory_bank_negatives). They are L2-normalised and join every anchor's candidates in the
    softmax's denominator, as negatives only (never anchors or positives); they get no gradient (as
    under jax.lax.stop_gradient: jax.grad with respect to them gives zeros) and do not count in G.
    dJ/dT of a traced temperature accounts for them. negatives_scope (with axis_name): "local" (each
    device's anchors see the rows that device passes, as lightly's NTXentLoss(memory_bank_size) under
    DDP) or "global" (every device's rows, all-gathered over the axis like the batch, a MoCo-style
    shared queue; K is then the same on every device, as shard_map's shapes are). Without axis_name
    the scope changes nothing. CPU only: the CUDA handlers refuse extra negatives (an error when the
    call runs; at trace time already for arrays placed on a GPU).
    """
    traced_t = _traced(temperature)
    if traced_t:
        if jnp.size(temperature) != 1 or not jnp.issubdtype(jnp.result_type(temperature),
                                                            jnp.floating):
            raise TypeError("temperature must be a number > 0, got a {} array of shape {}".format(
                jnp.result_type(temperature), jnp.shape(temperature)))
        traced_value = jnp.reshape(temperature, ())
        temperature = 1.0  # a placeholder in the static configuration; the call runs at the value
    temperature, reduction = _checked_loss_config(temperature, reduction)
    global_batch = _global_batch_code(global_batch_size)
    gradient_reduction = _args.gradient_reduction_name(_args.gradient_reduction(gradient_reduction))
    threads = _args.threads(threads)
    if axis_name is not None:
        # The distribution rule is the library's (its agreement step, here on one record): raised
        # at trace time, as the configuration is static.
        loss = _args.make_loss(temperature, reduction)
        loss.agree(loss.record_call(0, 0, _core.FLOAT32, global_batch_size=global_batch))
    za = jnp.asarray(za)
    zb = jnp.asarray(zb)
    _register()
    weight = None if sample_weight is None else jnp.asarray(sample_weight)
    # The library's shape rules (2-D views alike, Keras's sample_weight shapes), raised now, as
    # shapes are static; the values are checked when the call runs.
    _core.check_shapes(list(za.shape), list(zb.shape),
                       None if weight is None else list(weight.shape))
    if za.dtype != zb.dtype:
        raise TypeError("za is {} but zb is {}; both views take the same dtype".format(
            za.dtype, zb.dtype))
    negatives, scope = _checked_negatives(negatives, negatives_scope, za)
    negative_rows = 0
    if negatives is not None:
        negative_rows = negatives.shape[0]
        if axis_name is not None and scope == _args.negatives_scope_code("global"):
            negative_rows *= int(jax.lax.axis_size(axis_name))
    out_dtype = za.dtype
    t = _compute_dtype(za.dtype, "za")
    if weight is None:
        weight = jnp.ones((), t)
    else:
        if not jnp.issubdtype(weight.dtype, jnp.number):
            raise TypeError("sample_weight must be numeric, got " + str(weight.dtype))
        weight = weight.astype(t)
    if negatives is not None:
        negatives = jax.lax.stop_gradient(negatives.astype(t))
    s = _Static(temperature, reduction, global_batch, axis_name, gradient_reduction == "mean",
                sample_weight is not None, int(threads), scope, negative_rows)
    if traced_t:
        values = _loss_t(s, za.astype(t), zb.astype(t), jax.lax.stop_gradient(weight), negatives,
                         traced_value)
    else:
        values = _loss(s, za.astype(t), zb.astype(t), jax.lax.stop_gradient(weight), negatives)
    if reduction != "none":
        values = values.reshape(())
    return values.astype(out_dtype)


class SimCLRLoss(_ConfigMixin):
    """TensorFlow Similarity's SimCLRLoss as a callable for JAX: loss(za, zb, sample_weight=None).

    SimCLRLoss(temperature=0.05, reduction="auto", name=None, axis_name=None,
    global_batch_size=None, gradient_reduction="sum", negatives_scope="local"); a call may pass
    negatives=[K, d] (extra negatives, simclr_loss's); get_config() / from_config() take and give
    TF Similarity's dict {'reduction': ..., 'name': ..., 'temperature': ...} (the JAX-only settings
    are arguments of the constructor and of from_config, not part of that dict).
    """

    _repr_name = "simclr_loss.jax.SimCLRLoss"

    def __init__(self, temperature=0.05, reduction="auto", name=None, *, axis_name=None,
                 global_batch_size=None, gradient_reduction="sum", negatives_scope="local"):
        self._loss = _args.make_loss(temperature, reduction, name)
        _args.negatives_scope_code(negatives_scope)
        self.axis_name = axis_name
        self.global_batch_size = global_batch_size
        self.gradient_reduction = gradient_reduction
        self.negatives_scope = negatives_scope

    @classmethod
    def from_config(cls, config, **kwargs):
        """From get_config()'s dict or the Keras wrapper; kwargs: axis_name, global_batch_size,
        gradient_reduction, negatives_scope."""
        out = cls(**kwargs)
        out._loss = _args.from_config(config)
        return out

    def __reduce__(self):
        # Pickles and copies: rebuilt from the config and the JAX settings.
        return (_rebuild_jax_loss, (type(self), self.get_config(), self.axis_name,
                                    self.global_batch_size, self.gradient_reduction,
                                    self.negatives_scope))

    def __call__(self, za, zb, sample_weight=None, temperature=None, negatives=None):
        """temperature: None (the configuration's), or this call's own: a number, or a traced
        scalar (a learnable temperature, differentiable); get_config() keeps the configuration's.
        negatives: None or extra negatives [K, d] (no gradient), in the scope of the constructor."""
        c = self.get_config()
        return simclr_loss(za, zb, temperature=c["temperature"] if temperature is None else temperature,
                           reduction=c["reduction"],
                           sample_weight=sample_weight, axis_name=self.axis_name,
                           global_batch_size=self.global_batch_size,
                           gradient_reduction=self.gradient_reduction, negatives=negatives,
                           negatives_scope=self.negatives_scope)


def _rebuild_jax_loss(cls, config, axis_name, global_batch_size, gradient_reduction,
                      negatives_scope="local"):
    return cls.from_config(config, axis_name=axis_name, global_batch_size=global_batch_size,
                           gradient_reduction=gradient_reduction, negatives_scope=negatives_scope)


# ---- a memory bank of extra negatives (functional, FIFO) ----

@jax.tree_util.register_pytree_node_class
class MemoryBank:
    """The state of a FIFO memory bank of extra negatives (memory_bank_init): a pytree.

    bank: [size, d] L2-normalised rows; pointer: an int32 scalar array, the row the next update
    writes first (the oldest row once the bank is full); filled: a Python int, how many rows hold
    entries (static: the pytree's auxiliary data, so shapes derived from it are static under
    jax.jit). Rows [0, filled) are the valid ones: a bank fills from row 0, and once full stays full.
    A jitted function taking or returning a bank is traced again for each value of filled while the
    bank fills (at most ceil(size / rows per update) + 1 times), never after; a bank made full at
    the start (memory_bank_init(..., key=...)) is traced once.
    """

    __slots__ = ("bank", "pointer", "filled")

    def __init__(self, bank, pointer, filled):
        self.bank = bank
        self.pointer = pointer
        self.filled = filled

    @property
    def size(self):
        return self.bank.shape[0]

    def tree_flatten(self):
        return (self.bank, self.pointer), (self.filled,)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], children[1], aux[0])

    def __repr__(self):
        return "simclr_loss.jax.MemoryBank(size={}, dim={}, dtype={}, filled={})".format(
            self.bank.shape[0], self.bank.shape[1], self.bank.dtype, self.filled)


def _unit_rows(x):
    # tf.math.l2_normalize's rows (the library's): x * rsqrt(max(sum(x^2), 1e-12)), in float32 or
    # wider.
    wide = jnp.promote_types(x.dtype, jnp.float32)
    y = x.astype(wide)
    y = y * jax.lax.rsqrt(jnp.maximum(jnp.sum(y * y, axis=1, keepdims=True), 1e-12))
    return y.astype(x.dtype)


def memory_bank_init(size, dim, dtype=jnp.float32, *, key=None):
    """A memory bank of `size` rows of width `dim` (a MemoryBank).

    key None: empty (filled 0; memory_bank_negatives gives [0, dim] until the first update).
    key a jax.random key: full from the start of random unit rows (as lightly's MemoryBankModule),
    so that K = size is the same at every step."""
    size, dim = int(size), int(dim)
    if size < 1 or dim < 1:
        raise ValueError("memory_bank_init: size and dim must be >= 1, got {} and {}".format(size, dim))
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError("memory_bank_init: dtype must be a float dtype, got {}".format(dtype))
    pointer = jnp.zeros((), jnp.int32)
    if key is None:
        return MemoryBank(jnp.zeros((size, dim), dtype), pointer, 0)
    bank = _unit_rows(jax.random.normal(key, (size, dim), jnp.promote_types(dtype, jnp.float32)))
    return MemoryBank(bank.astype(dtype), pointer, size)


def memory_bank_update(state, z):
    """A new MemoryBank with the rows of z [m, d] enqueued, FIFO: detached (stop_gradient) and
    L2-normalised, in the bank's dtype, replacing the oldest rows once the bank is full (of an m
    larger than the bank, only the last `size` rows are kept). Pure: state is left as it was."""
    if not isinstance(state, MemoryBank):
        raise TypeError("memory_bank_update: state must be a MemoryBank (memory_bank_init)")
    z = jnp.asarray(z)
    size, d = state.bank.shape
    if z.ndim != 2 or z.shape[1] != d:
        raise ValueError("memory_bank_update: z must be [m, {}], got shape {}".format(d, z.shape))
    rows = _unit_rows(jax.lax.stop_gradient(z).astype(state.bank.dtype))
    m = rows.shape[0]
    if m == 0:
        return state
    if m > size:
        rows = rows[m - size:]
        m = size
    index = (state.pointer + jnp.arange(m, dtype=jnp.int32)) % size
    bank = state.bank.at[index].set(rows)
    pointer = ((state.pointer + m) % size).astype(jnp.int32)
    return MemoryBank(bank, pointer, min(size, state.filled + m))


def memory_bank_negatives(state):
    """The bank's valid rows [filled, d] (static shape), for simclr_loss(..., negatives=...): pass
    them before enqueuing this step's embeddings (as lightly's memory bank does), e.g.
        loss = simclr_loss(za, zb, negatives=memory_bank_negatives(bank))
        bank = memory_bank_update(bank, zb)"""
    if not isinstance(state, MemoryBank):
        raise TypeError("memory_bank_negatives: state must be a MemoryBank (memory_bank_init)")
    return state.bank[:state.filled]
