#!/usr/bin/env bash
# h2load, the HTTP/2 load generator of bench/overhead.py --h2load and bench/profile.py.
#
#   scripts/h2load.sh     prints the path of the `h2load` binary on stdout (nothing else)
#
# Idempotent: installs Debian's `nghttp2-client` package when no `h2load` is on the PATH
# (needs root, as CI has). Only the benchmarks that drive load with it call this; `make test`
# and CI do not need it.
set -euo pipefail

say() { echo "h2load.sh: $*" >&2; }

if ! command -v h2load >/dev/null; then
  [[ $(id -u) == 0 ]] || { say "h2load is not installed; run as root or install nghttp2-client"; exit 1; }
  say "installing h2load (Debian package nghttp2-client)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends nghttp2-client >&2
  command -v h2load >/dev/null || { say "no h2load binary after installing it"; exit 1; }
fi
command -v h2load
