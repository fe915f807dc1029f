"""The collectives of simclr_loss.torch's CUDA route (simclr_loss/_torch_cuda.py, _TorchDeviceComm) on a CPU
machine: one process per rank under mpirun, torch.distributed's gloo. The device addresses the library
would pass are host addresses here, wrapped by a stand-in for the CUDA-array wrapper, so what runs is
the route's own logic: the uneven all_gather_v (padding to the largest part, then compacting), the host
all_gather of the agreement records, and the first gather of a call, which carries an input error of
one rank to every rank. The device path itself needs a GPU (scripts/device_check.sh).

Usage: mpirun -np N python torch_cuda_glue_worker.py file:///path/to/store
"""

import ctypes
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

from simclr_loss import _torch_cuda as tc

RANK = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0")))
SIZE = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("PMI_SIZE", "1")))


def check(cond, what):
    if not cond:
        raise AssertionError(f"rank {RANK}: {what}")


def host_bytes(address, nbytes, device):
    """The stand-in for the CUDA-array wrapper: nbytes of host memory at address, zero copy."""
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    return torch.from_numpy(np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(address)))


def part(rank, nbytes, seed):
    """Rank `rank`'s bytes of a gather, rebuildable on every rank."""
    return ((np.arange(nbytes, dtype=np.int64) * 7 + rank * 31 + seed) % 251).astype(np.uint8)


def gather_v(comm, counts, seed):
    send = part(RANK, counts[RANK], seed)
    recv = np.full(sum(counts), 255, dtype=np.uint8)
    send_buf = send if send.size else np.zeros(1, dtype=np.uint8)
    recv_buf = recv if recv.size else np.zeros(1, dtype=np.uint8)
    comm.all_gather_v(send_buf.ctypes.data, int(counts[RANK]), recv_buf.ctypes.data, counts, 0)
    expect = np.concatenate([part(r, c, seed) for r, c in enumerate(counts)])
    check(np.array_equal(recv, expect), f"all_gather_v with counts {counts}")


def main():
    dist.init_process_group("gloo", init_method=sys.argv[1], rank=RANK, world_size=SIZE)
    tc._bytes_tensor = host_bytes
    tc._TorchDeviceComm._on = lambda self, stream: tc.contextlib.nullcontext()
    comm = tc._TorchDeviceComm(dist.group.WORLD, torch.device("cpu"))
    check(comm.rank == RANK and comm.size == SIZE, "rank and size")
    check(comm.host_device == torch.device("cpu"), "a gloo group gathers the records on the CPU")

    # Equal parts (gathered in place), uneven parts, an empty rank, every rank empty.
    gather_v(comm, [12] * SIZE, 1)
    gather_v(comm, [5 + 3 * r for r in range(SIZE)], 2)
    gather_v(comm, [0 if r == SIZE - 1 else 4 * (r + 1) for r in range(SIZE)], 3)
    gather_v(comm, [0] * SIZE, 4)

    # The host all-gather of the agreement records: every rank's bytes in rank order.
    got = comm.host_all_gather(bytes(part(RANK, 512, 5)))
    check(got == b"".join(bytes(part(r, 512, 5)) for r in range(SIZE)), "host_all_gather")
    # One read-back (.cpu()) per record gather, whatever the group's size: on a CUDA-only group,
    # where the gathered buffer is on the device, that is one host synchronisation.
    reads = []
    cpu = torch.Tensor.cpu

    def counted_cpu(self, *args, **kwargs):
        reads.append(self.numel())
        return cpu(self, *args, **kwargs)

    torch.Tensor.cpu = counted_cpu
    try:
        got = comm.host_all_gather(bytes(part(RANK, 512, 6)))
    finally:
        torch.Tensor.cpu = cpu
    check(got == b"".join(bytes(part(r, 512, 6)) for r in range(SIZE)), "host_all_gather again")
    check(reads == [512 * SIZE], f"one read-back of every rank's record, got {reads}")

    # The first gather of a call: every rank's rows, or the first failing rank's error everywhere,
    # through the library's records (simclr_record_call, simclr_step_agree).
    from simclr_loss import _args, _core
    loss = _args.make_loss(0.1, "sum")
    rows = [3 * r + (r % 2) for r in range(SIZE)]
    check(comm.agree(loss, rows[RANK], 8, _core.FLOAT32, None) == rows, "agree: rows")
    last = SIZE - 1
    error = (ValueError, "simclr_loss.torch: za must be 2-D [n, d]") if RANK == last else None
    try:
        comm.agree(loss, rows[RANK], 8, _core.FLOAT32, error)
        check(False, "agree did not raise")
    except ValueError as exc:
        check(str(exc) == f"simclr_loss.torch: za must be 2-D [n, d] (rank {last})", f"message {exc}")
    error = (TypeError, "bad dtype") if RANK in (0, last) else None
    try:
        comm.agree(loss, rows[RANK], 8, _core.FLOAT32, error)
        check(False, "agree did not raise")
    except TypeError as exc:
        check(str(exc) == "bad dtype (rank 0)", f"the lowest failing rank's message: {exc}")
    # What the ranks must agree on is the library's check: a dimension that differs.
    if SIZE > 1:
        try:
            comm.agree(loss, rows[RANK], 8 if RANK != last else 9, _core.FLOAT32, None)
            check(False, "agree did not raise")
        except ValueError as exc:
            check("embedding dimension differs across ranks" in str(exc), f"mismatch {exc}")
    check(comm.agree(loss, rows[RANK], 8, _core.FLOAT32, None) == rows,
          "the group works after the errors")

    dist.barrier()
    dist.destroy_process_group()
    if RANK == 0:
        print(f"torch_cuda_glue_worker: OK, {SIZE} ranks")


if __name__ == "__main__":
    main()
