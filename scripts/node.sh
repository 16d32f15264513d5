#!/usr/bin/env bash
# Node.js and the packages of tests/node (the grpc-js client of tests/test_tls.py), for the
# tests and CI.
#
# Idempotent: installs Debian's `nodejs` and `npm` with apt when `node` is missing (needs
# root, as CI has), then `npm ci` in tests/node when its node_modules is missing or older
# than package-lock.json (the stamp tests/node/node_modules/.installed says when it ran).
# Prints nothing but errors and npm's summary; exits non-zero with a message on failure.
set -euo pipefail
cd "$(dirname "$0")/../tests/node"

say() { echo "node.sh: $*" >&2; }
die() { say "$*"; exit 1; }

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  [[ $(id -u) == 0 ]] || die "node or npm is missing; run as root or install them"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed"
  apt-get install -y -qq nodejs npm >/dev/null || die "apt-get install nodejs npm failed"
fi

stamp=node_modules/.installed
if [[ ! -e $stamp || package-lock.json -nt $stamp ]]; then
  npm ci --no-audit --no-fund --loglevel=error || die "npm ci in tests/node failed"
  touch "$stamp"
fi
