"""Shared by the TensorFlow tests (tests/scripts/tf_test.sh runs them in build/venv-tf): four logical CPU
devices for tf.distribute.MirroredStrategy, made before TensorFlow initialises its devices, and the
golden fixtures of tests/python/conftest.py (the TensorFlow Similarity goldens of tests/data)."""

import importlib.util
import pathlib

import pytest

tf = pytest.importorskip("tensorflow")

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(4)])

_spec = importlib.util.spec_from_file_location(
    "simclr_golden_conftest", pathlib.Path(__file__).resolve().parents[1] / "python" / "conftest.py")
_golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_golden)

golden_single = _golden.golden_single
golden_distributed = _golden.golden_distributed
check_golden = _golden.check_golden
golden_arrays = _golden.golden_arrays
pytest_generate_tests = _golden.pytest_generate_tests
golden_inputs = _golden.golden_inputs
max_rel = _golden._max_rel


def cpus(k):
    """The first k logical CPU devices' names."""
    return [d.name for d in tf.config.list_logical_devices("CPU")[:k]]


# With TensorFlow's own Keras 3 (TensorFlow 2.16 and newer; tests/scripts/current_test.sh), the tests of
# simclr_loss.keras as Keras 2 runs it (TF Similarity's setting: float64 losses, "auto", Keras 2's
# weighting and model.fit's replica scaling) do not apply. There Keras 3 on the TensorFlow backend
# is tests/python/test_keras3.py and the conformance table; the op's tests here still run.
KERAS2_ONLY_MODULES = {"test_keras", "test_tf_docs", "test_tf_golden", "test_tf_multiworker"}
KERAS2_ONLY_TESTS = {"test_uneven_batches", "test_distribution_rule_is_keras",
                     "test_sum_and_weights_in_replica_context"}


def pytest_collection_modifyitems(config, items):
    import keras
    if int(keras.__version__.split(".")[0]) < 3:
        return
    skip = pytest.mark.skip(reason="simclr_loss.keras as Keras 2 runs it (TensorFlow 2.15, TF "
                            "Similarity's setting); Keras 3 on TensorFlow: tests/python/test_keras3.py"
                            " and the conformance table")
    for item in items:
        callspec = getattr(item, "callspec", None)
        route = callspec.params.get("route") if callspec is not None else None
        if (item.module.__name__ in KERAS2_ONLY_MODULES or route == "keras"
                or getattr(item, "originalname", item.name) in KERAS2_ONLY_TESTS):
            item.add_marker(skip)
