"""simclr_loss.jax on a GPU against the CPU path, for scripts/device_check.sh (docs/gpu.md).

    python3 tests/device/device_jax_check.py parity

Runs the loss and its gradient on the first GPU (the XLA FFI handlers of platform CUDA,
simclr_loss._jax_ffi_cuda) and on the CPU (simclr_loss._jax_ffi), under jax.jit and under
jax.shard_map over a one-device mesh (axis_name set: the agreement, the record steps and XLA's
all-gathers on the GPU), for sum_over_batch_size, sum with a sample weight, and none with a
per-example upstream gradient. Prints one JSON line; exits 1 when an error exceeds 1e-5 (float32,
relative, norm-wise) or a GPU computation fails. Needs jax with CUDA and simclr built with
SIMCLR_WITH_CUDA=ON and jax's FFI headers on PYTHONPATH.
"""

import json
import sys


def rel(a, b):
    import numpy as np

    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def parity():
    import numpy as np
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, PartitionSpec as P

    import simclr_loss.jax as sj

    if sj._jax_ffi_cuda is None:
        raise RuntimeError("simclr_loss._jax_ffi_cuda is not built (SIMCLR_WITH_CUDA=ON and jax's FFI headers)")
    gpu = jax.devices("gpu")[0]
    cpu = jax.devices("cpu")[0]
    rng = np.random.default_rng(0)
    n, d = 1000, 128
    za = rng.standard_normal((n, d)).astype(np.float32)
    zb = rng.standard_normal((n, d)).astype(np.float32)
    w = (0.5 + rng.random(n)).astype(np.float32)
    up = (0.5 + rng.random(n)).astype(np.float32)
    cases = {
        "sum_over_batch_size": dict(reduction="sum_over_batch_size"),
        "sum_weighted": dict(reduction="sum", sample_weight=w),
        "none": dict(reduction="none"),
    }
    out = {"n": n, "d": d, "gpu": str(gpu)}
    worst = 0.0
    for name, kw in cases.items():
        weight = kw.get("sample_weight")

        def objective(a, b, weight=weight, kw=kw, axis_name=None):
            args = dict(kw, sample_weight=weight, temperature=0.1)
            if axis_name is not None:
                args.update(axis_name=axis_name, global_batch_size="infer")
            v = sj.simclr_loss(a, b, **args)
            return jnp.sum(v * up) if kw["reduction"] == "none" else v

        f = jax.jit(jax.value_and_grad(objective, argnums=(0, 1)))
        results = {}
        for dev_name, dev in (("cpu", cpu), ("gpu", gpu)):
            a, b = jax.device_put(za, dev), jax.device_put(zb, dev)
            value, (ga, gb) = f(a, b)
            results[dev_name] = (np.asarray(value), np.asarray(ga), np.asarray(gb))
        mesh = Mesh(np.array([gpu]), ("x",))
        sharded = jax.jit(jax.shard_map(
            lambda a, b: jax.value_and_grad(lambda a, b: objective(a, b, axis_name="x"),
                                            argnums=(0, 1))(a, b),
            mesh=mesh, in_specs=(P("x"), P("x")), out_specs=(P(), (P("x"), P("x")))))
        value, (ga, gb) = sharded(jax.device_put(za, gpu), jax.device_put(zb, gpu))
        results["gpu_shard_map"] = (np.asarray(value), np.asarray(ga), np.asarray(gb))
        ref = results["cpu"]
        for key in ("gpu", "gpu_shard_map"):
            errs = [rel(x, y) for x, y in zip(results[key], ref)]
            out[name + "_" + key] = {"loss_rel_err": errs[0], "grad_rel_err": max(errs[1:])}
            worst = max(worst, *errs)
    out["worst_rel_err"] = worst
    out["ok"] = worst <= 1e-5
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] != "parity":
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(parity())
    except Exception as e:  # one JSON line either way, for the summary
        print(json.dumps({"ok": False, "error": "{}: {}".format(type(e).__name__, e)[:500]}), flush=True)
        sys.exit(1)
