"""The SimCLR contrastive loss (NT-Xent), computed exactly as TensorFlow Similarity's SimCLRLoss.

    import numpy as np, simclr
    loss = simclr_loss.SimCLRLoss(temperature=0.1)
    value, grad_a, grad_b = loss.value_and_gradient(za, zb)   # za, zb: [n, d] float32 or float64

`comm=` (an mpi4py communicator or a `simclr_loss.comm` communicator) contrasts every rank's rows with the
whole global batch. `simclr_loss.torch` is the PyTorch front end (autograd, torch.distributed).
"""

from . import _core, comm
from ._core import CommError, DeviceError
from ._loss import SimCLRLoss

__version__ = _core.version()

__all__ = ["SimCLRLoss", "CommError", "DeviceError", "comm", "__version__"]
