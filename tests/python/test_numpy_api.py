"""simclr_loss.SimCLRLoss on numpy arrays against TensorFlow Similarity's goldens, its Keras config, its
errors, and its handling of dtypes and memory layouts."""

import math
import pickle

import numpy as np
import pytest

import simclr_loss


def test_golden_values_and_gradients(golden_case, golden_arrays, check_golden):
    c = golden_case
    za, zb, weight = golden_arrays(c)
    loss = simclr_loss.SimCLRLoss(temperature=c["temperature"], reduction=c["reduction"])
    value, grad_a, grad_b = loss.value_and_gradient(za, zb, sample_weight=weight)
    assert value.dtype == za.dtype and grad_a.dtype == za.dtype and grad_b.dtype == za.dtype
    assert grad_a.shape == za.shape and grad_b.shape == zb.shape
    check_golden(c, value, grad_a, grad_b)
    # The plain call gives the same loss as value_and_gradient.
    np.testing.assert_array_equal(loss(za, zb, sample_weight=weight), value)


def test_golden_file_covers_both_dtypes_and_every_reduction(golden_single):
    cases = golden_single["cases"]
    assert len(cases) >= 50
    assert {c["dtype"] for c in cases} == {"float32", "float64"}
    assert {c["reduction"] for c in cases} == {"auto", "none", "sum", "sum_over_batch_size"}


# ---- hand-derived values (docs/math.md; the closed form 2 ln(2N - 1) for identical rows) ----

def test_identical_rows_give_the_closed_form():
    n = 6
    z = np.tile(np.array([[0.3, -1.2, 2.0]]), (n, 1))
    loss = simclr_loss.SimCLRLoss(temperature=0.5, reduction="none")
    np.testing.assert_allclose(loss(z, z), np.full(n, 2 * math.log(2 * n - 1)), rtol=1e-13)


def test_hand_checked_two_by_two():
    za = zb = np.array([[1.0, 0.0], [0.0, 1.0]])
    per = 2 * (math.log(math.e + 2) - 1)
    np.testing.assert_allclose(simclr_loss.SimCLRLoss(1.0, "none")(za, zb), [per, per], rtol=1e-13)
    np.testing.assert_allclose(simclr_loss.SimCLRLoss(1.0, "sum")(za, zb), 2 * per, rtol=1e-13)


# ---- dtypes ----

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["auto", "none", "sum", "sum_over_batch_size"])
def test_output_dtype_follows_the_input(dtype, reduction):
    rng = np.random.default_rng(1)
    za = rng.standard_normal((5, 4)).astype(dtype)
    zb = rng.standard_normal((5, 4)).astype(dtype)
    value, ga, gb = simclr_loss.SimCLRLoss(0.1, reduction).value_and_gradient(za, zb)
    assert value.dtype == dtype and ga.dtype == dtype and gb.dtype == dtype
    assert value.shape == ((5,) if reduction == "none" else ())


def test_float32_agrees_with_float64_to_float32_rounding():
    rng = np.random.default_rng(2)
    za, zb = rng.standard_normal((2, 9, 7))
    loss = simclr_loss.SimCLRLoss(0.2, "none")
    v64, ga64, _ = loss.value_and_gradient(za, zb)
    v32, ga32, _ = loss.value_and_gradient(za.astype(np.float32), zb.astype(np.float32))
    np.testing.assert_allclose(v32, v64, rtol=1e-5)
    np.testing.assert_allclose(ga32, ga64, atol=1e-5 * np.abs(ga64).max())


def test_mixed_dtypes_are_a_type_error():
    a = np.ones((3, 2), np.float32)
    with pytest.raises(TypeError, match="za is float32 but zb is float64"):
        simclr_loss.SimCLRLoss()(a, a.astype(np.float64))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, np.complex128])
def test_non_float_inputs_are_a_type_error(dtype):
    a = np.ones((3, 2), dtype)
    with pytest.raises(TypeError, match="za has dtype .*float32 or float64"):
        simclr_loss.SimCLRLoss()(a, a)


def test_float16_is_refused_by_the_host_call():
    a = np.ones((3, 2), np.float16)
    with pytest.raises(RuntimeError, match="float16"):
        simclr_loss.SimCLRLoss()(a, a)


def test_lists_are_read_through_numpy():
    za = [[1.0, 0.0], [0.0, 1.0]]
    got = simclr_loss.SimCLRLoss(1.0, "none")(za, za)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, [2 * (math.log(math.e + 2) - 1)] * 2, rtol=1e-13)


# ---- memory layouts: any layout gives the contiguous result ----

