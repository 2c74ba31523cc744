#!/bin/sh
# CTest fixture (and test helper) for the PostgreSQL tests: a private PostgreSQL 15 cluster from
# Debian's packages, in a temporary directory, listening on 127.0.0.1 only and on a unix socket in
# that directory. PostgreSQL refuses to run as root, so as root initdb and the server run as the
# `postgres` user (runuser). The server is stopped by the PID in its postmaster.pid, never by name.
#
#   pg_server.sh start PORT STATE      initdb + start; writes STATE/{datadir,socket,pid,port,script}
#   pg_server.sh stop STATE            SIGINT (fast shutdown) the PID, SIGKILL if it lingers;
#                                      removes the temporary directory
#   pg_server.sh crash STATE           pg_ctl stop -m immediate (no shutdown checkpoint)
#   pg_server.sh restart STATE         start again after crash, same data and port
#   pg_server.sh pgbouncer PORT STATE  pgbouncer (transaction pooling) on 127.0.0.1:PORT in front of
#                                      the server; STATE/pgbouncer.pid
#   pg_server.sh stop-pgbouncer STATE
#
# Roles: `postgres` (trust), and `idem_pw` with password 'p@ss:w/rd#1' (scram over TCP).
# Database: idem_test.
#
# A missing PostgreSQL fails the fixture, and so every PostgreSQL test: never a silent skip. Under
# CI the message says so loudly.
set -u
cmd=${1:?usage: pg_server.sh start PORT STATE | stop STATE | crash STATE | restart STATE}

fail() {
  if [ -n "${CI:-}" ]; then
    echo "FATAL (CI): $*" >&2
  else
    echo "error: $*" >&2
  fi
  exit 1
}

bindir() {
  for d in "$(pg_config --bindir 2>/dev/null)" /usr/lib/postgresql/15/bin; do
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

# Runs a command as the user that owns the cluster.
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

server_start() {
  state=$1
  bin=$(cat "$state/bindir")
  data=$(cat "$state/datadir")
  port=$(cat "$state/port")
  sock=$(cat "$state/socket")
  as_pg "$bin/pg_ctl" -D "$data" -l "$data/../server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$sock" start \
    >/dev/null || { cat "$data/../server.log" >&2; fail "postgres did not start on port $port"; }
  head -n 1 "$data/postmaster.pid" >"$state/pid"
}

case "$cmd" in
start)
  port=${2:?port}
  state=${3:?state dir}
  bin=$(bindir) || fail "PostgreSQL server binaries not found (apt-get install postgresql)"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || fail "no postgres user (apt-get install postgresql)"
  fi
  mkdir -p "$state"
  # A server left over by an interrupted run of this build tree is ours: stop it first.
  [ -s "$state/pid" ] && "$0" stop "$state" >/dev/null 2>&1
  if "$bin/pg_isready" -h 127.0.0.1 -p "$port" -t 1 >/dev/null 2>&1; then
    fail "port $port is already served by another process; set another IDEM_PG_TEST_PORT"
  fi
  tmp=$(mktemp -d /tmp/idem-pg.XXXXXX) || fail "mktemp failed"
  chmod 755 "$tmp"
  mkdir -p "$tmp/sock"
  [ "$(id -u)" = 0 ] && chown -R postgres "$tmp"
  echo "$tmp" >"$state/tmpdir"
  echo "$tmp/data" >"$state/datadir"
  echo "$tmp/sock" >"$state/socket"
  echo "$port" >"$state/port"
  echo "$bin" >"$state/bindir"
  echo "$(cd "$(dirname "$0")" && pwd)/$(basename "$0")" >"$state/script"
  as_pg "$bin/initdb" -D "$tmp/data" -U postgres -A trust -E UTF8 --no-locale --no-sync \
    >"$tmp/initdb.log" 2>&1 || { cat "$tmp/initdb.log" >&2; fail "initdb failed"; }
  # Password authentication for idem_pw over TCP, trust for everything else.
  as_pg sh -c "cat >'$tmp/data/pg_hba.conf'" <<HBA
