"""Failover benchmark: dbvip, vip-manager and keepalived side by side in the lab.

``python -m integration.bench`` (or ``scripts/bench.sh``) runs it and writes
results.json, results.md and results.png; see ``integration/bench/runner.py``.
"""
