#!/usr/bin/env python3
"""simclr_loss.jax against TensorFlow Similarity's SimCLRLoss written in plain JAX, in the same process.

Both are jax.jit(jax.value_and_grad(loss)) of the pair (za, zb) at G pairs of dimension d, float32,
reduction sum_over_batch_size, temperature 0.05. The peer is the TF Similarity formulation: rows
normalised as tf.math.l2_normalize, logits [a b^T | a a^T] / T and [b a^T | b b^T] / T with the self
entries at -1e9, softmax cross-entropy against the positive, both directions summed. Prints each
one's median step time over --repeat steps after one warm-up (the two interleaved), the speedup, and
the temporary memory XLA plans for each compiled step (memory_analysis).

    build/venv/bin/python benchmarks/bench_jax.py --pairs 8192 --dim 128 --repeat 5
"""

import argparse
import os
import platform
import statistics
import time

import numpy as np


def tfsim_loss(za, zb, temperature):
    import jax
    import jax.numpy as jnp

    def normalize(x):
        return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=1, keepdims=True), 1e-12))

    a, b = normalize(za), normalize(zb)
    n = a.shape[0]
    masks = jnp.eye(n, dtype=a.dtype) * 1e9
    labels = jax.nn.one_hot(jnp.arange(n), 2 * n, dtype=a.dtype)
    aa = a @ a.T / temperature - masks
    bb = b @ b.T / temperature - masks
    ab = a @ b.T / temperature
    ba = b @ a.T / temperature

    def cross_entropy(logits):
        return -jnp.sum(labels * jax.nn.log_softmax(logits, axis=1), axis=1)

    per_example = (cross_entropy(jnp.concatenate([ab, aa], axis=1))
                   + cross_entropy(jnp.concatenate([ba, bb], axis=1)))
    return jnp.mean(per_example)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=8192, help="G, the pairs of the batch")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--repeat", type=int, default=5, help="timed steps after one warm-up")
    p.add_argument("--temperature", type=float, default=0.05)
    args = p.parse_args()

    import jax
    import jax.numpy as jnp
    import simclr_loss.jax as sj

    rng = np.random.default_rng(0)
    za = jnp.asarray(rng.normal(size=(args.pairs, args.dim)).astype(np.float32))
    zb = jnp.asarray(rng.normal(size=(args.pairs, args.dim)).astype(np.float32))
    t = args.temperature
    candidates = {
        "simclr_loss.jax": lambda a, b: sj.simclr_loss(a, b, temperature=t),
        "plain JAX (TF Similarity)": lambda a, b: tfsim_loss(a, b, t),
    }
    print("jax {}, {} cpu(s) visible, {} {}, G={}, d={}, float32, median of {}".format(
        jax.__version__, os.cpu_count(), platform.machine(), platform.processor() or "",
        args.pairs, args.dim, args.repeat))
    steps, times, outputs = {}, {}, {}
    for name, fn in candidates.items():
        step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
        mem = step.lower(za, zb).compile().memory_analysis()
        outputs[name] = jax.block_until_ready(step(za, zb))  # compile and warm up
        steps[name], times[name] = step, []
        print("{:28s} XLA temporary memory of the compiled step: {:.1f} MiB".format(
            name, mem.temp_size_in_bytes / 2**20))
    # Interleaved, so that load from elsewhere on a shared machine falls on both alike.
    for _ in range(args.repeat):
        for name, step in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(step(za, zb))
            times[name].append(time.perf_counter() - t0)
    results = {}
    for name in candidates:
        ts = times[name]
        value, grads = outputs[name]
        results[name] = (statistics.median(ts), float(value), grads)
        print("{:28s} median {:.3f} s (min {:.3f}, max {:.3f}); loss {:.6f}".format(
            name, statistics.median(ts), min(ts), max(ts), float(value)))
    (ts, vs, gs), (tp, vp, gp) = results.values()
    rel = max(float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(y))) for x, y in zip(gs, gp))
    print("speedup {:.2f}x; loss difference {:.2e}; max relative gradient difference {:.2e}".format(
        tp / ts, abs(vs - vp), rel))


if __name__ == "__main__":
    main()
