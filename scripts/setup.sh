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

# prometheus: its promtool checks and unit-tests the alert rules in examples/prometheus.
# haproxy: the lab's load balancer in front of the reader VIPs, and `haproxy -c`
# checks examples/haproxy.
packages=(etcd-server etcd-client postgresql-15 iproute2 nftables python3-venv util-linux prometheus
  haproxy)
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
# Patroni for the lab's Patroni mode, in a virtual environment of its own made
# from the system Python: the postgres OS user runs it (PostgreSQL refuses root).
patroni_reqs=integration/lab/patroni-requirements.txt
patroni_stamp=.venv-patroni/.dbvip-requirements.sha256
if [ ! -x .venv-patroni/bin/patroni ] || ! sha256sum --status -c "$patroni_stamp" 2>/dev/null; then
  echo "setup.sh: installing Patroni in .venv-patroni"
  rm -rf .venv-patroni
  /usr/bin/python3 -m venv .venv-patroni
  .venv-patroni/bin/pip install -q --disable-pip-version-check -r "$patroni_reqs"
  sha256sum "$patroni_reqs" > "$patroni_stamp"
  chmod -R a+rX .venv-patroni
fi
# postgres must be able to reach it: grant search (x, not read) on any parent
# directory that denies it to others.
dir=$(pwd)
while [ "$dir" != / ]; do
  if [ "$(( 0$(stat -c %a "$dir") & 01 ))" -eq 0 ]; then
    echo "setup.sh: chmod o+x $dir (the postgres user runs .venv-patroni/bin/patroni)"
    chmod o+x "$dir"
  fi
  dir=$(dirname "$dir")
done
runuser -u postgres -- .venv-patroni/bin/patroni --version >/dev/null

echo "setup.sh: ready ($(.venv/bin/python --version), etcd $(etcd --version | head -1 | awk '{print $3}'), $(/usr/lib/postgresql/15/bin/postgres --version), $(.venv-patroni/bin/patroni --version))"
