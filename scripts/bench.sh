#!/usr/bin/env bash
# The failover benchmark: dbvip, vip-manager and keepalived side by side in the
# lab (README, "Failover benchmark"). Installs what it needs (scripts/setup.sh,
# the Debian packages vip-manager and keepalived, matplotlib in .venv), runs
# every scenario 20 times per system and setting, writes
# integration/bench/results/{results.json,results.md,results.png} and refreshes
# the README's table. Arguments go to `python -m integration.bench` (`--part
# readers`: the reader benchmark, results under integration/bench/results/readers);
# with --quick (2 repetitions, to try the harness) the README is left alone.
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
