#!/usr/bin/env bash
# The test command: static checks, then every test (unit, adapters against
# real etcd/PostgreSQL/namespaces, integration). Needs root and setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check dbvip tests integration examples
.venv/bin/ruff format --check dbvip tests integration examples
.venv/bin/mypy
exec .venv/bin/pytest -q "$@"
