"""The conformance table's input errors through simclr_loss.torch over a torch.distributed (gloo) group:
the LAST rank gets the bad input, every other rank good input, and every rank must raise the same
exception type with the same message, naming that rank, within a bounded time (a short process-group
timeout: a rank left waiting fails after it).

    mpirun -np P python3 tests/conformance/conformance_gloo_worker.py file:///tmp/unique-store-path

Rank 0 prints "conformance_gloo_worker: N cases passed, 0 failed, P ranks" when every case passed on
every rank; a rank whose case ends otherwise exits 1 at once.
"""

import datetime
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_conformance import ERROR_CASES, TABLE, Case  # noqa: E402

import simclr_loss.torch as st  # noqa: E402

RANK = int(os.environ["OMPI_COMM_WORLD_RANK"])
SIZE = int(os.environ["OMPI_COMM_WORLD_SIZE"])
TIMEOUT = 20


def main():
    dist.init_process_group("gloo", init_method=sys.argv[1], rank=RANK, world_size=SIZE,
                            timeout=datetime.timedelta(seconds=TIMEOUT))
    torch.set_num_threads(1)
    last = SIZE - 1
    defaults = Case(dict(TABLE["error_defaults"], id="defaults"), "error")
    # Input errors only: a bad temperature or reduction fails at construction, before any
    # collective, on its rank alone (every front end does so).
    cases = [c for c in ERROR_CASES
             if c.temperature == defaults.temperature and c.reduction == defaults.reduction]
    passed = 0
    for case in cases:
        mine = case if RANK == last else defaults
        w = None if mine.weight is None else torch.from_numpy(mine.weight)
        start = time.monotonic()
        try:
            # A call's own temperature goes as a learnable one would: a tensor that requires grad.
            t = mine.temperature if mine.call_temperature is None else torch.tensor(
                mine.call_temperature, dtype=torch.float64, requires_grad=True)
            extra = mine.negatives_kwargs()
            if extra.get("negatives") is not None:
                extra["negatives"] = torch.from_numpy(extra["negatives"])
            st.simclr_loss(torch.from_numpy(mine.za), torch.from_numpy(mine.zb), w,
                           temperature=t, reduction=mine.reduction,
                           process_group=dist.group.WORLD, **extra)
            got = ("no exception", "")
        except Exception as exc:  # noqa: BLE001 - compared below
            got = (type(exc).__name__, str(exc))
        seconds = time.monotonic() - start
        everyone = [None] * SIZE
        dist.all_gather_object(everyone, got)
        ok = (all(g == got for g in everyone) and got[0] == case.raw["error"]
              and case.raw["message"] in got[1] and got[1].endswith("(rank %d)" % last)
              and seconds < TIMEOUT / 2)
        if not ok:
            print(f"rank {RANK}: case {case.id}: {got} in {seconds:.1f} s; every rank: {everyone}",
                  flush=True)
            sys.exit(1)
        passed += 1
    dist.barrier()
    dist.destroy_process_group()
    if RANK == 0:
        print(f"conformance_gloo_worker: {passed} cases passed, 0 failed, {SIZE} ranks", flush=True)


if __name__ == "__main__":
    main()
