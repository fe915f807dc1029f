"""simclr_loss.torch under mpirun: torch.distributed (gloo) across Open MPI's ranks, checked against one
process on the whole batch and against the independent autograd reference.

    mpirun -np P python3 tests/python/torch_mpi_worker.py file:///tmp/unique-store-path

Rank and size come from Open MPI's environment (OMPI_COMM_WORLD_RANK / _SIZE); the init method
(file:// or tcp://127.0.0.1:PORT) must be new for every run. Rank 0 prints "torch_mpi_worker: OK ..."
and every rank exits 0 when all checks pass.
"""

import datetime
import itertools
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402
import simclr_loss.torch as st  # noqa: E402

RANK = int(os.environ["OMPI_COMM_WORLD_RANK"])
SIZE = int(os.environ["OMPI_COMM_WORLD_SIZE"])
CHECKS = [0]


def check(cond, what):
    if not cond:
        raise AssertionError(f"rank {RANK}: {what}")
    CHECKS[0] += 1


def close(got, want, tol, what):
    got = got.detach().double()
    want = want.detach().double()
    scale = max(float(want.abs().max()) if want.numel() else 0.0, 1.0)
    err = float((got - want).abs().max()) if want.numel() else 0.0
    check(err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} x {scale:.3g}")


def splits(g, parts):
    """Every way to give g rows to `parts` ranks in order (empty ranks included)."""
    for cuts in itertools.combinations(range(g + parts - 1), parts - 1):
        counts, prev = [], -1
        for c in cuts + (g + parts - 1,):
            counts.append(c - prev - 1)
            prev = c
        yield counts


