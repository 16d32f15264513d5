#!/usr/bin/env bash
# A Docker engine and a private registry on this machine, for the docker tests and CI.
#
# Idempotent: an engine that already answers (`docker info`) and a registry that already
# serves on 127.0.0.1:5000 are reused. Installs Debian's `docker.io`, `docker-registry` and
# `mmdebstrap` with apt when missing (needs root, as CI has), starts `dockerd` in the
# background (log: /tmp/falrt-dockerd.log) and Debian's registry on 127.0.0.1:5000 (log:
# /tmp/falrt-registry.log). The registry serves plain HTTP; the engine accepts plain HTTP for
# registries on 127.0.0.0/8 without configuration. Prints nothing but errors; exits non-zero
# with a message when something does not come up.
#
#   FALRT_REGISTRY_ADDR   where the registry listens (default 127.0.0.1:5000)
#   FALRT_DOCKER_WAIT     seconds to wait for the engine and the registry (default 60)
set -euo pipefail

REGISTRY_ADDR=${FALRT_REGISTRY_ADDR:-127.0.0.1:5000}
WAIT=${FALRT_DOCKER_WAIT:-60}
DOCKERD_LOG=/tmp/falrt-dockerd.log
REGISTRY_LOG=/tmp/falrt-registry.log
REGISTRY_ROOT=/var/lib/falrt-registry

say() { echo "docker.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# 1. Packages. A docker CLI alone (some hosts ship one in /usr/local/bin) is not an engine.
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
[[ -x /usr/bin/docker-registry ]] || missing+=(docker-registry)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if ((${#missing[@]})); then
  [[ $(id -u) == 0 ]] || die "missing ${missing[*]}; run as root or install them"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed"
  # policy-rc.d 101: the packages' maintainer scripts must not try to start services
  # (there is no init system to start them with here; this script starts them).
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
  fi
  apt_log=$(mktemp)
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" \
      uidmap iptables ca-certificates >"$apt_log" 2>&1; then
    tail -n 30 "$apt_log" >&2
    ((created_policy)) && rm -f "$policy"
    die "apt-get install ${missing[*]} failed"
  fi
  rm -f "$apt_log"
  ((created_policy)) && rm -f "$policy"
fi

# Poll a command until it succeeds or the deadline passes.
wait_for() {  # wait_for SECONDS CMD...
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# 2. The engine.
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || die "no dockerd after installing docker.io"
  [[ $(id -u) == 0 ]] || die "no Docker engine answers and starting one needs root"
  # A pid file left by an engine that is gone would stop dockerd from starting.
  if [[ -f /var/run/docker.pid ]] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
  fi
  # containerd: dockerd starts its own when none runs.
  nohup dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
  disown
  if ! wait_for "$WAIT" docker info; then
    tail -n 30 "$DOCKERD_LOG" >&2
    die "dockerd did not answer within ${WAIT}s (log: $DOCKERD_LOG)"
  fi
fi

# 3. The registry (Debian's docker-registry: the CNCF distribution registry, plain HTTP).
registry_up() { curl -fsS -o /dev/null "http://$REGISTRY_ADDR/v2/"; }
if ! registry_up 2>/dev/null; then
  command -v curl >/dev/null || die "curl is needed to check the registry"
  mkdir -p "$REGISTRY_ROOT"
  config=$REGISTRY_ROOT/config.yml
  cat >"$config" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $REGISTRY_ROOT/data
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
EOF
  nohup /usr/bin/docker-registry serve "$config" >"$REGISTRY_LOG" 2>&1 </dev/null &
  disown
  if ! wait_for "$WAIT" registry_up; then
    tail -n 30 "$REGISTRY_LOG" >&2
    die "the registry did not answer on $REGISTRY_ADDR within ${WAIT}s (log: $REGISTRY_LOG)"
  fi
fi
