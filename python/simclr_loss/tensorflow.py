"""simclr_loss.tensorflow: TensorFlow Similarity's SimCLR loss as a TensorFlow custom op (CPU).

    import tensorflow as tf, simclr_loss.tensorflow as st
    per_example = st.simclr_loss(za, zb, temperature=0.1)   # [n]: both directions summed

The op library simclr_loss/_tf_ops.so is built by `pip install --no-build-isolation .` when TensorFlow is
installed for the Python that builds the package, against that very TensorFlow (docs/python.md,
"TensorFlow and Keras"). Its gradient is the library's closed form, registered with
tf.custom_gradient: TensorFlow never holds the [2G, 2G] logits, only the normalised rows ([2G, d])
and two scalars per row.

In a replica context of a tf.distribute strategy with more than one replica (inside strategy.run,
model.fit, ...), every replica contrasts its rows with the rows of all replicas (global negatives):
the rows come from the replica context's all_gather, and in the backward each row's log-sum-exp and
weight from another all_gather. Before the rows, the replicas all_gather a small record of their
inputs and check them all (the C API's agreement step), so bad input on one replica (a NaN) fails
every replica alike, naming that replica, and the strategy's collectives are not aborted.
Per-replica batches may differ in size. The loss a replica returns is for its own rows, and the
gradient it gets for them is that of the sum of all replicas' losses (what autodiff through
TensorFlow's all-gather gives), so summing the replicas' parameter gradients, as tf.distribute
does, is exact.

simclr_loss.keras.SimCLRLoss wraps this in a Keras Loss (sample_weight, reductions, distribution rule).
"""

import os

import tensorflow as tf

from . import _args, _core, _install

__all__ = ["simclr_loss"]

_ops = None


def _load_ops():
    global _ops
    if _ops is None:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_tf_ops.so")
        if not os.path.exists(path):
            raise RuntimeError(
                "simclr_loss.tensorflow needs simclr_loss/_tf_ops.so, which is compiled against the "
                "environment's own TensorFlow and so only by a build that sees it (not pip's isolated "
                "build, nor a wheel made elsewhere). With TensorFlow installed, rebuild: " + _install.REBUILD)
        try:
            _ops = tf.load_op_library(path)
        except tf.errors.NotFoundError as e:  # built against another TensorFlow (undefined symbols)
            raise RuntimeError(
                "simclr_loss/_tf_ops.so does not load with this TensorFlow " + tf.__version__ + " (it was "
                "compiled against another one: " + str(e).strip().splitlines()[0] + "); rebuild it: " +
                _install.REBUILD) from e
    return _ops


def _distributed_context():
    """The replica context when the call contrasts across more than one replica, else None."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync <= 1:
        return None
    return ctx


def _gather_records(ctx, record):
    """Every replica's agreement record, [replicas, words] int64, replica by replica."""
    return ctx.all_gather(tf.reshape(record, [1, -1]), axis=0)


def _anchor_begin(ctx, rank_rows):
    """This replica's first row in the gathered U: 2 * the pairs of the replicas before it, from
    every replica's rows as the agreement found them (exact for uneven batches, where TF Similarity
    assumes equal ones)."""
    before = tf.range(ctx.num_replicas_in_sync) < ctx.replica_id_in_sync_group
    return 2 * tf.reduce_sum(tf.where(before, rank_rows, tf.zeros_like(rank_rows)))


