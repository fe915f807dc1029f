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
