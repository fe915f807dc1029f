#!/usr/bin/env bash
# Installs the wheel of scripts/build_wheel.sh where nothing could build it: a new virtual environment
# without the system's site-packages (WHEEL_VENV, default build/venv-wheel-test, made anew each run),
# run with an emptied environment (env -i) whose PATH has that environment's bin and an empty folder,
# so no compiler, CMake or make is found (checked), and `pip install --only-binary=:all:`, so nothing
# is compiled. Into it: the wheel, numpy, torch (PyPI's, with its dependencies: without them PyPI's
# torch does not import, libcufile.so.0 is missing), jax (the newest; the wheel's FFI handlers are
# compiled against jaxlib 0.7.2's headers) and pytest; then pytest runs tests/wheel: the numpy, torch
# and jax front ends against a numpy reference of the formula, and the README's numpy and torch
# examples. The last line is "wheel tests: P passed, F failed, S skipped".
# What is installed comes from PyPI the first time, into build/wheel-test-deps (about 3 GB, torch's
# CUDA libraries included), and from that folder (--no-index) on later runs; rm -rf it to fetch anew.
# Usage: tests/scripts/wheel_test.sh   (WHEEL=path tests that wheel instead of building one)
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
whl=${WHEEL:-}
if [ -z "$whl" ]; then
  whl=$(scripts/build_wheel.sh | tail -n 1)
fi
whl=$(realpath "$whl")
echo "testing $whl"
venv=${WHEEL_VENV:-build/venv-wheel-test}
deps=build/wheel-test-deps
work=$(mktemp -d)
log=$work/pytest.log
trap 'rm -rf "$work"' EXIT
# The wheel's dependencies and the test's, once (PyPI's torch; pip download checks the wheels' tags
# against this Python). A folder rather than pip's cache: pip keeps no HTTP cache of them here.
if [ ! -f "$deps/.complete" ]; then
  mkdir -p "$deps"
  /usr/bin/python3 -m pip download -q --only-binary=:all: -d "$deps" "numpy>=1.20" "torch>=1.13" \
    "jax[cpu]>=0.7.1" pytest
  touch "$deps/.complete"
fi
rm -rf "$venv"
/usr/bin/python3 -m venv "$venv"
venv=$(realpath "$venv")
mkdir "$work/bin" "$work/home"
# The emptied environment: pip's own settings (PIP_*, a proxy) pass, nothing else.
clean=(env -i "HOME=$work/home" "PATH=$venv/bin:$work/bin" LANG=C.UTF-8)
while IFS= read -r var; do clean+=("$var"); done < <(env | grep -E '^(PIP_[A-Z_]*|https?_proxy|HTTPS?_PROXY|no_proxy|NO_PROXY)=' || true)
"${clean[@]}" python - <<'EOF'
import shutil, sys
found = {tool: shutil.which(tool) for tool in ("g++", "gcc", "c++", "cc", "cmake", "make", "ninja")}
print("in the test environment:", ", ".join(f"{t} {'at ' + p if p else 'not found'}" for t, p in found.items()))
sys.exit(1 if any(found.values()) else 0)
EOF
t0=$(date +%s)
"${clean[@]}" python -m pip install -q --only-binary=:all: --no-index --find-links "$PWD/$deps" \
  "$whl" "torch>=1.13" "jax[cpu]>=0.7.1" pytest
echo "pip install of the wheel, numpy, torch, jax and pytest: $(( $(date +%s) - t0 )) s"
"${clean[@]}" python -c 'import simclr_loss, numpy, torch, jax
print("simclr_loss", simclr_loss.__version__, "from", simclr_loss.__file__)
print("numpy", numpy.__version__, "torch", torch.__version__, "jax", jax.__version__)'
rc=0
(cd "$work" && "${clean[@]}" python -m pytest -q -rs -p no:cacheprovider "$OLDPWD/tests/wheel") \
  | tee "$log" || rc=$?
summary=$(tail -n 1 "$log")
count() { echo "$summary" | grep -o "[0-9]* $1" | grep -o "[0-9]*" || echo 0; }
passed=$(count passed) skipped=$(count skipped) failed=$(( $(count failed) + $(count error) ))
echo "wheel step: $(( $(date +%s) - start )) s"
echo "wheel tests: $passed passed, $failed failed, $skipped skipped"
if [ "$rc" -ne 0 ] || [ "$passed" -eq 0 ] || [ "$failed" -ne 0 ]; then
  exit 1
fi