def _layouts(x):
    """Views and copies of x holding the same values in other layouts."""
    n, d = x.shape
    wide = np.zeros((n, d + 5), x.dtype)
    wide[:, 1:d + 1] = x                       # rows with a stride > d: read in place
    every_other_row = np.zeros((2 * n, d), x.dtype)
    every_other_row[::2] = x
    every_other_col = np.zeros((n, 2 * d), x.dtype)
    every_other_col[:, ::2] = x                # column stride 2: copied once
    reversed_rows = np.ascontiguousarray(x[::-1])[::-1]  # negative row stride
    return {
        "row_padded": wide[:, 1:d + 1],
        "strided_rows": every_other_row[::2],
        "strided_cols": every_other_col[:, ::2],
        "transposed_copy": np.asfortranarray(x),        # Fortran order: column-major
        "transposed_view": np.ascontiguousarray(x.T).T,
        "negative_stride": reversed_rows,
        "read_only": _read_only(x.copy()),
    }


def _read_only(x):
    x.flags.writeable = False
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["row_padded", "strided_rows", "strided_cols", "transposed_copy",
                                    "transposed_view", "negative_stride", "read_only"])
def test_non_contiguous_input_gives_the_contiguous_result(dtype, layout):
    rng = np.random.default_rng(3)
    za = rng.standard_normal((7, 5)).astype(dtype)
    zb = rng.standard_normal((7, 5)).astype(dtype)
    w = rng.uniform(0.5, 2, 7)
    loss = simclr_loss.SimCLRLoss(0.1, "sum")
    want = loss.value_and_gradient(za, zb, sample_weight=w)
    a, b = _layouts(za)[layout], _layouts(zb)[layout]
    np.testing.assert_array_equal(a, za)  # the same values, another layout
    got = loss.value_and_gradient(a, b, sample_weight=w)
    for g, x in zip(got, want):
        np.testing.assert_array_equal(g, x)
    assert got[1].flags.c_contiguous and got[1].shape == (7, 5)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(4)
    za = rng.standard_normal((6, 3))
    zb = rng.standard_normal((6, 3))
    keep_a, keep_b = za.copy(), zb.copy()
    simclr_loss.SimCLRLoss().value_and_gradient(za, zb)
    np.testing.assert_array_equal(za, keep_a)
    np.testing.assert_array_equal(zb, keep_b)


# ---- sample weights and global batch size ----

def test_sample_weight_shapes_that_mean_the_same():
    rng = np.random.default_rng(5)
    za, zb = rng.standard_normal((2, 4, 3))
    loss = simclr_loss.SimCLRLoss(0.3, "none")
    w = np.array([0.5, 1.0, 2.0, 0.0])
    np.testing.assert_array_equal(loss(za, zb, sample_weight=w), loss(za, zb, w.reshape(4, 1)))
    np.testing.assert_array_equal(loss(za, zb, sample_weight=2.5), loss(za, zb, [2.5]))
    np.testing.assert_array_equal(loss(za, zb, sample_weight=[[2.5]]), loss(za, zb, 2.5))
    np.testing.assert_allclose(loss(za, zb, sample_weight=w), w * loss(za, zb), rtol=1e-15)


def test_sum_over_batch_size_divides_by_n_not_the_weights():
    # Keras: weights [1, 0, 1, 0] on the per-example losses give sum(w * l) / N.
    rng = np.random.default_rng(6)
    za, zb = rng.standard_normal((2, 4, 3))
    per = simclr_loss.SimCLRLoss(0.3, "none")(za, zb)
    w = np.array([1.0, 0.0, 1.0, 0.0])
    got = simclr_loss.SimCLRLoss(0.3, "sum_over_batch_size")(za, zb, sample_weight=w)
    np.testing.assert_allclose(got, (per * w).sum() / 4, rtol=1e-14)


def test_global_batch_size_divides_the_sum():
    rng = np.random.default_rng(7)
    za, zb = rng.standard_normal((2, 5, 3))
    total = simclr_loss.SimCLRLoss(0.3, "sum")(za, zb)
    loss = simclr_loss.SimCLRLoss(0.3)
    np.testing.assert_allclose(loss(za, zb, global_batch_size=20), total / 20, rtol=1e-14)
    np.testing.assert_allclose(loss(za, zb, global_batch_size=np.int64(8)), total / 8, rtol=1e-14)
    np.testing.assert_allclose(loss(za, zb, global_batch_size="infer"), total / 5, rtol=1e-14)
    assert loss(za, zb, global_batch_size=0) == 0


# ---- config ----

def test_default_config_is_tf_similarity_s():
    cfg = simclr_loss.SimCLRLoss().get_config()
    assert cfg == {"reduction": "auto", "name": None, "temperature": 0.05}
    assert list(cfg) == ["reduction", "name", "temperature"]


