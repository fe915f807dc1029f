#!/usr/bin/env bash
# The TensorFlow / Keras front end's tests (simclr_loss.tensorflow, simclr_loss.keras), after
# tests/scripts/python_test.sh has built the package into build/venv. TensorFlow 2.15.1 (the last with Keras 2,
# TF Similarity's setting) needs numpy 1.x and ml_dtypes 0.3, which jax in build/venv does not take, so it
# lives in a virtual environment of its own, build/venv-tf. The package is built by build/venv's tools
# in its CMake build folder (only simclr_loss/_tf_ops.so compiles, against build/venv-tf's TensorFlow), as a
# wheel that is installed into build/venv-tf; pytest then runs tests/tensorflow there. The last line
# is "tensorflow tests: P passed, F failed, S skipped".
# Usage: tests/scripts/tf_test.sh   (VENV=dir the environment python_test.sh made; TF_VENV=dir this one's)
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${VENV:-build/venv}
tf_venv=${TF_VENV:-build/venv-tf}
start=$(date +%s)
if [ ! -x "$venv/bin/python" ]; then
  echo "tests/scripts/tf_test.sh needs $venv from tests/scripts/python_test.sh (run that first)" >&2
  exit 1
fi
if [ ! -x "$tf_venv/bin/python" ]; then
  /usr/bin/python3 -m venv "$tf_venv"
fi
tf_py="$tf_venv/bin/python"
# protobuf 5 breaks TF 2.15; numpy 2 is not supported by it.
"$tf_py" -m pip install -q "tensorflow-cpu==2.15.1" "numpy==1.26.4" "protobuf==4.25.9" pytest
t0=$(date +%s)
if command -v ccache >/dev/null; then
  export CMAKE_CXX_COMPILER_LAUNCHER=ccache CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD}
fi
wheels=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$wheels" "$log"' EXIT
"$venv/bin/python" -m pip wheel -q --no-build-isolation --no-deps -w "$wheels" \
  --config-settings=cmake.define.SIMCLR_TF_PYTHON="$PWD/$tf_py" .
"$tf_py" -m pip install -q --no-deps --force-reinstall "$wheels"/simclr_loss-*.whl
echo "build and install of simclr_loss/_tf_ops.so: $(( $(date +%s) - t0 )) s"
TF_CPP_MIN_LOG_LEVEL=2 "$tf_py" -c 'import simclr_loss.keras, tensorflow as tf; print("simclr_loss.keras on tensorflow", tf.__version__)'
"$tf_py" -c 'import importlib.metadata as m; print("tensorflow releases (oldest supported):", ", ".join(f"{p} {m.version(p)}" for p in ("tensorflow-cpu", "keras", "numpy")))'
rc=0
TF_CPP_MIN_LOG_LEVEL=2 "$tf_py" -m pytest -q -rs -p no:cacheprovider tests/tensorflow | tee "$log" \
  || rc=$?
summary=$(tail -n 1 "$log")
count() { echo "$summary" | grep -o "[0-9]* $1" | grep -o "[0-9]*" || echo 0; }
passed=$(count passed) skipped=$(count skipped) failed=$(( $(count failed) + $(count error) ))
if [ "$rc" -ne 0 ] || [ "$passed" -eq 0 ]; then
  echo "pytest tests/tensorflow failed (exit $rc)"
  exit 1
fi
# The conformance table in this environment: the TensorFlow op and Keras 2 (the numpy front end and
# the command again, the others are not installed here and show as skipped).
TF_CPP_MIN_LOG_LEVEL=2 "$tf_py" -m pytest -q -rs -p no:cacheprovider tests/conformance \
  -k "tensorflow or keras" | tee "$log" || rc=$?
summary=$(tail -n 1 "$log")
if [ "$rc" -ne 0 ] || [ "$(count passed)" -eq 0 ]; then
  echo "pytest tests/conformance (TensorFlow, Keras 2) failed (exit $rc)"
  exit 1
fi
echo "conformance (tensorflow, keras 2): $(count passed) passed, $(count skipped) skipped"
passed=$((passed + $(count passed))) skipped=$((skipped + $(count skipped)))
echo "tensorflow step: $(( $(date +%s) - start )) s"
echo "tensorflow tests: $passed passed, $failed failed, $skipped skipped"
