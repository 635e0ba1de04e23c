#!/usr/bin/env bash
# The benchmark, one part at a time (README "Failover benchmark" and
# "Benchmark, second round"): --part failover (the default: writer hand-offs,
# dbvip, vip-manager and keepalived side by side, results under
# integration/bench/results/), --part outage (writes through an etcd outage,
# results/outage), --part readers (dbvip's reader pool vs HAProxy with
# Patroni's checks, results/readers) or --part scale (many dbvip clusters on
# one etcd: etcd's cost and a hand-off, results/scale). Installs what it
# needs (scripts/setup.sh, the Debian packages vip-manager and keepalived,
# matplotlib in .venv).
# Arguments go to `python -m integration.bench`; a full run refreshes the
# part's README block, --quick (to try the harness) leaves the README alone.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

missing=()
for p in vip-manager keepalived; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bench.sh: installing ${missing[*]}"
  apt-get update -qq
  # The benchmark starts its own instances inside the lab's namespaces; neither
  # package's service has a configuration to start with here.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! .venv/bin/python -c "import matplotlib" 2>/dev/null; then
  echo "bench.sh: installing matplotlib (the bench extra) in .venv"
  .venv/bin/pip install -q -e '.[dev,bench]'
fi

readme=(--readme README.md)
for arg in "$@"; do
  [ "$arg" = "--quick" ] && readme=()
done
exec .venv/bin/python -m integration.bench "${readme[@]}" "$@"
