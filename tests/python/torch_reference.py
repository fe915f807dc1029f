"""An independent PyTorch autograd implementation of TensorFlow Similarity's SimCLRLoss formulation.

It shares no code with simclr: the [n, 2G] logits [h1 h2^T | h1 h1^T] / T with the anchor's own
entry pushed to -1e9, softmax cross-entropy in both directions, summed, then Keras's sample_weight and
reduction. Gradients come from torch autograd. The distributed form computes on the whole global
batch and returns one rank's rows (the loss of those rows against every embedding of the batch),
which is what the all-gather formulation computes.
"""

import torch
import torch.nn.functional as F

LARGE_NUM = 1e9


def l2_normalize(x):
    # tf.math.l2_normalize: x * rsqrt(max(sum(x^2), 1e-12))
    return x * torch.rsqrt(torch.clamp((x * x).sum(dim=1, keepdim=True), min=1e-12))


def per_example(za, zb, temperature, rows=None):
    """[G] loss of TF Similarity (or of rows = slice(start, stop) of the global batch)."""
    a, b = l2_normalize(za), l2_normalize(zb)
    g = za.shape[0]
    rows = rows if rows is not None else slice(0, g)
    idx = torch.arange(g)[rows]
    mask = F.one_hot(idx, g).to(za.dtype)

    def contrast(h1, h2):
        anchor = h1[rows]
        ab = anchor @ h2.T / temperature
        aa = anchor @ h1.T / temperature - mask * LARGE_NUM
        logits = torch.cat([ab, aa], dim=1)
        labels = idx  # the positive is column idx in the [ab | aa] row
        return F.cross_entropy(logits, labels, reduction="none")

    return contrast(a, b) + contrast(b, a)


def keras_weight(sample_weight, n, dtype):
    if sample_weight is None:
        return torch.ones(n, dtype=dtype)
    w = torch.as_tensor(sample_weight, dtype=dtype)
    if w.dim() == 2:
        assert w.shape[1] == 1
        w = w[:, 0]
    return torch.broadcast_to(w, (n,)) if w.dim() <= 1 else w


def reduce(values, weight, reduction, denominator=None):
    weighted = values * weight
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return weighted.sum()
    den = values.shape[0] if denominator is None else denominator
    return weighted.sum() / den if den else weighted.sum() * 0


def loss(za, zb, sample_weight=None, temperature=0.05, reduction="auto", rows=None,
         global_batch_size=None):
    """TF Similarity's loss of rows (default: all) of the global batch za, zb ([G, d])."""
    reduction = "sum_over_batch_size" if reduction == "auto" else reduction
    values = per_example(za, zb, temperature, rows)
    w = keras_weight(sample_weight, values.shape[0], values.dtype)
    return reduce(values, w, reduction, global_batch_size)
