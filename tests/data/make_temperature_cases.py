"""The expected values of the call_temperature cases of tests/conformance/cases.json.

An NT-Xent written from docs/math.md section 1 alone (two directions, the self entry left out, every
row l2-normalised with TensorFlow's clamp), in numpy long double, sharing no code with the library;
dJ/dT by Richardson-extrapolated central differences in T (truncation O(h^4), step 1e-4 T). Run:
python3 tests/data/make_temperature_cases.py (needs numpy).
"""

import numpy as np


def loss_vector(za, zb, t):
    def normalise(x):
        x = np.asarray(x, np.longdouble)
        return x / np.sqrt(np.maximum((x * x).sum(1, keepdims=True), 1e-12))

    a, b = normalise(za), normalise(zb)
    n = len(a)

    def cross_entropy(h1, h2):
        out = []
        for i in range(n):
            logits = [h1[i] @ h2[j] / t for j in range(n)]
            logits += [h1[i] @ h1[j] / t for j in range(n) if j != i]
            m = max(logits)
            out.append(m + np.log(sum(np.exp(z - m) for z in logits)) - logits[i])
        return np.array(out)

    return cross_entropy(a, b) + cross_entropy(b, a)


def objective(za, zb, t, weight, reduction):
    """J = the sum of what the call returns (upstream ones)."""
    losses = loss_vector(za, zb, t) * (1 if weight is None else np.asarray(weight, np.longdouble))
    return losses.sum() / (len(losses) if reduction in ("auto", "sum_over_batch_size") else 1)


def d_objective_dt(za, zb, t, weight, reduction):
    t = np.longdouble(t)
    h = np.longdouble(1e-4) * t
    j = lambda x: objective(za, zb, x, weight, reduction)  # noqa: E731
    d1 = (j(t + h) - j(t - h)) / (2 * h)
    d2 = (j(t + h / 2) - j(t - h / 2)) / h
    return (4 * d2 - d1) / 3


if __name__ == "__main__":
    za, zb = [[1, 0], [0, 1], [1, 1]], [[1, 0], [0, 1], [1, -1]]
    pairs = [[1, 0], [0, 1]]
    for name, args in (
            ("call_temperature_two_pairs_sum", (pairs, pairs, 0.5, None, "sum")),
            ("call_temperature_three_weighted_sobs", (za, zb, 1.0, [1, 2, 3], "sum_over_batch_size")),
            ("call_temperature_three_none_float32", (za, zb, 0.5, None, "none"))):
        per = loss_vector(*args[:3]) * (1 if args[3] is None else np.asarray(args[3]))
        print(name, "loss", [float(x) for x in per], "objective", float(objective(*args)),
              "grad_temperature", repr(float(d_objective_dt(*args))))
