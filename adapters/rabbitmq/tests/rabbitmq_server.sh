#!/bin/sh
# CTest fixture for the RabbitMQ tests: runs Debian's rabbitmq-server as a plain process (no
# systemd), bound to 127.0.0.1, with its own node name, Erlang cookie, epmd, data and log
# directories under DIR, and stops it by PID (never by name).
#
#   rabbitmq_server.sh start PORT DIR PROBE   fresh data; wait until PROBE (an AMQP login) works
#   rabbitmq_server.sh restart DIR            stop, then start again on the same data (durable
#                                             queues and persistent messages survive)
#   rabbitmq_server.sh stop DIR               SIGTERM the server, SIGKILL if it lingers; stop epmd
#
# Ports: AMQP on PORT, Erlang distribution on PORT+1, epmd on PORT+2, all on 127.0.0.1 (epmd also
# answers on ::1, its loopback default). Plugins (management included) are off: an empty enabled
# plugins file. RabbitMQ runs as whoever runs the tests (root included: 3.10 does not refuse it);
# HOME is DIR/home so its .erlang.cookie is private to this server.
#
# A missing rabbitmq-server fails the fixture, and so every RabbitMQ test: never a silent skip.
set -u
cmd=${1:?usage: rabbitmq_server.sh start PORT DIR PROBE | restart DIR | stop DIR}
server=/usr/lib/rabbitmq/bin/rabbitmq-server

fail() {
  if [ -n "${CI:-}" ]; then
    echo "FATAL (CI): $*" >&2
  else
    echo "error: $*" >&2
  fi
  exit 1
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# rabbit_env DIR PORT: the environment of this server (and of nothing else).
rabbit_env() {
  export HOME="$1/home"
  export RABBITMQ_NODENAME="idem-test-$2@localhost"
  export RABBITMQ_USE_LONGNAME=false
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT="$2"
  export RABBITMQ_DIST_PORT=$(($2 + 1))
  export ERL_EPMD_ADDRESS=127.0.0.1
  export ERL_EPMD_PORT=$(($2 + 2))
  export RABBITMQ_MNESIA_BASE="$1/mnesia"
  export RABBITMQ_LOG_BASE="$1/log"
  export RABBITMQ_PID_FILE="$1/beam.pid"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$1/enabled_plugins"
  export RABBITMQ_CONFIG_FILE="$1/rabbitmq"          # absent: defaults
  export RABBITMQ_ADVANCED_CONFIG_FILE="$1/advanced.config"
  export RABBITMQ_CONF_ENV_FILE="$1/rabbitmq-env.conf"  # absent: not /etc/rabbitmq's
  # The distribution listener on loopback too (Erlang binds every interface by default).
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

do_start() {
  port=$1
  dir=$2
  probe=$3
  rabbit_env "$dir" "$port"
  if "$probe" "$port" >/dev/null 2>&1; then
    fail "port $port already answers AMQP (another broker); set another IDEM_RABBITMQ_TEST_PORT"
  fi
  : >"$dir/server.out"
  # epmd of our own on our port, in the foreground of a detached session (so that its PID is
  # the one we stop); rabbitmq-server finds it there instead of starting a daemon.
  setsid epmd -address 127.0.0.1 -port "$ERL_EPMD_PORT" </dev/null >>"$dir/epmd.out" 2>&1 &
  echo $! >"$dir/epmd.pid"
  sleep 0.2
  alive "$dir/epmd.pid" || fail "epmd did not start on 127.0.0.1:$ERL_EPMD_PORT (see $dir/epmd.out)"
  # The wrapper script stays in front of the VM and stops it on SIGTERM; its PID is ours.
  setsid "$server" </dev/null >>"$dir/server.out" 2>&1 &
  echo $! >"$dir/server.pid"
  i=0
  while [ $i -lt 300 ]; do
    if "$probe" "$port" >/dev/null 2>&1; then
      alive "$dir/beam.pid" ||
        fail "port $port answered, but not by our server (no live $dir/beam.pid)"
      echo "rabbitmq-server pid $(cat "$dir/server.pid") (vm $(cat "$dir/beam.pid")) on 127.0.0.1:$port (dir $dir)"
      return 0
    fi
    if ! alive "$dir/server.pid"; then
      tail -n 30 "$dir/server.out" >&2
      fail "rabbitmq-server exited during startup (see $dir/server.out and $dir/log)"
    fi
    i=$((i + 1))
    sleep 0.2
  done
  tail -n 30 "$dir/server.out" >&2
  fail "rabbitmq-server on port $port did not accept an AMQP login within 60 s (see $dir/log)"
}

do_stop() {
  dir=$1
  if alive "$dir/server.pid"; then
    pid=$(cat "$dir/server.pid")
    kill "$pid" 2>/dev/null
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 200 ]; do
      i=$((i + 1))
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null
    echo "rabbitmq-server pid $pid stopped"
  fi
  # The VM itself, should the wrapper have died without stopping it.
  if alive "$dir/beam.pid"; then
    kill -9 "$(cat "$dir/beam.pid")" 2>/dev/null
    echo "rabbitmq vm pid $(cat "$dir/beam.pid") killed"
  fi
  if alive "$dir/epmd.pid"; then
    kill "$(cat "$dir/epmd.pid")" 2>/dev/null
  fi
  rm -f "$dir/server.pid" "$dir/beam.pid" "$dir/epmd.pid"
}

case "$cmd" in
start)
  port=${2:?port}
  dir=${3:?dir}
  probe=${4:?probe}
  [ -x "$server" ] ||
    fail "rabbitmq-server is not installed; the RabbitMQ tests need it (apt-get install rabbitmq-server)"
  command -v epmd >/dev/null 2>&1 || fail "epmd (erlang-base) is not installed"
  [ -x "$probe" ] || fail "probe $probe is not built"
  mkdir -p "$dir/home" "$dir/log"
  # A server left over by an interrupted run of this build tree is ours: stop it first.
  do_stop "$dir" >/dev/null
  rm -rf "$dir/mnesia"
  : >"$dir/enabled_plugins"
  if [ ! -s "$dir/home/.erlang.cookie" ]; then
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$dir/home/.erlang.cookie"
    chmod 400 "$dir/home/.erlang.cookie"
  fi
  printf '%s %s\n' "$port" "$probe" >"$dir/fixture"
  do_start "$port" "$dir" "$probe"
  ;;
restart)
  dir=${2:?dir}
  [ -s "$dir/fixture" ] || fail "no fixture in $dir: start it first"
  read -r port probe <"$dir/fixture"
  do_stop "$dir"
  do_start "$port" "$dir" "$probe"
  ;;
stop)
  dir=${2:?dir}
  do_stop "$dir"
  ;;
*)
  fail "unknown command $cmd"
  ;;
esac
