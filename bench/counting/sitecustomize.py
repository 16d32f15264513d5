"""Turns bench/counting/counters.py on in a `falrt server` that bench/breakdown.py starts with
this folder on PYTHONPATH and BENCH_COUNTERS set (Python imports `sitecustomize` at start).
Runners do not get PYTHONPATH from their server: their app (noop_counted.py) turns it on."""

import os

if os.environ.get("BENCH_COUNTERS"):
    import counters

    counters.install(os.environ["BENCH_COUNTERS"], "server")