@tf.autograph.experimental.do_not_convert
def _per_example(za, zb, temperature, threads, negatives, scope):
    ops = _load_ops()
    temperature_t = tf.constant(temperature, tf.float64)
    ctx = _distributed_context()

    @tf.custom_gradient
    def loss(a, b):
        n = tf.shape(a, out_type=tf.int64)[0]
        negative_rows = tf.zeros([], tf.int64)
        if ctx is None and negatives is None:
            u_local, squared_norms = ops.simclr_normalize(a, b)
            u_global, begin, rank_rows = u_local, tf.zeros([], tf.int64), None
        else:
            # The agreement first: every replica's record of its inputs is gathered and checked by
            # every replica, so bad input on one replica (a NaN) fails every replica alike, naming
            # it, before the rows' all_gather that it would never join. A local call with extra
            # negatives takes the same steps with its one record, so the library checks them.
            bank = negatives if negatives is not None else tf.zeros([0, 0], a.dtype)
            record = ops.simclr_record(a, b, temperature_t, bank, negatives_scope=scope)
            records = (tf.reshape(record, [1, -1]) if ctx is None
                       else _gather_records(ctx, record))
            u_local, squared_norms, rank_rows, bank_unit = ops.simclr_agree_normalize(
                records, a, b, temperature_t, bank)
            if ctx is None:
                u_global, begin = u_local, tf.zeros([], tf.int64)
            else:
                u_global = ctx.all_gather(u_local, axis=0)
                begin = _anchor_begin(ctx, rank_rows)
            if negatives is not None:
                # The extra negatives' unit rows after the batch's: this replica's own (local
                # scope) or every replica's (global), as simclr_call_options.negative_rows says.
                if ctx is not None and scope == _args.NEGATIVES_SCOPES["global"]:
                    bank_unit = ctx.all_gather(bank_unit, axis=0)
                negative_rows = tf.shape(bank_unit, out_type=tf.int64)[0]
                u_global = tf.concat([u_global, bank_unit], axis=0)
        row_lse, per_example = ops.simclr_forward(u_global, begin, n, temperature_t,
                                                  negative_rows, threads=threads)

        def grad(upstream):
            upstream = tf.cast(upstream, u_local.dtype)
            if ctx is None:
                alpha = ops.simclr_alpha(upstream, temperature_t, threads=threads)
                return tuple(ops.simclr_backward(u_global, begin, squared_norms, row_lse, alpha,
                                                 temperature_t, negative_rows, threads=threads))
            # A bad upstream gradient on one replica travels in its record: every replica joins
            # the gathers, then fails alike in the backward's agreement. (After the forward's
            # agreement: no gather starts in a step that has already failed.)
            with tf.control_dependencies([rank_rows]):
                alpha, record = ops.simclr_alpha_record(upstream, temperature_t, threads=threads)
            records = _gather_records(ctx, record)
            # One gather of both per-row scalars: [2n, 2] per replica -> [2G, 2] in U's order.
            both = ctx.all_gather(tf.stack([row_lse, alpha], axis=1), axis=0)
            lse_all, alpha_all = both[:, 0], both[:, 1]
            return tuple(ops.simclr_agree_backward(u_global, begin, squared_norms, lse_all,
                                                   alpha_all, temperature_t, records,
                                                   negative_rows, threads=threads))

        return per_example, grad

    out = loss(za, zb)
    out.set_shape(za.shape[:1])
    return out


def simclr_loss(za, zb, temperature=0.05, threads=0, negatives=None, negatives_scope="local"):
    """TF Similarity's per-example SimCLR loss [n] of the pairs (za[i], zb[i]), both directions summed.

    za, zb: [n, d] float32 or float64 (float16 and bfloat16 are computed in float32 and returned in
    the input dtype). Differentiable in za and zb; eager, inside tf.function, and in a replica
    context (global negatives across the replicas, see the module's docstring). temperature > 0 and
    finite, else ValueError; threads: CPU threads of the library (0: its default). Bad values in
    the inputs (NaN, Inf, mismatched shapes) raise tf.errors.InvalidArgumentError with the library's
    message.

    negatives: extra negatives [K, d] (a memory bank; K may be 0), the views' dtype, which every
    anchor also contrasts with (normalised by the library; never anchors or positives; no gradient
    flows into them). negatives_scope: in a replica context, "local" (each replica's anchors see
    its own rows) or "global" (every replica's, all-gathered). Their errors (another dtype or
    width, NaN/Inf) are the library's, raised on every replica alike.
    """
    temperature = _args.temperature(temperature)
    threads = _args.threads(threads)
    scope = _args.negatives_scope_code(negatives_scope)
    za = tf.convert_to_tensor(za)
    zb = tf.convert_to_tensor(zb)
    # The library's shape rules, raised now when the static shapes are known (otherwise the op
    # raises the same message when it runs).
    if za.shape.is_fully_defined() and zb.shape.is_fully_defined():
        _core.check_shapes(za.shape.as_list(), zb.shape.as_list())
    if za.dtype != zb.dtype:
        raise TypeError("za is {} but zb is {}; both views take the same dtype".format(
            za.dtype.name, zb.dtype.name))
    dtype = za.dtype
    if dtype in (tf.float16, tf.bfloat16):
        compute = tf.float32
    elif dtype in (tf.float32, tf.float64):
        compute = dtype
    else:
        raise TypeError("za has dtype {}; simclr_loss.tensorflow takes float32, float64, float16 or "
                        "bfloat16".format(dtype.name))
    if negatives is not None:
        negatives = tf.stop_gradient(tf.convert_to_tensor(negatives))
        # In the views' dtype they are computed as the views are; any other dtype goes to the
        # library as it is, whose record refuses it (TypeError, as every front end).
        if negatives.dtype == dtype:
            negatives = tf.cast(negatives, compute)
    out = _per_example(tf.cast(za, compute), tf.cast(zb, compute), temperature, threads, negatives,
                       scope)
    return tf.cast(out, dtype)
