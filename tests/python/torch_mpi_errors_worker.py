"""simclr_loss.torch under mpirun: an input error on one rank of a torch.distributed (gloo) call reaches
every rank through the library's agreement step, promptly, as the same exception naming that rank.

    mpirun -np P python3 tests/python/torch_mpi_errors_worker.py file:///tmp/unique-store-path

The process group's timeout is short (TIMEOUT seconds): a rank left waiting in a collective fails
after it, and every case must end well before it. A rank whose case ends otherwise exits 1 at once
(mpirun then stops the others: the ranks are no longer in step). Rank 0 prints
"torch_mpi_errors_worker: OK ..." when every case passed on every rank.
"""

import datetime
import os
import sys
import time

import torch
import torch.distributed as dist

import simclr_loss.torch as st

RANK = int(os.environ["OMPI_COMM_WORLD_RANK"])
SIZE = int(os.environ["OMPI_COMM_WORLD_SIZE"])
TIMEOUT = 20


def outcome(fn):
    start = time.monotonic()
    try:
        fn()
        got = ("no exception", "")
    except Exception as exc:  # every rank must raise the same
        got = (type(exc).__name__, str(exc))
    return got, time.monotonic() - start


def main():
    dist.init_process_group("gloo", init_method=sys.argv[1], rank=RANK, world_size=SIZE,
                            timeout=datetime.timedelta(seconds=TIMEOUT))
    torch.set_num_threads(1)
    last = SIZE - 1
    good = torch.randn(3, 4)
    wg = dist.group.WORLD

    def call(za, zb=None, **kw):
        kw.setdefault("global_batch_size", "infer")
        return st.simclr_loss(za, za if zb is None else zb, process_group=wg, **kw)

    here = RANK == last
    cases = [
        # Rejected in Python before anything reaches the library (the dtype was read before the
        # check: an AttributeError on that rank alone, the others waiting).
        ("a list", lambda: call(good.tolist() if here else good), "TypeError",
         "simclr_loss.torch: za must be a dense CPU or CUDA tensor [n, d] of float32, float64, float16 "
         "or bfloat16, got list [["),
        ("a sparse tensor", lambda: call(good.to_sparse() if here else good), "TypeError",
         "simclr_loss.torch: za is a torch.sparse_coo tensor; the loss takes a dense CPU or CUDA tensor"),
        ("a meta tensor", lambda: call(torch.empty(3, 4, device="meta") if here else good),
         "NotImplementedError", "simclr_loss.torch: za is on device meta; the loss takes a dense CPU"),
        ("an integer tensor", lambda: call(good.long() if here else good), "TypeError",
         "simclr_loss.torch: za has dtype torch.int64"),
        ("a sample weight that is not numbers",
         lambda: call(good, sample_weight="heavy" if here else None), "TypeError",
         "sample_weight must be None, a number or an array of numbers"),
        ("a bad global_batch_size",
         lambda: call(good, global_batch_size="all" if here else "infer"), "ValueError",
         "global_batch_size must be None, \"infer\" or an integer >= 0, got 'all'"),
        ("a gradient_reduction that is not a string",
         lambda: call(good, gradient_reduction=None if here else "mean"), "TypeError",
         "gradient_reduction must be \"sum\" or \"mean\", got NoneType None"),
        ("a temperature that is not a number",
         lambda: call(good, temperature="warm" if here else 0.1), "TypeError",
         "temperature must be a number > 0, got str 'warm'"),
        # Rejected by the extension (its own checks take the same path).
        ("a 1-D tensor", lambda: call(good[0] if here else good), "ValueError",
         "za must be 2-D [n, d], got shape (4,)"),
    ]
    for name, fn, kind, fragment in cases:
        cases_ok(name, fn, kind, [fragment, f"(rank {last})"])
    # The gradient convention is the library's: every rank must pass the same.
    cases_ok("gradient_reduction differing",
             lambda: call(good, gradient_reduction="sum" if RANK == 0 else "mean"), "ValueError",
             ["gradient_reduction differs between ranks: rank 0 has 'sum', rank 1 has 'mean'"])
    # After all that the group still works.
    a = good.clone().requires_grad_(True)
    call(a, reduction="sum").backward()
    if not torch.isfinite(a.grad).all():
        print(f"rank {RANK}: a call after the errors gave {a.grad}", flush=True)
        sys.exit(1)
    if RANK == 0:
        print(f"torch_mpi_errors_worker: OK, {SIZE} ranks, {len(cases) + 1} cases", flush=True)
    dist.destroy_process_group()


def cases_ok(name, fn, kind, fragments):
    got, seconds = outcome(fn)
    ok = got[0] == kind and all(f in got[1] for f in fragments) and seconds < TIMEOUT / 2
    if not ok:
        print(f"rank {RANK}: {name}: expected {kind} with {fragments} within {TIMEOUT / 2} s, got "
              f"{got} after {seconds:.1f} s", flush=True)
        sys.exit(1)
    everyone = [None] * SIZE
    dist.all_gather_object(everyone, got)
    if any(e != got for e in everyone):
        print(f"rank {RANK}: {name}: the ranks raised different exceptions: {everyone}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