local all all trust
host all idem_pw 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
HBA
  as_pg sh -c "cat >>'$tmp/data/postgresql.conf'" <<CONF
max_connections = 200
shared_buffers = 64MB
fsync = on
synchronous_commit = on
log_min_messages = warning
CONF
  server_start "$state"
  as_pg "$bin/psql" -X -q -h "$tmp/sock" -p "$port" -U postgres -d postgres \
    -c "CREATE DATABASE idem_test" \
    -c "CREATE ROLE idem_pw LOGIN SUPERUSER PASSWORD 'p@ss:w/rd#1'" >/dev/null ||
    fail "could not create the test database"
  echo "postgres pid $(cat "$state/pid") listening on 127.0.0.1:$port (dir $tmp)"
  ;;
stop)
  state=${2:?state dir}
  [ -s "$state/pgbouncer.pid" ] && "$0" stop-pgbouncer "$state"
  if [ -s "$state/pid" ]; then
    pid=$(cat "$state/pid")
    if kill -INT "$pid" 2>/dev/null; then
      i=0
      while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do
        i=$((i + 1))
        sleep 0.1
      done
      kill -9 "$pid" 2>/dev/null
      echo "postgres pid $pid stopped"
    fi
    rm -f "$state/pid"
  fi
  if [ -s "$state/tmpdir" ]; then
    case "$(cat "$state/tmpdir")" in
    /tmp/idem-pg.*) rm -rf "$(cat "$state/tmpdir")" ;;
    esac
    rm -f "$state/tmpdir"
  fi
  ;;
crash)
  state=${2:?state dir}
  as_pg "$(cat "$state/bindir")/pg_ctl" -D "$(cat "$state/datadir")" -m immediate -w stop \
    >/dev/null || fail "pg_ctl -m immediate failed"
  ;;
restart)
  state=${2:?state dir}
  server_start "$state"
  ;;
pgbouncer)
  port=${2:?port}
  state=${3:?state dir}
  command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] ||
    fail "pgbouncer is not installed (apt-get install pgbouncer)"
  pgb=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
  tmp=$(cat "$state/tmpdir")
  pgport=$(cat "$state/port")
  as_pg sh -c "cat >'$tmp/pgbouncer.ini'" <<INI
[databases]
idem_test = host=127.0.0.1 port=$pgport dbname=idem_test
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $tmp/userlist.txt
pool_mode = transaction
default_pool_size = 2
max_client_conn = 100
pidfile = $tmp/pgbouncer.pid
logfile = $tmp/pgbouncer.log
INI
  as_pg sh -c "echo '\"postgres\" \"\"' >'$tmp/userlist.txt'"
  as_pg "$pgb" -d "$tmp/pgbouncer.ini" >/dev/null 2>&1 || fail "pgbouncer did not start"
  i=0
  while [ ! -s "$tmp/pgbouncer.pid" ] && [ $i -lt 50 ]; do
    i=$((i + 1))
    sleep 0.1
  done
  [ -s "$tmp/pgbouncer.pid" ] || fail "pgbouncer wrote no pidfile"
  cp "$tmp/pgbouncer.pid" "$state/pgbouncer.pid"
  echo "pgbouncer pid $(cat "$state/pgbouncer.pid") on 127.0.0.1:$port"
  ;;
stop-pgbouncer)
  state=${2:?state dir}
  [ -s "$state/pgbouncer.pid" ] || exit 0
  pid=$(cat "$state/pgbouncer.pid")
  kill -INT "$pid" 2>/dev/null
  i=0
  while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do
    i=$((i + 1))
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null
  rm -f "$state/pgbouncer.pid"
  ;;
*)
  fail "unknown command $cmd"
  ;;
esac
