"""The expected values of the extra-negatives cases of tests/conformance/cases.json.

An NT-Xent with extra negatives written from its definition alone (TF Similarity's two directions,
the self entry left out, every row of za, zb and the negatives l2-normalised with TensorFlow's clamp;
the negatives' logits join every anchor's candidates, never as anchors or positives), in numpy long
double, sharing no code with the library. Gradients of J = the sum of what the call returns, for za,
zb and T, by Richardson-extrapolated central differences (truncation O(h^4)). Run:
python3 tests/data/make_negatives_cases.py (needs numpy); it prints the cases as JSON.
"""

import json

import numpy as np


def normalise(x):
    x = np.asarray(x, np.longdouble).reshape(len(x), -1)
    return x / np.sqrt(np.maximum((x * x).sum(1, keepdims=True), 1e-12))


def loss_vector(za, zb, negatives, t):
    a, b, k = normalise(za), normalise(zb), normalise(negatives) if len(negatives) else []
    n = len(a)

    def cross_entropy(h1, h2):
        out = []
        for i in range(n):
            logits = [h1[i] @ h2[j] / t for j in range(n)]
            logits += [h1[i] @ h1[j] / t for j in range(n) if j != i]
            logits += [h1[i] @ k[j] / t for j in range(len(k))]
            m = max(logits)
            out.append(m + np.log(sum(np.exp(z - m) for z in logits)) - logits[i])
        return np.array(out)

    return cross_entropy(a, b) + cross_entropy(b, a)


def returned(za, zb, negatives, t, weight, reduction):
    losses = loss_vector(za, zb, negatives, t) * (
        1 if weight is None else np.asarray(weight, np.longdouble))
    if reduction == "none":
        return losses
    return losses.sum() / (len(losses) if reduction in ("auto", "sum_over_batch_size") else 1)


def objective(za, zb, negatives, t, weight, reduction):
    """J = the sum of what the call returns (upstream ones)."""
    return np.sum(returned(za, zb, negatives, t, weight, reduction))


def richardson(j, x, h):
    d1 = (j(x + h) - j(x - h)) / (2 * h)
    d2 = (j(x + h / 2) - j(x - h / 2)) / h
    return (4 * d2 - d1) / 3


def gradients(za, zb, negatives, t, weight, reduction):
    za, zb = np.asarray(za, np.longdouble), np.asarray(zb, np.longdouble)
    h = np.longdouble(1e-4)
    grads = []
    for which in (0, 1):
        g = np.zeros_like(za)
        for idx in np.ndindex(*za.shape):
            def j(v, which=which, idx=idx):
                views = [za.copy(), zb.copy()]
                views[which][idx] = v
                return objective(views[0], views[1], negatives, t, weight, reduction)
            g[idx] = richardson(j, (za, zb)[which][idx], h)
        grads.append(g)
    t = np.longdouble(t)
    gt = richardson(lambda x: objective(za, zb, negatives, x, weight, reduction), t,
                    np.longdouble(1e-4) * t)
    return grads[0], grads[1], gt


CASES = [
    # id, dtype, T, reduction, za, zb, weight, negatives, scope, with dJ/dT (a call temperature)
    ("negatives_two_rows_sum", "float64", 0.5, "sum", [[1, 0], [0, 1], [1, 1]],
     [[1, 0], [0, 1], [1, -1]], None, [[2, 1], [-1, 3]], None, False),
    ("negatives_global_scope_none", "float64", 0.3, "none", [[1, 0], [0, 1], [1, 1], [2, -1]],
     [[1, 0.5], [0, 1], [1, -1], [2, -0.5]], None, [[0.5, 1], [-1, -1], [3, 0]], "global", False),
    ("negatives_one_row_weighted_sobs_float32", "float32", 0.2, "sum_over_batch_size",
     [[1, 0], [0, 1], [1, 1]], [[1, 0], [0, 1], [1, -1]], [1, 2, 3], [[1, 1]], None, False),
    ("negatives_call_temperature_sum", "float64", 0.9, "sum", [[1, 0], [0, 1], [1, 1]],
     [[1, 0], [0, 1], [1, -1]], [2, 1, 0.5], [[2, 1], [-1, 3], [0, -1]], None, True),
    ("negatives_empty_equals_none", "float64", 0.5, "sum", [[1, 0], [0, 1], [1, 1]],
     [[1, 0], [0, 1], [1, -1]], None, [], None, False),
]
CALL_T = 0.4  # the call temperature of the dJ/dT case


def main():
    out = []
    for cid, dtype, t, red, za, zb, w, neg, scope, with_t in CASES:
        run_t = CALL_T if with_t else t
        value = returned(za, zb, neg, run_t, w, red)
        ga, gb, gt = gradients(za, zb, neg, run_t, w, red)
        case = {"id": cid, "dtype": dtype, "temperature": t}
        if with_t:
            case["call_temperature"] = CALL_T
        case.update({"reduction": red, "za": za, "zb": zb,
                     "sample_weight": None if w is None else {"shape": [len(w)], "values": w},
                     "negatives": neg if neg else {"shape": [0, 2]}})
        if scope is not None:
            case["negatives_scope"] = scope
        case["loss"] = [float(x) for x in value] if red == "none" else float(value)
        case["grad_za"] = [[float(x) for x in row] for row in ga]
        case["grad_zb"] = [[float(x) for x in row] for row in gb]
        if with_t:
            case["grad_temperature"] = float(gt)
        case["source"] = ("tests/data/make_negatives_cases.py (an independent NT-Xent with extra "
                          "negatives in long double; gradients by Richardson central differences)")
        out.append(case)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
