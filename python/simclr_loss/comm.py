"""Communicators for collective loss calls.

A loss call given a communicator is collective: every rank calls it (and the backward) in the same
order, and each rank's loss contrasts its rows with the rows of every rank (docs/distributed.md).

- `from_mpi4py(comm)`: an mpi4py communicator. With the extension built with MPI, the library's MPI
  communicator over a duplicate of `comm`; otherwise mpi4py's own collectives on a duplicate
  (`comm.Dup()`), called back from the library.
- `from_callbacks(rank, size, all_gather, all_gather_v, barrier=None)`: any transport given as Python
  functions (torch.distributed, a test double).
"""

import weakref

from . import _core

Comm = _core.Comm


def from_callbacks(rank, size, all_gather, all_gather_v, barrier=None, backend="python"):
    """A communicator whose collectives are Python functions; every rank calls them in the same order.

    all_gather(send, recv): send is a uint8 array of `bytes` bytes, recv a writable uint8 array of
        size * bytes that must receive every rank's send, rank r's at r * bytes.
    all_gather_v(send, recv, recv_bytes): rank r sends recv_bytes[r] bytes; recv (sum(recv_bytes)
        bytes) receives them back to back in rank order.
    barrier(): returns when every rank has entered it; None uses a 1-byte all_gather.
    The arrays are views of the library's buffers, valid only during the call. An exception raised by
    a function fails the loss call with simclr_loss.CommError (its message names the exception, which is
    also the CommError's __cause__).
    """
    return _core.Comm.from_callbacks(int(rank), int(size), str(backend), all_gather, all_gather_v,
                                     barrier)


def from_mpi4py(comm, timeout=0.0, use_mpi=None):
    """A communicator over the ranks of the mpi4py communicator `comm` (collective over `comm`).

    The library works on a duplicate of `comm`, so its traffic never mixes with the caller's.
    use_mpi: True forces the library's MPI communicator (an error when the extension was built
    without MPI), False forces mpi4py's collectives, None picks MPI when the extension has it.
    timeout: seconds bounding every collective of the MPI communicator (0: none); the mpi4py
    collectives have no timeout.
    """
    if use_mpi is None:
        use_mpi = _core.has_mpi()
    if use_mpi:
        return _core.Comm.mpi(comm.py2f(), float(timeout))
    return _mpi4py_callbacks(comm)


def _mpi4py_callbacks(comm):
    from mpi4py import MPI

    dup = comm.Dup()
    byte = MPI.BYTE

    def all_gather(send, recv):
        dup.Allgather([send, byte], [recv, byte])

    def all_gather_v(send, recv, recv_bytes):
        displacements = [0] * len(recv_bytes)
        for r in range(1, len(recv_bytes)):
            displacements[r] = displacements[r - 1] + recv_bytes[r - 1]
        dup.Allgatherv([send, byte], [recv, (recv_bytes, displacements), byte])

    def barrier():
        dup.Barrier()

    out = _core.Comm.from_callbacks(dup.Get_rank(), dup.Get_size(), "mpi4py", all_gather,
                                    all_gather_v, barrier)
    weakref.finalize(out, _free_mpi4py, dup)
    return out


def _free_mpi4py(dup):
    from mpi4py import MPI

    if not MPI.Is_finalized():
        dup.Free()


def _is_mpi4py(comm):
    return hasattr(comm, "py2f") and hasattr(comm, "Allgatherv") and hasattr(comm, "Dup")


class _Resolver:
    """Turns a `comm=` argument into a _core.Comm, duplicating each mpi4py communicator once."""

    def __init__(self):
        self._mpi4py = {}  # id(comm) -> (weakref to comm, _core.Comm)

    def __call__(self, comm):
        if comm is None or isinstance(comm, _core.Comm):
            return comm
        if _is_mpi4py(comm):
            entry = self._mpi4py.get(id(comm))
            if entry is not None and entry[0]() is comm:
                return entry[1]
            core = from_mpi4py(comm)
            self._mpi4py[id(comm)] = (weakref.ref(comm), core)
            return core
        raise TypeError(
            "comm must be None, an mpi4py communicator or a simclr_loss.comm communicator, got "
            + type(comm).__name__)
