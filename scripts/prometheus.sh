#!/usr/bin/env bash
# Prometheus for the tests (tests/test_metrics.py scrapes a real falrt server with it).
#
#   scripts/prometheus.sh     prints the path of the `prometheus` binary on stdout (nothing else)
#
# Idempotent: installs Debian's `prometheus` package when no `prometheus` is on the PATH
# (needs root, as CI has). Nothing is started here: each test starts its own Prometheus on
# a free port with its own configuration and storage, and stops it. (The package's own
# service is not started either: containers have no init to start it, and the tests do not
# use it.)
set -euo pipefail

say() { echo "prometheus.sh: $*" >&2; }

if ! command -v prometheus >/dev/null; then
  [[ $(id -u) == 0 ]] || { say "prometheus is not installed; run as root or install it"; exit 1; }
  say "installing Prometheus (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends prometheus >&2
  command -v prometheus >/dev/null || { say "no prometheus binary after installing it"; exit 1; }
fi
command -v prometheus