@pytest.mark.parametrize("kwargs", [
    {},
    {"temperature": 0.1, "reduction": "sum"},
    {"temperature": 1.0, "reduction": "none", "name": "simclr_loss"},
    {"temperature": 0.123456789012345, "reduction": "sum_over_batch_size", "name": ""},
])
def test_config_round_trip(kwargs):
    loss = simclr_loss.SimCLRLoss(**kwargs)
    cfg = loss.get_config()
    for k, v in kwargs.items():
        assert cfg[k] == v
    again = simclr_loss.SimCLRLoss.from_config(cfg)
    assert again.get_config() == cfg
    assert list(again.get_config()) == ["reduction", "name", "temperature"]
    assert pickle.loads(pickle.dumps(loss)).get_config() == cfg


def test_from_config_fills_missing_keys_with_defaults():
    assert simclr_loss.SimCLRLoss.from_config({"temperature": 0.2}).get_config() == {
        "reduction": "auto", "name": None, "temperature": 0.2}
    assert simclr_loss.SimCLRLoss.from_config({}).get_config() == simclr_loss.SimCLRLoss().get_config()


@pytest.mark.parametrize("class_name", ["Similarity>SimCLRLoss", "SimCLRLoss"])
def test_keras_wrapper(class_name):
    wrapper = {"class_name": class_name, "module": "tensorflow_similarity.losses",
               "registered_name": "Similarity>SimCLRLoss",
               "config": {"reduction": "sum", "name": "x", "temperature": 0.5}}
    loss = simclr_loss.SimCLRLoss.from_config(wrapper)
    assert loss.get_config() == {"reduction": "sum", "name": "x", "temperature": 0.5}
    assert (loss.temperature, loss.reduction, loss.name) == (0.5, "sum", "x")


def test_keras_wrapper_of_another_class_is_a_value_error():
    with pytest.raises(ValueError, match='class_name must be "Similarity>SimCLRLoss"'):
        simclr_loss.SimCLRLoss.from_config({"class_name": "TripletLoss", "config": {}})


def test_numpy_scalars_in_a_config():
    loss = simclr_loss.SimCLRLoss.from_config({"temperature": np.float64(0.25)})
    assert loss.temperature == 0.25


# ---- errors: the library's types and messages ----

def test_bad_reduction():
    with pytest.raises(ValueError) as e:
        simclr_loss.SimCLRLoss(reduction="mean")
    assert str(e.value).startswith("Invalid Reduction Key: mean.")
    for key in ("auto", "none", "sum", "sum_over_batch_size"):
        assert key in str(e.value)
    with pytest.raises(ValueError, match="Invalid Reduction Key: SUM."):
        simclr_loss.SimCLRLoss.from_config({"reduction": "SUM"})


