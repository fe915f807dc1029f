"""DistributedDataParallel with simclr_loss.torch: the parameter gradients of P ranks with uneven batches
equal those of one process on the whole global batch.

    mpirun -np P python3 tests/python/torch_ddp_worker.py INIT_METHOD {float32|float64}

Every rank also computes the one-process step itself (same seed, same data), so no file passes
between processes. gradient_reduction="mean" undoes DDP's average over ranks. Three SGD steps, each
compared parameter by parameter (relative to the largest entry of the tensor): 1e-5 in float32,
1e-10 in float64.
"""

import copy
import datetime
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import simclr_loss.torch as st

RANK = int(os.environ["OMPI_COMM_WORLD_RANK"])
SIZE = int(os.environ["OMPI_COMM_WORLD_SIZE"])


def model(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8)).to(dtype)


def main():
    init, dtype_name = sys.argv[1], sys.argv[2]
    dtype = getattr(torch, dtype_name)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    dist.init_process_group("gloo", init_method=init, rank=RANK, world_size=SIZE,
                            timeout=datetime.timedelta(seconds=120))
    torch.set_num_threads(1)
    g = 23
    # Uneven, and with 3 ranks one of them empty.
    counts = {1: [23], 2: [15, 8], 3: [14, 0, 9], 4: [7, 3, 0, 13]}[SIZE]
    start = sum(counts[:RANK])
    mine = slice(start, start + counts[RANK])

    single = model(dtype)
    ddp = DDP(copy.deepcopy(single))
    opt_single = torch.optim.SGD(single.parameters(), lr=0.5)
    opt_ddp = torch.optim.SGD(ddp.parameters(), lr=0.5)
    crit_single = st.SimCLRLoss(temperature=0.2)
    crit_ddp = st.SimCLRLoss(temperature=0.2, process_group=dist.group.WORLD, global_batch_size=g,
                             gradient_reduction="mean")
    worst = 0.0
    for step in range(3):
        gen = torch.Generator().manual_seed(100 + step)
        x = torch.randn(g, 12, generator=gen, dtype=torch.float64).to(dtype)
        xa = x + 0.3 * torch.randn(g, 12, generator=gen, dtype=torch.float64).to(dtype)
        xb = x + 0.3 * torch.randn(g, 12, generator=gen, dtype=torch.float64).to(dtype)

        opt_single.zero_grad()
        loss_single = crit_single(single(xa), single(xb))
        loss_single.backward()

        opt_ddp.zero_grad()
        loss_rank = crit_ddp(ddp(xa[mine]), ddp(xb[mine]))
        loss_rank.backward()
        total = loss_rank.detach().clone()
        dist.all_reduce(total)  # the ranks' shares add up to the global mean
        if abs(float(total) - float(loss_single)) > tol * abs(float(loss_single)):
            raise AssertionError(f"rank {RANK} step {step}: loss {float(total)} vs {float(loss_single)}")
        for (name, p1), p2 in zip(single.named_parameters(), ddp.module.parameters()):
            scale = float(p1.grad.abs().max())
            err = float((p1.grad - p2.grad).abs().max()) / scale
            worst = max(worst, err)
            if not err <= tol:
                raise AssertionError(f"rank {RANK} step {step} {name}: gradient relative error {err:.3g} > {tol:g}")
        opt_single.step()
        opt_ddp.step()
    worst_all = [None] * SIZE
    dist.all_gather_object(worst_all, worst)
    if RANK == 0:
        print(f"torch_ddp_worker: OK, {SIZE} ranks {counts}, {dtype_name}, worst relative gradient error "
              f"{max(worst_all):.3g}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
