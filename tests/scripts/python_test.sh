#!/usr/bin/env bash
# The Python package's tests: installs what is missing (Debian packages), makes the virtual environment
# build/venv (with the system's numpy, torch, mpi4py), installs the package into it with
# `pip install --no-build-isolation .` (the CMake build folder build/python/<tag> is kept, so a second
# install recompiles only what changed), runs pytest on tests/python (its test_torch_mpi.py launches
# simclr_loss.torch's mpirun checks, as tests/python/run_mpi_torch.sh does), then
# tests/python/test_jax_shard.py in a process of its own (4 host devices), then
# tests/python/test_mpi4py.py under mpirun at 1-4 ranks. The last line is "python tests: P passed, F
# failed, S skipped".
# Usage: tests/scripts/python_test.sh   (VENV=dir picks the environment; SIMCLR_PIP_ISOLATED=1 builds in
# pip's isolated build environment, as a plain `pip install .` does, instead of the venv's build tools)
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/deps.sh python3-venv python3-pip python3-dev python3-numpy python3-torch python3-mpi4py \
  python3-sklearn python3-pytest python3-matplotlib
venv=${VENV:-build/venv}
# Debian's python3 (its torch, numpy and mpi4py live in its dist-packages), not a python3 on PATH.
if [ ! -x "$venv/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
py="$venv/bin/python"
start=$(date +%s)
if command -v ccache >/dev/null; then
  export CMAKE_CXX_COMPILER_LAUNCHER=ccache CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD}
fi
# nanobind's sources are compiled into the extension: building with the venv's copy (not a fresh
# temporary one per install) keeps their objects valid across installs.
pip_flags=(--no-build-isolation)
if [ "${SIMCLR_PIP_ISOLATED:-0}" = 1 ]; then
  pip_flags=()
else
  "$py" -m pip install -q "scikit-build-core>=0.10" "nanobind>=2.0"
fi
# jax (CPU) before the package: with --no-build-isolation, simclr_loss._jax_ffi is compiled against this
# jaxlib's FFI headers (an isolated build gets jaxlib 0.7.2's from pyproject.toml's build requirements).
# jax 0.7.1, the oldest release the package supports, is the newest that takes numpy 1.x, which Debian's
# torch and scikit-learn in this environment are built against.
"$py" -m pip install -q "jax[cpu]==0.7.1" "numpy<2"
# Keras 3 for tests/python/test_keras3.py (simclr_loss.keras on its JAX backend; Keras 2 is tested in
# build/venv-tf by tests/scripts/tf_test.sh).
"$py" -m pip install -q "keras==3.15.1"
t0=$(date +%s)
"$py" -m pip install -q "${pip_flags[@]}" .
t1=$(date +%s)
echo "pip install ${pip_flags[*]} . : $((t1 - t0)) s"
"$py" -c 'import simclr_loss, simclr_loss._core as c; print("simclr", simclr_loss.__version__, "mpi" if c.has_mpi() else "no mpi")'
"$py" - <<'PY'
import importlib.metadata as m
names = ("torch", "numpy", "jax", "jaxlib", "keras")
print("python releases (oldest supported):", ", ".join(f"{p} {m.version(p)}" for p in names))
PY

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# -p no:cacheprovider: nothing is written into the source tree. Exit code 5 (no tests) is a failure.
rc=0
"$py" -m pytest -q -rs -p no:cacheprovider tests/python --ignore=tests/python/test_jax_shard.py \
  | tee "$log" || rc=$?
summary=$(tail -n 1 "$log")
count() { echo "$summary" | grep -o "[0-9]* $1" | grep -o "[0-9]*" || echo 0; }
passed=$(count passed) skipped=$(count skipped) failed=$(( $(count failed) + $(count error) ))
if [ "$rc" -ne 0 ] || [ "$passed" -eq 0 ]; then
  echo "pytest failed (exit $rc)"
  exit 1
fi
# The conformance table through every front end installed here (tests/conformance): a process of
# its own, so its count shows, and Keras 3 on its JAX backend.
"$py" -m pytest -q -rs -p no:cacheprovider tests/conformance | tee "$log" || rc=$?
summary=$(tail -n 1 "$log")
if [ "$rc" -ne 0 ]; then
  echo "pytest tests/conformance failed (exit $rc)"
  exit 1
fi
echo "conformance (python front ends): $(count passed) passed, $(count skipped) skipped"
passed=$((passed + $(count passed))) skipped=$((skipped + $(count skipped)))
# simclr_loss.jax over 4 host devices: XLA makes them only when the flag is set before jax is imported,
# hence a process of its own.
XLA_FLAGS="--xla_force_host_platform_device_count=4" \
  "$py" -m pytest -q -rs -p no:cacheprovider tests/python/test_jax_shard.py | tee "$log" || rc=$?
summary=$(tail -n 1 "$log")
if [ "$rc" -ne 0 ]; then
  echo "pytest tests/python/test_jax_shard.py failed (exit $rc)"
  exit 1
fi
passed=$((passed + $(count passed))) skipped=$((skipped + $(count skipped)))
failed=$((failed + $(count failed) + $(count error)))
if command -v mpirun >/dev/null && "$py" -c "import mpi4py" 2>/dev/null; then
  tests/python/run_mpi.sh "$py" | tee "$log"
  summary=$(tail -n 1 "$log")
  passed=$((passed + $(count passed))) skipped=$((skipped + $(count skipped)))
  failed=$((failed + $(count failed)))
else
  echo "mpirun or mpi4py missing: the mpirun runs of tests/python/test_mpi4py.py are skipped"
fi
echo "python step: $(( $(date +%s) - start )) s"
echo "python tests: $passed passed, $failed failed, $skipped skipped"