@pytest.mark.parametrize("t", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature(t):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        simclr_loss.SimCLRLoss(temperature=t)


def test_unknown_config_key_is_a_type_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'margin'"):
        simclr_loss.SimCLRLoss.from_config({"temperature": 0.1, "margin": 1.0})


@pytest.mark.parametrize("cfg,what", [({"temperature": "0.1"}, "temperature must be a number"),
                                      ({"reduction": 1}, "reduction must be a string"),
                                      ({"name": 3}, "name must be a string or null")])
def test_config_value_of_the_wrong_type_is_a_type_error(cfg, what):
    with pytest.raises(TypeError, match=what):
        simclr_loss.SimCLRLoss.from_config(cfg)


def test_config_that_is_not_a_dict_is_a_type_error():
    with pytest.raises(TypeError, match="must be a JSON object"):
        simclr_loss.SimCLRLoss.from_config([1, 2])


def test_name_of_the_wrong_type():
    with pytest.raises(TypeError, match="name must be a string or None"):
        simclr_loss.SimCLRLoss(name=3)


def test_shape_mismatch():
    with pytest.raises(ValueError, match=r"za and zb must have the same shape: \[5, 3\] vs. \[4, 3\]"):
        simclr_loss.SimCLRLoss()(np.ones((5, 3)), np.ones((4, 3)))


@pytest.mark.parametrize("shape", [(6,), (2, 3, 1), ()])
def test_inputs_must_be_2d(shape):
    a = np.ones(shape)
    with pytest.raises(ValueError, match="za must be 2-D"):
        simclr_loss.SimCLRLoss()(a, a)


def test_nan_and_inf_name_the_row():
    a = np.ones((5, 3))
    a[3, 1] = np.nan
    with pytest.raises(ValueError, match="za has NaN at row 3"):
        simclr_loss.SimCLRLoss()(a, np.ones((5, 3)))
    b = np.ones((5, 3), np.float32)
    b[4, 0] = np.inf
    with pytest.raises(ValueError, match="zb has Inf at row 4"):
        simclr_loss.SimCLRLoss()(np.ones((5, 3), np.float32), b)


@pytest.mark.parametrize("weight,what", [
    (np.ones(3), r"Incompatible shapes: \[5\] vs. \[3\]"),
    (np.ones((5, 2)), "Can not squeeze dim"),
    (np.ones((1, 5)), "Can not squeeze dim"),
    (np.ones((5, 1, 1)), "sample_weight of rank 3 is not supported for a \[5\] loss"),
    (np.array([1, np.nan, 1, 1, 1]), "sample_weight has NaN at index 1"),
])
def test_bad_sample_weight(weight, what):
    with pytest.raises(ValueError, match=what):
        simclr_loss.SimCLRLoss()(np.ones((5, 3)), np.ones((5, 3)), sample_weight=weight)


@pytest.mark.parametrize("g,error", [(-1, ValueError), (-5, ValueError), ("all", ValueError),
                                     (2.0, TypeError), (True, TypeError)])
def test_bad_global_batch_size(g, error):
    with pytest.raises(error, match="global_batch_size"):
        simclr_loss.SimCLRLoss()(np.ones((2, 3)), np.ones((2, 3)), global_batch_size=g)


def test_bad_comm_is_a_type_error():
    with pytest.raises(TypeError, match="comm must be None, an mpi4py communicator"):
        simclr_loss.SimCLRLoss()(np.ones((2, 3)), np.ones((2, 3)), comm=object())


def test_repr():
    assert repr(simclr_loss.SimCLRLoss(0.5, "sum", "n")) == \
        "SimCLRLoss(temperature=0.5, reduction='sum', name='n')"


# ---- argument messages: each names the argument and what it accepts (simclr_loss/_args.py) ----

@pytest.mark.parametrize("t,shown", [("abc", "str 'abc'"), (None, "NoneType None"),
                                     ([0.1], r"list \[0.1\]"), (True, "bool True")])
def test_temperature_that_is_not_a_number(t, shown):
    with pytest.raises(TypeError, match="temperature must be a number > 0, got " + shown):
        simclr_loss.SimCLRLoss(temperature=t)


def test_numeric_temperatures_of_other_types():
    for t in (np.float32(0.25), np.array(0.25), 1):
        assert simclr_loss.SimCLRLoss(temperature=t).temperature == float(t)


@pytest.mark.parametrize("g,error,what", [
    (float("nan"), TypeError, 'global_batch_size must be None, "infer" or an integer >= 0, got float nan'),
    (float("inf"), TypeError, 'global_batch_size must be None, "infer" or an integer >= 0, got float inf'),
    ([1], TypeError, r'global_batch_size must be None, "infer" or an integer >= 0, got list \[1\]'),
    (2**70, ValueError, r"global_batch_size must be .*an integer in \[0, 2\*\*63 - 1\] \(int64\), got "
                        "1180591620717411303424"),
    (-3, ValueError, r"an integer in \[0, 2\*\*63 - 1\] \(int64\), got -3"),
])
def test_global_batch_size_messages(g, error, what):
    with pytest.raises(error, match=what):
        simclr_loss.SimCLRLoss()(np.ones((2, 3)), np.ones((2, 3)), global_batch_size=g)


def test_global_batch_size_of_numpy_integers():
    z = np.ones((2, 3))
    assert simclr_loss.SimCLRLoss()(z, z, global_batch_size=np.int64(4)) == \
        simclr_loss.SimCLRLoss()(z, z, global_batch_size=4)


@pytest.mark.parametrize("t", [float("nan"), float("inf"), -float("inf")])
def test_from_config_with_a_non_finite_temperature(t):
    # JSON cannot carry NaN or Inf: the temperature's own ValueError, not a JSON syntax error.
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got"):
        simclr_loss.SimCLRLoss.from_config({"temperature": t})
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got"):
        simclr_loss.SimCLRLoss.from_config({"class_name": "SimCLRLoss", "config": {"temperature": t}})


def test_from_config_with_another_non_finite_value():
    with pytest.raises(ValueError, match="config value 'margin' is nan"):
        simclr_loss.SimCLRLoss.from_config({"temperature": 0.1, "margin": float("nan")})


def test_object_array_names_its_dtype():
    a = np.empty((3, 2), dtype=object)
    a[:] = 1.0
    with pytest.raises(TypeError, match="za must be a 2-D array .*of float32 or float64.* got "
                                        "numpy.ndarray of dtype object"):
        simclr_loss.SimCLRLoss()(a, np.ones((3, 2)))


def test_sample_weight_that_is_not_numbers():
    with pytest.raises(TypeError, match="sample_weight must be None, a number or an array of numbers"
                                        ".* got str 'abc'"):
        simclr_loss.SimCLRLoss()(np.ones((2, 3)), np.ones((2, 3)), sample_weight="abc")


def test_zero_dimensional_embeddings():
    z = np.zeros((3, 0), np.float32)
    got = simclr_loss.SimCLRLoss(0.1, "none")(z, z)
    np.testing.assert_allclose(got, [2 * math.log(5)] * 3, rtol=1e-6)
