#!/usr/bin/env bash
# The front ends on the current releases: PyPI's newest torch, jax, tensorflow-cpu and Keras 3 with
# numpy 2, all in one virtual environment, build/venv-current (no system site packages), with one
# `pip install --no-build-isolation .` that compiles every front end whose framework it sees (simclr_loss._core,
# simclr_loss._jax_ffi, simclr_loss/_tf_ops.so). tests/scripts/python_test.sh and tests/scripts/tf_test.sh
# cover the oldest supported releases (Debian's torch 1.13, jax 0.7.1, TensorFlow 2.15 with Keras 2).
# Runs: tests/python (torch, torch.compile, numpy, jax, Keras 3 on jax), Keras 3 on the tensorflow
# and torch backends, the conformance table (every front end; Keras 3 on each backend), simclr_loss.jax
# over 4 host devices, and tests/tensorflow's tests of the TF op (under MirroredStrategy). The MPI runs
# (mpi4py, torch's mpirun checks) stay in python_test.sh; mpi4py is installed here for the docs'
# mpirun snippets (tests/python/test_docs.py). The last line is
# "current releases tests: P passed, F failed, S skipped".
# Usage: tests/scripts/current_test.sh [--install]   (--install: make the environment only, as
# scripts/test.sh does first, so that the CMake build compiles the JAX GPU handlers against its jax;
# VENV_CURRENT=dir picks the environment)
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/deps.sh python3-venv python3-dev
venv=${VENV_CURRENT:-build/venv-current}
start=$(date +%s)
if [ ! -x "$venv/bin/python" ]; then
  /usr/bin/python3 -m venv "$venv"
fi
py="$venv/bin/python"
# The newest releases, unpinned on purpose: this step is the one that finds out when a new release
# breaks a front end. pip keeps what is already current, so a second run installs nothing.
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q --upgrade torch numpy "jax[cpu]" tensorflow-cpu keras pytest mpi4py \
  "scikit-build-core>=0.10" "nanobind>=2.0"
"$py" - <<'PY'
import importlib.metadata as m
print("current releases:", ", ".join(f"{p} {m.version(p)}" for p in
      ("torch", "numpy", "jax", "jaxlib", "tensorflow-cpu", "keras")))
PY
echo "install: $(( $(date +%s) - start )) s"
if [ "${1:-}" = "--install" ]; then
  exit 0
fi
if command -v ccache >/dev/null; then
  export CMAKE_CXX_COMPILER_LAUNCHER=ccache CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD}
fi
t0=$(date +%s)
# A CMake build folder of its own (this environment's Python, jax and TensorFlow), kept between runs.
"$py" -m pip install -q --no-build-isolation --config-settings=build-dir=build/python-current .
echo "build and install: $(( $(date +%s) - t0 )) s"
"$py" - <<'PY'
import pathlib, simclr_loss, simclr_loss.jax as sj
so = pathlib.Path(simclr_loss.__file__).parent / "_tf_ops.so"
missing = [name for name, ok in (("simclr_loss._jax_ffi", sj._jax_ffi is not None), ("simclr_loss/_tf_ops.so", so.exists())) if not ok]
if missing:
    raise SystemExit("the build in this environment did not compile " + ", ".join(missing))
PY

log=$(mktemp)
trap 'rm -f "$log"' EXIT
passed=0 failed=0 skipped=0
count() { tail -n 1 "$log" | grep -o "[0-9]* $1" | grep -o "[0-9]*" || echo 0; }
# run LABEL [ENV=VALUE ...] -- pytest arguments: one pytest process; its counts join the total.
run() {
  local label=$1 rc=0
  shift
  local envs=(PYTHONUNBUFFERED=1)
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  env "${envs[@]}" TF_CPP_MIN_LOG_LEVEL=2 "$py" -m pytest -q -rs -p no:cacheprovider "$@" \
    | tee "$log" || rc=$?
  if [ "$rc" -ne 0 ] || [ "$(count passed)" -eq 0 ]; then
    echo "current releases: $label failed (exit $rc)"
    exit 1
  fi
  echo "current releases, $label: $(count passed) passed, $(count skipped) skipped"
  passed=$((passed + $(count passed))) skipped=$((skipped + $(count skipped)))
}
# torch.compile first, in a process of its own: triton's native library (loaded by torch's compiler
# stack) aborts the process when TensorFlow's or jaxlib's were loaded before it.
run "torch.compile" -- tests/python/test_torch_compile.py
run "tests/python" KERAS_BACKEND=jax -- tests/python --ignore=tests/python/test_jax_shard.py \
  --ignore=tests/python/test_torch_mpi.py --ignore=tests/python/test_mpi4py.py \
  --ignore=tests/python/test_torch_compile.py
run "keras 3 on tensorflow" KERAS_BACKEND=tensorflow -- tests/python/test_keras3.py
run "keras 3 on torch" KERAS_BACKEND=torch -- tests/python/test_keras3.py
run "conformance" KERAS_BACKEND=jax -- tests/conformance
run "conformance, keras 3 on tensorflow" KERAS_BACKEND=tensorflow -- tests/conformance -k keras
run "conformance, keras 3 on torch" KERAS_BACKEND=torch -- tests/conformance -k keras
run "jax on 4 host devices" XLA_FLAGS=--xla_force_host_platform_device_count=4 -- \
  tests/python/test_jax_shard.py
# The TensorFlow op under TensorFlow's own Keras 3 (its single-replica values are the conformance
# table's, above); the tests of Keras 2's behaviour (tests/tensorflow/conftest.py) are tf_test.sh's.
run "tests/tensorflow (the op)" KERAS_BACKEND=tensorflow -- tests/tensorflow \
  --ignore=tests/tensorflow/test_keras.py --ignore=tests/tensorflow/test_tf_docs.py \
  --ignore=tests/tensorflow/test_tf_golden.py --ignore=tests/tensorflow/test_tf_multiworker.py
echo "current releases step: $(( $(date +%s) - start )) s"
echo "current releases tests: $passed passed, $failed failed, $skipped skipped"
