#!/usr/bin/env bash
# Installs everything dbvip, its tests and its demo need on a fresh Debian
# (bookworm) machine, as root: Debian packages and the virtual environment.
# Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs Debian packages and creates network namespaces)" >&2
  exit 1
fi

packages=(etcd-server etcd-client postgresql-15 iproute2 nftables python3-venv util-linux)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  apt-get update -qq
  # The image's policy-rc.d keeps the packages from starting services of their own.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Reinstall whenever pyproject.toml changed since the last install (new dependencies).
stamp=.venv/.dbvip-pyproject.sha256
if [ ! -x .venv/bin/python ] || ! sha256sum --status -c "$stamp" 2>/dev/null; then
  echo "setup.sh: installing the virtual environment in .venv"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  sha256sum pyproject.toml > "$stamp"
fi
echo "setup.sh: ready ($(.venv/bin/python --version), etcd $(etcd --version | head -1 | awk '{print $3}'), $(/usr/lib/postgresql/15/bin/postgres --version))"
