#!/usr/bin/env bash
# Installs the Debian packages the project needs, only those missing; quick when all are present.
# Usage: scripts/deps.sh [extra-package ...]
set -euo pipefail
pkgs=(cmake make g++ pkg-config libeigen3-dev nlohmann-json3-dev libgtest-dev libgmock-dev
      libopenmpi-dev openmpi-bin libbenchmark-dev libcli11-dev "$@")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${missing[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
"${sudo_cmd[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
