#!/bin/sh
# CTest fixture for the Redis Cluster tests (and bench/run.sh): six redis-server processes on
# 127.0.0.1, ports BASE..BASE+5 (their cluster bus on BASE+10..BASE+15, not Redis's default of
# port + 10000, which lands in Linux's ephemeral range), joined by `redis-cli --cluster create` into 3 masters with one
# replica each; each node is stopped by the PID in its own pidfile (never by name: other builds
# run on this machine).
#
#   redis_cluster.sh start BASE DIR        start the six nodes, create the cluster, wait for
#                                          cluster_state:ok on every node
#   redis_cluster.sh restart-node DIR I    start node I (0..5) again with its own config and
#                                          nodes.conf (after a test SIGKILLed it)
#   redis_cluster.sh stop DIR              SIGTERM every node's PID, SIGKILL if it lingers
#
# Each node: its own directory DIR/node-I (nodes.conf, AOF), cluster-enabled yes, bound to
# 127.0.0.1 and announcing 127.0.0.1, appendonly yes (appendfsync everysec), noeviction, a
# cluster-node-timeout of 1500 ms so that a failover completes within seconds (and a replica
# may always be promoted: cluster-replica-validity-factor 0). A missing
# redis-server or redis-cli, a port in use, or a cluster that does not reach cluster_state:ok
# fails the fixture, and so every test that needs it: never a silent skip.
set -u
cmd=${1:?usage: redis_cluster.sh start BASE DIR | restart-node DIR I | stop DIR}

fail() {
  if [ -n "${CI:-}" ]; then
    echo "FATAL (CI): $*" >&2
  else
    echo "error: $*" >&2
  fi
  exit 1
}

node_up() {  # node_up PORT PIDFILE: answers PING, and from the PID in PIDFILE
  [ -s "$2" ] || return 1
  [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ] || return 1
  served=$(redis-cli -h 127.0.0.1 -p "$1" info server | tr -d '\r' | sed -n 's/^process_id://p')
  [ "$served" = "$(cat "$2")" ]
}

start_node() {  # start_node DIR I: starts node I from DIR/node-I/redis.conf, waits for PING
  node_dir="$1/node-$2"
  port=$(cat "$node_dir/port")
  redis-server "$node_dir/redis.conf" || fail "redis-server on port $port did not start (see $node_dir/redis.log)"
  i=0
  while [ $i -lt 100 ]; do
    node_up "$port" "$node_dir/redis.pid" && return 0
    i=$((i + 1))
    sleep 0.1
  done
  fail "redis-server on port $port did not answer PING from its own PID within 10 s (see $node_dir/redis.log)"
}

stop_dir() {  # stop_dir DIR: every node's PID
  for pidfile in "$1"/node-*/redis.pid; do
    [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then
      i=0
      while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do
        i=$((i + 1))
        sleep 0.1
      done
      kill -9 "$pid" 2>/dev/null
      echo "redis-server pid $pid stopped"
    fi
    rm -f "$pidfile"
  done
}

case "$cmd" in
start)
  base=${2:?base port}
  dir=${3:?dir}
  command -v redis-server >/dev/null 2>&1 ||
    fail "redis-server is not installed; the Redis Cluster tests need it (apt-get install redis-server)"
  command -v redis-cli >/dev/null 2>&1 ||
    fail "redis-cli is not installed; the Redis Cluster tests need it (apt-get install redis-tools)"
  # Nodes left over by an interrupted run of this build tree are ours: stop them first.
  mkdir -p "$dir"
  stop_dir "$dir"
  nodes=""
  for n in 0 1 2 3 4 5; do
    port=$((base + n))
    if redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 ||
       redis-cli -h 127.0.0.1 -p $((port + 10)) ping >/dev/null 2>&1; then
      fail "port $port is already served by another process; set another IDEM_REDIS_CLUSTER_PORT"
    fi
    node_dir="$dir/node-$n"
    rm -rf "$node_dir"
    mkdir -p "$node_dir"
    echo "$port" >"$node_dir/port"
    cat >"$node_dir/redis.conf" <<EOF
port $port
bind 127.0.0.1
protected-mode yes
daemonize yes
pidfile $node_dir/redis.pid
dir $node_dir
logfile $node_dir/redis.log
cluster-enabled yes
cluster-port $((port + 10))
cluster-config-file $node_dir/nodes.conf
cluster-node-timeout 1500
cluster-replica-validity-factor 0
cluster-announce-ip 127.0.0.1
appendonly yes
appendfsync everysec
save ""
maxmemory-policy noeviction
shutdown-timeout 1
EOF
    start_node "$dir" "$n"
    nodes="$nodes 127.0.0.1:$port"
  done
  # shellcheck disable=SC2086
  redis-cli --cluster create $nodes --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 ||
    fail "redis-cli --cluster create failed (see $dir/create.log)"
  i=0
  while [ $i -lt 300 ]; do
    ok=0
    for n in 0 1 2 3 4 5; do
      state=$(redis-cli -h 127.0.0.1 -p $((base + n)) cluster info 2>/dev/null | tr -d '\r' |
              sed -n 's/^cluster_state://p')
      [ "$state" = ok ] && ok=$((ok + 1))
    done
    # Every replica in sync with its master: a failover test needs a replica to promote.
    synced=0
    for n in 0 1 2 3 4 5; do
      redis-cli -h 127.0.0.1 -p $((base + n)) info replication 2>/dev/null | tr -d '\r' |
        grep -q -e '^role:master' -e '^master_link_status:up' && synced=$((synced + 1))
    done
    if [ $ok -eq 6 ] && [ $synced -eq 6 ] &&
       redis-cli --cluster check 127.0.0.1:"$base" >"$dir/check.log" 2>&1; then
      echo "redis cluster: 3 masters + 3 replicas on 127.0.0.1:$base..$((base + 5)) (dir $dir)"
      exit 0
    fi
    i=$((i + 1))
    sleep 0.1
  done
  fail "the cluster did not reach cluster_state:ok on all 6 nodes within 30 s (see $dir/node-*/redis.log)"
  ;;
restart-node)
  dir=${2:?dir}
  n=${3:?node index}
  [ -f "$dir/node-$n/redis.conf" ] || fail "no node $n in $dir"
  start_node "$dir" "$n"
  echo "node $n restarted, pid $(cat "$dir/node-$n/redis.pid")"
  ;;
stop)
  dir=${2:?dir}
  stop_dir "$dir"
  ;;
*)
  fail "unknown command $cmd"
  ;;
esac
