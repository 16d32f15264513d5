#!/usr/bin/env bash
# Chromium for the dashboard's browser test (tests/test_dashboard.py), for the tests and CI.
#
# Idempotent: installs Debian's `chromium` package with apt when no Chromium is found (needs
# root, as CI has), then prints the path of the browser binary on stdout (nothing else).
# Exits non-zero with a message on failure.
set -euo pipefail

say() { echo "chromium.sh: $*" >&2; }
die() { say "$*"; exit 1; }

find_bin() {
  local name
  for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null; then command -v "$name"; return; fi
  done
}

bin=$(find_bin || true)
if [[ -z $bin ]]; then
  [[ $(id -u) == 0 ]] || die "chromium is missing; run as root or install Debian's chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed"
  apt-get install -y -qq chromium >/dev/null || die "apt-get install chromium failed"
  bin=$(find_bin || true)
  [[ -n $bin ]] || die "chromium was installed but is not on PATH"
fi
echo "$bin"