def data(g, d, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    za = torch.randn(g, d, generator=gen, dtype=torch.float64) * torch.exp(torch.rand(g, 1, generator=gen, dtype=torch.float64) * 2 - 1)
    zb = torch.randn(g, d, generator=gen, dtype=torch.float64)
    if g > 2:
        za[g // 2] = 0  # a zero row in the middle of the global batch
    w = torch.rand(g, generator=gen, dtype=torch.float64) * 2
    up = torch.randn(g, generator=gen, dtype=torch.float64)
    return za.to(dtype), zb.to(dtype), w, up.to(dtype)


def one_split(counts, za, zb, w, up, temperature, dtype, tol, with_reference):
    g = za.shape[0]
    start = sum(counts[:RANK])
    mine = slice(start, start + counts[RANK])
    # (reduction, global_batch_size, per-rank upstream scalar): J = sum over ranks of upstream_r J_r.
    cases = [("none", None, None), ("sum", None, 1.0 + RANK), ("sum_over_batch_size", g, 1.0),
             ("auto", "infer", 0.5 + RANK)]
    for reduction, gbs, scalar in cases:
        for mode in ("sum", "mean"):
            a = za[mine].clone().requires_grad_(True)
            b = zb[mine].clone().requires_grad_(True)
            crit = st.SimCLRLoss(temperature, reduction, process_group=dist.group.WORLD, global_batch_size=gbs,
                                 gradient_reduction=mode)
            out = crit(a, b, sample_weight=w[mine])
            out.backward(up[mine] if reduction == "none" else torch.tensor(scalar, dtype=dtype))
            # One process on the whole batch: reduction none with the upstream each row's rank applied.
            a1 = za.clone().requires_grad_(True)
            b1 = zb.clone().requires_grad_(True)
            full = st.simclr_loss(a1, b1, w, temperature=temperature, reduction="none")
            if reduction == "none":
                full_up = up
                want_value = full[mine]
            else:
                owner = torch.repeat_interleave(torch.arange(SIZE), torch.tensor(counts))
                scalars = torch.tensor([1.0 + r if reduction == "sum" else (1.0 if reduction != "auto" else 0.5 + r)
                                        for r in range(SIZE)], dtype=dtype)[owner]
                den = 1.0 if reduction == "sum" else float(g)
                full_up = scalars / den
                want_value = full[mine].sum() / den
            full.backward(full_up)
            factor = SIZE if mode == "mean" else 1
            what = f"P={SIZE} split {counts} {reduction} {dtype} gradient_reduction={mode}"
            close(out, want_value, tol, what + " value")
            close(a.grad, factor * a1.grad[mine], tol, what + " grad_a")
            close(b.grad, factor * b1.grad[mine], tol, what + " grad_b")
            if with_reference and mode == "sum":
                a2 = za.clone().requires_grad_(True)
                b2 = zb.clone().requires_grad_(True)
                rows = ref.per_example(a2, b2, temperature)  # the global batch, autograd through it all
                if reduction == "none":
                    r_val = (rows * w)[mine]
                else:
                    r_val = (rows * w)[mine].sum() / den
                (rows * w * full_up).sum().backward()
                close(out, r_val, tol, what + " value vs reference")
                close(a.grad, a2.grad[mine], tol, what + " grad_a vs reference")
                close(b.grad, b2.grad[mine], tol, what + " grad_b vs reference")


def same_error_everywhere(fn, expected_type, fragment):
    try:
        fn()
        got = ("no exception", "")
    except Exception as exc:  # every rank must raise the same
        got = (type(exc).__name__, str(exc))
    everyone = [None] * SIZE
    dist.all_gather_object(everyone, got)
    check(all(e == everyone[0] for e in everyone), f"ranks raised different exceptions: {everyone}")
    check(got[0] == expected_type.__name__, f"expected {expected_type.__name__}, got {got}")
    check(fragment in got[1], f"expected {fragment!r} in {got[1]!r}")


def errors():
    last = SIZE - 1
    d = 4
    good = torch.randn(3, d)
    wg = dist.group.WORLD

    def call(za, zb=None, **kw):
        kw.setdefault("global_batch_size", "infer")
        return st.simclr_loss(za, za if zb is None else zb, process_group=wg, **kw)

    # The distribution rule: auto without a global batch size, the same ValueError on every rank.
    same_error_everywhere(lambda: st.simclr_loss(good, good, process_group=wg), ValueError, "")
    # NaN on the last rank only.
    nan = good.clone()
    nan[1, 2] = float("nan")
    same_error_everywhere(lambda: call(nan if RANK == last else good), ValueError, "NaN")
    if SIZE > 1:  # another embedding dimension, or float64, on the last rank only
        same_error_everywhere(lambda: call(torch.randn(2, d + 1) if RANK == last else good), ValueError, "")
        same_error_everywhere(lambda: call(good.double() if RANK == last else good), TypeError, "")
    # A bad sample weight on the last rank.
    same_error_everywhere(lambda: call(good, sample_weight=torch.ones(5) if RANK == last else None),
                          ValueError, "Incompatible shapes")
    # Errors found in Python before the core: an integer tensor, a tensor on another device, 1-D input.
    same_error_everywhere(lambda: call(good.long() if RANK == last else good), TypeError, "dtype")
    same_error_everywhere(lambda: call(torch.empty(3, d, device="meta") if RANK == last else good),
                          NotImplementedError, "za is on device meta; the loss takes a dense CPU or CUDA tensor")
    same_error_everywhere(lambda: call(good[0] if RANK == last else good), ValueError, "2-D")
    # After all that the group still works.
    out = call(good, reduction="sum")
    total = out.detach().clone()
    dist.all_reduce(total)
    check(torch.isfinite(total).all(), "a call after the errors")


def main():
    init = sys.argv[1]
    dist.init_process_group("gloo", init_method=init, rank=RANK, world_size=SIZE,
                            timeout=datetime.timedelta(seconds=120))
    torch.set_num_threads(1)
    # Every split of a small batch, empty ranks included, in both dtypes (reference on a subset).
    g_small = 5 if SIZE <= 3 else 4
    for dtype, tol in ((torch.float64, 1e-11), (torch.float32, 2e-5)):
        za, zb, w, up = data(g_small, 3, dtype, seed=10 + SIZE)
        for i, counts in enumerate(splits(g_small, SIZE)):
            one_split(counts, za, zb, w, up, 0.2, dtype, tol, with_reference=(i % 3 == 0))
    # A larger uneven batch against the reference.
    g = 37
    counts = [g // SIZE + (3 if r == 0 else 0) - (3 if r == SIZE - 1 and SIZE > 1 else 0) for r in range(SIZE)]
    counts[-1] += g - sum(counts)
    for dtype, tol in ((torch.float64, 1e-11), (torch.float32, 2e-5)):
        za, zb, w, up = data(g, 16, dtype, seed=99)
        one_split(counts, za, zb, w, up, 0.1, dtype, tol, with_reference=True)
    errors()
    checks = [None] * SIZE
    dist.all_gather_object(checks, CHECKS[0])
    if RANK == 0:
        print(f"torch_mpi_worker: OK, {SIZE} ranks, {sum(checks)} checks", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
