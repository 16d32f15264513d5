#!/usr/bin/env bash
# A private PostgreSQL server for the tests.
#
#   scripts/postgres.sh [start]   start it (or reuse it); prints its DSN on stdout (nothing else)
#   scripts/postgres.sh stop      stop it, if it runs (`make stop` does this); the data stays
#
# Idempotent: a server already running in the data directory is reused, and stopping one that
# does not run is no error. It keeps running after `make test`, so that the next run does not
# wait for it to start. Installs Debian's `postgresql` package when no PostgreSQL is found
# (needs root, as CI has). The server listens on 127.0.0.1 only, on its own port and socket
# directory, with trust auth for one role (`falrt`): it is for tests on this machine, not for
# anything else.
#
#   FALRT_PG_ROOT   where the cluster lives (default /tmp/falrt-postgres)
#   FALRT_PG_PORT   its port (default 54329)
set -euo pipefail

COMMAND=${1:-start}
case $COMMAND in
  start|stop) ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac

ROOT=${FALRT_PG_ROOT:-/tmp/falrt-postgres}
PORT=${FALRT_PG_PORT:-54329}
DATA=$ROOT/data
LOG=$ROOT/server.log
DSN="postgresql://falrt@127.0.0.1:$PORT/falrt"

say() { echo "postgres.sh: $*" >&2; }

find_bin() {  # the newest installed PostgreSQL's bin directory
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [[ -z $dir ]] && command -v pg_ctl >/dev/null; then
    dir=$(dirname "$(readlink -f "$(command -v pg_ctl)")")
  fi
  echo "$dir"
}

# initdb and postgres refuse to run as root: root runs them as the `postgres` user.
as_owner() {
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

stop() {  # the server of $DATA, if one runs there; nothing is installed for this
  if [[ -z $BIN || ! -f $DATA/postmaster.pid ]] || ! as_owner "$BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1; then
    say "no PostgreSQL runs in $DATA"
    return 0
  fi
  as_owner "$BIN/pg_ctl" stop -w -t 60 -m fast -D "$DATA" >/dev/null
  say "stopped the test PostgreSQL (127.0.0.1:$PORT, data in $DATA)"
}

BIN=$(find_bin)
if [[ $COMMAND == stop ]]; then
  stop
  exit 0
fi
if [[ -z $BIN || ! -x $BIN/initdb ]]; then
  [[ $(id -u) == 0 ]] || { say "PostgreSQL is not installed; run as root or install it"; exit 1; }
  say "installing PostgreSQL (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends postgresql >&2
  BIN=$(find_bin)
  [[ -x $BIN/initdb ]] || { say "no initdb found after installing postgresql"; exit 1; }
fi

mkdir -p "$ROOT"
if [[ $(id -u) == 0 ]]; then chown postgres: "$ROOT"; fi

if ! "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
  if [[ ! -f $DATA/PG_VERSION ]]; then
    say "creating a cluster in $DATA"
    as_owner "$BIN/initdb" -D "$DATA" -U falrt --auth=trust --encoding=UTF8 --no-sync >/dev/null
  fi
  # Nothing answers on the port, so a pid file is stale (left by a session that ended; its
  # pid may since belong to another process, which would stop PostgreSQL from starting).
  rm -f "$DATA/postmaster.pid"
  say "starting PostgreSQL on 127.0.0.1:$PORT"
  as_owner "$BIN/pg_ctl" start -w -t 60 -D "$DATA" -l "$LOG" \
    -o "-p $PORT -k $ROOT -c listen_addresses=127.0.0.1 -c max_connections=200" >&2 ||
    { tail -n 20 "$LOG" >&2; exit 1; }
fi

if ! "$BIN/psql" -qtA -d "postgresql://falrt@127.0.0.1:$PORT/postgres" \
    -c "SELECT 1 FROM pg_database WHERE datname = 'falrt'" | grep -q 1; then
  "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U falrt falrt
fi
echo "$DSN"
