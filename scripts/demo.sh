#!/usr/bin/env bash
# The README's first command: install what is needed, then show the writer VIP
# taken by the primary's sidecar, moved by a switchover, released on SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m integration.lab demo
