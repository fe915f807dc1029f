#!/usr/bin/env bash
# A plain (isolated) `pip install .` into an environment that has TensorFlow must stop, at the CMake
# configure, with the command that builds the op (--no-build-isolation), instead of installing
# simclr_loss.tensorflow without it (python/CMakeLists.txt, simclr_framework_hidden). The environment
# here is a new virtual environment with a stand-in `tensorflow` package (the check only looks for
# the package, it does not import it), so no TensorFlow is downloaded; the build stops before
# anything is compiled. The last line is "isolated build tests: P passed, F failed, S skipped".
# Usage: tests/scripts/isolated_build_test.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
/usr/bin/python3 -m venv "$work/venv"
site=$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir "$site/tensorflow"
echo 'raise ImportError("a stand-in for TensorFlow (tests/scripts/isolated_build_test.sh)")' \
  >"$site/tensorflow/__init__.py"
passed=0 failed=0
check() {  # check NAME CONDITION-COMMAND...
  local name=$1
  shift
  if "$@"; then
    echo "PASSED $name"
    passed=$((passed + 1))
  else
    echo "FAILED $name"
    failed=$((failed + 1))
  fi
}
rc=0
"$work/venv/bin/pip" install --no-deps --config-settings=build-dir="$work/build" . >"$work/log" 2>&1 || rc=$?
check "the isolated install fails" test "$rc" -ne 0
check "at the configure, naming TensorFlow" grep -q "TensorFlow is installed for $work/venv/bin/python" "$work/log"
check "with the command that works" grep -q "python3 -m pip install --no-build-isolation \." "$work/log"
check "nothing was installed" test ! -e "$site/simclr_loss"
if [ "$failed" -ne 0 ]; then
  tail -n 40 "$work/log"
fi
echo "isolated build step: $(( $(date +%s) - start )) s"
echo "isolated build tests: $passed passed, $failed failed, 0 skipped"
[ "$failed" -eq 0 ]
