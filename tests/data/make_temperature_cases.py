"""The expected values of the call_temperature cases of tests/conformance/cases.json.

An NT-Xent written from docs/math.md section 1 alone (two directions, the self entry left out, every
row l2-normalised with TensorFlow's clamp), in numpy long double, sharing no code with the library;
dJ/dT by Richardson-extrapolated central differences in T (truncation O(h^4), step 1e-4 T). Run:
python3 tests/data/make_temperature_cases.py (needs numpy). The NT-Xent itself is that of
make_negatives_cases.py, with no negatives.
"""

import numpy as np

# The one reference NT-Xent of the case scripts, here with no extra negatives.
from make_negatives_cases import loss_vector as _loss_vector, objective as _objective, richardson


def loss_vector(za, zb, t):
    return _loss_vector(za, zb, [], t)


def objective(za, zb, t, weight, reduction):
    """J = the sum of what the call returns (upstream ones)."""
    return _objective(za, zb, [], t, weight, reduction)


def d_objective_dt(za, zb, t, weight, reduction):
    t = np.longdouble(t)
    return richardson(lambda x: objective(za, zb, x, weight, reduction), t, np.longdouble(1e-4) * t)


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
