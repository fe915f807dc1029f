#!/usr/bin/env bash
# The PyTorch demo (scripts/demo.sh --pytorch): install what is missing (Debian/Ubuntu), install the
# simclr Python package into .venv (a virtual environment that sees Debian's torch), and train SimCLR
# on scikit-learn's 8x8 digits with DistributedDataParallel on 2 ranks (1 process without mpirun).
#
#   scripts/demo_pytorch.sh [OUT_DIR]      default OUT_DIR: out/digits
#
# Environment: SIMCLR_DEMO_NO_INSTALL=1 skips the package step; SIMCLR_DEMO_RANKS (default 2);
# SIMCLR_DEMO_ARGS="--epochs 40 --seed 3" passes flags to the script; SIMCLR_PYTHON picks an
# interpreter that already imports simclr_loss.torch (then nothing is installed into .venv).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/out/digits}"
ranks="${SIMCLR_DEMO_RANKS:-2}"
read -r -a demo_args <<< "${SIMCLR_DEMO_ARGS:-}"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# ---- 1. packages: only what is missing ----
required=(cmake g++ make libeigen3-dev nlohmann-json3-dev libopenmpi-dev openmpi-bin python3-dev
          python3-venv python3-pip python3-numpy python3-torch python3-sklearn python3-matplotlib)
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
if [[ "${SIMCLR_DEMO_NO_INSTALL:-0}" != 1 ]] && command -v dpkg-query > /dev/null &&
   command -v apt-get > /dev/null; then
  missing=()
  for p in "${required[@]}"; do installed "$p" || missing+=("$p"); done
  if ((${#missing[@]})); then
    sudo=()
    if [[ $(id -u) != 0 ]]; then sudo=(sudo); fi
    say "installing ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    say "packages: all present"
  fi
fi

# ---- 2. the Python package (Debian's torch is a system package: the venv sees it) ----
python="${SIMCLR_PYTHON:-}"
if [[ -z "$python" ]]; then
  python="$root/.venv/bin/python"
  if [[ ! -x "$python" ]]; then
    say "creating $root/.venv"
    /usr/bin/python3 -m venv --system-site-packages "$root/.venv"
  fi
  if ! "$python" -c "import simclr_loss.torch" 2> /dev/null; then
    say "installing the simclr package into .venv (builds the extension: a few minutes)"
    "$python" -m pip install -q "$root"
  fi
fi
"$python" -c "import simclr_loss.torch" || { echo "error: $python cannot import simclr_loss.torch" >&2; exit 1; }

# ---- 3. train ----
mkdir -p "$out"
launch=()
if [[ "$ranks" -gt 1 ]] && command -v mpirun > /dev/null; then
  launch=(mpirun -np "$ranks")
  if mpirun --version 2>&1 | grep -q -E 'Open MPI|OpenRTE'; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    launch+=(--oversubscribe --bind-to none)
  fi
  say "training on $ranks ranks (DDP, gloo): ${launch[*]} $python examples/python/simclr_digits.py --out $out ${demo_args[*]}"
else
  say "training in one process (no mpirun): $python examples/python/simclr_digits.py --out $out ${demo_args[*]}"
fi
MPLBACKEND=Agg "${launch[@]}" "$python" "$root/examples/python/simclr_digits.py" --out "$out" "${demo_args[@]}"

say "outputs in $out"
ls -1 "$out" | sed 's/^/    /'
