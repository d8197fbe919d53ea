#!/usr/bin/env bash
# Install the Debian packages caffe-admm needs (only the missing ones).
set -euo pipefail
PKGS=(build-essential cmake dpkg-dev protobuf-compiler python3-dev python3-venv
      libboost-system-dev libboost-thread-dev libboost-filesystem-dev libboost-python-dev
      libgoogle-glog-dev libgflags-dev libprotobuf-dev libhdf5-dev liblmdb-dev
      libleveldb-dev libsnappy-dev libopenblas-dev libopenblas0-openmp libdnnl-dev dataset-fashion-mnist)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
    echo "apt: all ${#PKGS[@]} packages present"
    exit 0
fi
SUDO=""
[[ $(id -u) == 0 ]] || SUDO=sudo
echo "apt: installing ${missing[*]}"
$SUDO apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
