#!/bin/sh
# CTest fixture for the Redis tests: starts a private redis-server on 127.0.0.1 and stops it by the
# PID in its pidfile (never by name).
#
#   redis_server.sh start PORT DIR    start (daemonized, AOF with appendfsync always), wait for PING
#   redis_server.sh stop DIR          SIGTERM the PID from DIR/redis.pid, SIGKILL if it lingers
#
# A missing redis-server fails the fixture, and so every Redis test: never a silent skip. Under CI
# the message says so loudly.
set -u
cmd=${1:?usage: redis_server.sh start PORT DIR | stop DIR}

fail() {
  if [ -n "${CI:-}" ]; then
    echo "FATAL (CI): $*" >&2
  else
    echo "error: $*" >&2
  fi
  exit 1
}

case "$cmd" in
start)
  port=${2:?port}
  dir=${3:?dir}
  command -v redis-server >/dev/null 2>&1 ||
    fail "redis-server is not installed; the Redis tests need it (apt-get install redis-server)"
  command -v redis-cli >/dev/null 2>&1 ||
    fail "redis-cli is not installed; the Redis tests need it (apt-get install redis-tools)"
  mkdir -p "$dir"
  pidfile="$dir/redis.pid"
  # A server left over by an interrupted run of this build tree is ours: stop it first.
  if [ -s "$pidfile" ]; then
    kill "$(cat "$pidfile")" 2>/dev/null
    sleep 0.5
    rm -f "$pidfile"
  fi
  if redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1; then
    fail "port $port is already served by another process; set another IDEM_REDIS_TEST_PORT"
  fi
  rm -f "$dir"/appendonly.aof* "$dir"/dump.rdb
  rm -rf "$dir/appendonlydir"
  redis-server --bind 127.0.0.1 --port "$port" --daemonize yes --pidfile "$pidfile" \
    --dir "$dir" --logfile "$dir/redis.log" --save "" --appendonly yes --appendfsync always \
    --protected-mode yes || fail "redis-server did not start (see $dir/redis.log)"
  i=0
  while [ $i -lt 100 ]; do
    if [ -s "$pidfile" ] && [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ]; then
      # Another process may already own the port: make sure PING was answered by our server.
      served=$(redis-cli -h 127.0.0.1 -p "$port" info server | tr -d '\r' |
               sed -n 's/^process_id://p')
      [ "$served" = "$(cat "$pidfile")" ] ||
        fail "port $port is served by another process (pid $served); pick another IDEM_REDIS_TEST_PORT"
      echo "redis-server pid $(cat "$pidfile") listening on 127.0.0.1:$port (dir $dir)"
      exit 0
    fi
    i=$((i + 1))
    sleep 0.1
  done
  fail "redis-server on port $port did not answer PING within 10 s (see $dir/redis.log)"
  ;;
stop)
  dir=${2:?dir}
  pidfile="$dir/redis.pid"
  [ -s "$pidfile" ] || { echo "no pidfile in $dir: nothing to stop"; exit 0; }
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || { echo "redis-server pid $pid already gone"; rm -f "$pidfile"; exit 0; }
  i=0
  while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do
    i=$((i + 1))
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null
  rm -f "$pidfile"
  echo "redis-server pid $pid stopped"
  ;;
*)
  fail "unknown command $cmd"
  ;;
esac
