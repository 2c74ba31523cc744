#!/usr/bin/env bash
# idem's benchmarks in one command: builds them in Release, starts a private redis-server, runs
# raw and idem side by side for every backend, runs the Powertools peer where Node.js is present,
# prints the table (with RATIO / PEER / TARGET lines) and draws the throughput chart.
#
#   bench/run.sh [--quick] [--publish] [--no-peer] [--adapters] [--only=BACKEND,...] [--group]
#
#   --quick     short runs, 1M-row pre-fill only (under two minutes once built)
#               (a full run also pre-fills 10M rows, about 100 s the first time; the files are
#               kept in BUILD_DIR/bench-data and reused)
#   --publish   also copy the table and the chart to bench/results/ (what the README shows)
#   --no-peer   skip the Powertools peer even if node is installed
#   --adapters  only the broker adapters: Redis Streams and Kafka (librdkafka's mock cluster),
#               each against the same consumer loop without idem, idem on SQLite and on Redis
#               (idem_bench_adapters); and RabbitMQ (idem_bench_rabbitmq)
#   --only=memory,sqlite,redis,postgres
#               run only these backends (the peer runs only with redis; no adapters)
#   --group     only the group-commit benchmarks (per-message Process from 1 and 16 threads,
#               grouping off and on, against the raw batch of 100) on SQLite, Redis, PostgreSQL,
#               with repetitions; prints the GROUP and TARGET lines
#
# Environment: BUILD_DIR (default build-bench), JOBS (default 2), IDEM_BENCH_REDIS_PORT
# (default 26479), IDEM_BENCH_REDIS_CLUSTER_PORT (default 26500: a 3-master, 3-replica Redis
# Cluster on it and the 5 ports above, bus ports +10..+15, started by
# backends/redis/tests/redis_cluster.sh and stopped by PID; compared with the single server), IDEM_BENCH_PG_PORT (default 26432), IDEM_BENCH_RABBITMQ_PORT (default 26672; the
# two ports above it too: the broker's Erlang distribution and epmd). PostgreSQL 15 runs as a
# private cluster (backends/postgres/tests/pg_server.sh: initdb in a temporary directory, 127.0.0.1
# only, fsync and synchronous_commit on, the defaults), stopped by its PID on exit. The RabbitMQ
# benchmark runs Debian's rabbitmq-server as a plain process on 127.0.0.1
# (adapters/rabbitmq/tests/rabbitmq_server.sh), stopped by its PID. The redis-server listens on
# 127.0.0.1 only, with appendonly yes and
# appendfsync everysec (Redis's default fsync policy), no RDB snapshots and no automatic AOF
# rewrite (a rewrite forks mid-run and adds noise); it is stopped by its PID on exit.
#
# Profiling one benchmark: IDEM_BENCH_ITERATIONS=N fixes its iteration count, so two callgrind
# runs differ by a known number of messages, e.g.
#   IDEM_BENCH_ITERATIONS=600 valgrind --tool=callgrind \
#     build-bench/bench/idem_bench_sqlite --benchmark_filter=sqlite-normal/lease/
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

quick=0
adapters_only=0
publish=0
peer=1
only=""
group_only=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --publish) publish=1 ;;
    --no-peer) peer=0 ;;
    --adapters) adapters_only=1 ;;
    --only=*) only=${arg#--only=}; only=${only//,/ } ;;
    --group) group_only=1; only="sqlite redis postgres"; peer=0 ;;
    *) sed -n '2,30p' "$0"; exit 2 ;;
  esac
done

if ((publish)) && [ -n "$only" ]; then
  echo "run.sh: --publish needs every backend (bench/results/ holds the whole table)" >&2
  exit 2
fi

build=${BUILD_DIR:-$repo/build-bench}
jobs=${JOBS:-2}
port=${IDEM_BENCH_REDIS_PORT:-26479}
out=$build/bench-results
data=$build/bench-data

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages the run needs; the chart's gnuplot-nox is installed if missing.
missing=()
for tool_pkg in cmake:cmake ninja:ninja-build gnuplot:gnuplot-nox redis-server:redis-server \
                python3:python3 epmd:erlang-base; do
  command -v "${tool_pkg%%:*}" >/dev/null 2>&1 || missing+=("${tool_pkg#*:}")
done
for pkg in libbenchmark-dev libhiredis-dev libsqlite3-dev libabsl-dev libxxhash-dev libpq-dev \
           postgresql librdkafka-dev librabbitmq-dev rabbitmq-server; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "run.sh: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

echo "run.sh: building (Release) in $build"
cmake -S "$repo" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DIDEM_BUILD_BENCHMARKS=ON \
  -DIDEM_BUILD_TESTS=OFF -DIDEM_BUILD_TOOLS=OFF -DIDEM_WITH_SQLITE=ON -DIDEM_WITH_REDIS=ON \
  -DIDEM_WITH_POSTGRES=ON -DIDEM_WITH_KAFKA=ON -DIDEM_WITH_REDIS_STREAMS=ON \
  -DIDEM_WITH_RABBITMQ=ON >/dev/null
if ((adapters_only)); then
  backends=(adapters)
  targets=(idem_bench_adapters idem_bench_rabbitmq)
elif [ -n "$only" ]; then
  read -r -a backends <<<"$only"
  targets=("${backends[@]/#/idem_bench_}")
else
  backends=(memory sqlite redis postgres adapters)
  targets=("${backends[@]/#/idem_bench_}" idem_bench_rabbitmq)
fi
cmake --build "$build" -j"$jobs" --target "${targets[@]}"

rm -rf "$out" "$build/bench-redis"
mkdir -p "$out" "$data" "$build/bench-redis"

# ---- a private redis-server, stopped by PID --------------------------------------------------
redis_pid=
pg_state=$build/bench-pg
stop_redis() {
  if [ -n "$redis_pid" ] && kill -0 "$redis_pid" 2>/dev/null; then
    kill "$redis_pid"
    wait "$redis_pid" 2>/dev/null || true
  fi
  sh backends/postgres/tests/pg_server.sh stop "$pg_state" >/dev/null 2>&1 || true
}
# ---- a private rabbitmq-server, stopped by PID (started after the Redis runs) ---------------
rabbit_port=${IDEM_BENCH_RABBITMQ_PORT:-26672}
rabbit_dir=$build/bench-rabbitmq
rabbit_script=$repo/adapters/rabbitmq/tests/rabbitmq_server.sh
stop_rabbit() {
  if [ -s "$rabbit_dir/server/server.pid" ]; then
    sh "$rabbit_script" stop "$rabbit_dir/server" >/dev/null
  fi
}
# ---- a private Redis Cluster (3 masters, 3 replicas), each node stopped by its PID -------------
cluster_port=${IDEM_BENCH_REDIS_CLUSTER_PORT:-26500}
cluster_dir=$build/bench-redis-cluster
stop_cluster() {
  if [ -d "$cluster_dir" ]; then
    sh backends/redis/tests/redis_cluster.sh stop "$cluster_dir" >/dev/null 2>&1 || true
  fi
}
trap 'stop_redis; stop_rabbit; stop_cluster' EXIT
if redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1; then
  echo "run.sh: something already listens on 127.0.0.1:$port; set IDEM_BENCH_REDIS_PORT" >&2
  exit 1
fi
redis-server --bind 127.0.0.1 --port "$port" --protected-mode yes \
  --dir "$build/bench-redis" --logfile "$build/bench-redis/redis.log" \
  --appendonly yes --appendfsync everysec --save "" --auto-aof-rewrite-percentage 0 \
  --maxmemory-policy noeviction &
redis_pid=$!
for _ in $(seq 50); do
  redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null

# ---- a private PostgreSQL cluster, stopped by PID ----------------------------------------------
pg_port=${IDEM_BENCH_PG_PORT:-26432}
if ! ((adapters_only)); then
  sh backends/postgres/tests/pg_server.sh start "$pg_port" "$pg_state" >/dev/null
  export IDEM_BENCH_PG_URI="postgresql://postgres@127.0.0.1:$pg_port/idem_test"
fi

# ---- the suite ---------------------------------------------------------------------------------
if ((quick)); then
  gbench=(--benchmark_min_time=0.4)
  prefill=1000000
  peer_seconds=1
else
  # Repetitions interleaved at random, reported as medians: slow drift (other load, WAL
  # checkpoints, fsync latency) falls on raw and idem alike.
  gbench=(--benchmark_min_time=1 --benchmark_repetitions=3
          --benchmark_enable_random_interleaving=true --benchmark_report_aggregates_only=true)
  prefill=1000000,10000000
  peer_seconds=3
fi
# PostgreSQL commits wait for a WAL flush (a few ms, drifting several-fold on a shared disk), so a
# one-second unit holds only a few hundred messages per side: longer units and more repetitions
# keep its medians from following single flush stalls.
if ((quick)); then
  pg_gbench=("${gbench[@]}")
else
  pg_gbench=(--benchmark_min_time=3 --benchmark_repetitions=5
             --benchmark_enable_random_interleaving=true --benchmark_report_aggregates_only=true)
fi
export IDEM_BENCH_DIR=$data IDEM_BENCH_PREFILL=$prefill IDEM_BENCH_REDIS_PORT=$port
for backend in "${backends[@]}"; do
  echo "run.sh: idem_bench_$backend"
  flags=("${gbench[@]}")
  [ "$backend" = postgres ] && flags=("${pg_gbench[@]}")
  if ((group_only)); then
    # Each group benchmark sets its own minimum time (its units are long); three repetitions,
    # interleaved, reported as medians.
    flags=(--benchmark_filter=/group --benchmark_repetitions=3
           --benchmark_enable_random_interleaving=true --benchmark_report_aggregates_only=true)
  fi
  "$build/bench/idem_bench_$backend" "${flags[@]}" \
    --benchmark_out="$out/$backend.json" --benchmark_out_format=json
done

# ---- Redis Cluster: idem on the cluster against idem on the single server, at the same load ------
case "$group_only ${backends[*]} " in
  "0 "*" redis "*)  # not with --group
    echo "run.sh: idem_bench_redis_cluster (6 nodes on 127.0.0.1:$cluster_port..$((cluster_port + 5)))"
    cmake --build "$build" -j"$jobs" --target idem_bench_redis_cluster
    sh backends/redis/tests/redis_cluster.sh start "$cluster_port" "$cluster_dir" >/dev/null
    IDEM_BENCH_REDIS_CLUSTER_PORT=$cluster_port "$build/bench/idem_bench_redis_cluster" \
      "${gbench[@]}" --benchmark_out="$out/redis-cluster.json" --benchmark_out_format=json \
      >"$out/redis-cluster.txt"
    stop_cluster
    ;;
esac

# ---- the peer: Powertools for AWS Lambda (TypeScript) idempotency on the same Redis ----------
# Round-trip latency on an idle VM drifts (vCPU wake-ups), so the peer and idem's comparable
# benchmarks (redis lease and batch 100) run in alternating rounds; the report takes medians.
case " ${backends[*]} " in *" redis "*) ;; *) peer=0 ;; esac
if ((adapters_only)); then
  :  # the peer is measured beside idem's Redis benchmarks, which an adapters-only run skips
elif ((peer)) && command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  echo "run.sh: peer (Powertools idempotency, Node.js $(node --version)), 3 rounds beside idem"
  (cd bench/peer && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  for round in 1 2 3; do
    node bench/peer/powertools_bench.mjs --port "$port" --seconds "$peer_seconds" \
      >"$out/peer-$round.jsonl"
    "$build/bench/idem_bench_redis" --benchmark_filter='redis/(lease|batch100)/pair' \
      --benchmark_min_time="$peer_seconds" --benchmark_out="$out/peer-idem-$round.json" \
      --benchmark_out_format=json >/dev/null
  done
elif ((peer)); then
  echo "run.sh: node not found; the peer is skipped"
fi

# ---- RabbitMQ: messages/s through the adapter, without and with idem, on a private broker ---
if [ -z "$only" ]; then
  rm -rf "$rabbit_dir" && mkdir -p "$rabbit_dir"
  # The fixture's readiness probe is the benchmark binary itself (an AMQP login).
  printf '#!/bin/sh\nexec "%s" --probe "$1"\n' "$build/bench/idem_bench_rabbitmq" >"$rabbit_dir/probe"
  chmod +x "$rabbit_dir/probe"
  echo "run.sh: idem_bench_rabbitmq (rabbitmq-server on 127.0.0.1:$rabbit_port)"
  sh "$rabbit_script" start "$rabbit_port" "$rabbit_dir/server" "$rabbit_dir/probe"
  rabbit_messages=$( ((quick)) && echo 5000 || echo 20000)
  "$build/bench/idem_bench_rabbitmq" "$rabbit_port" "$rabbit_messages" 3 "$data" >"$out/rabbitmq.txt"
  sh "$rabbit_script" stop "$rabbit_dir/server" >/dev/null
fi

# ---- the table, the chart --------------------------------------------------------------------
mode=$( ((quick)) && echo quick || echo full)
pg_version=$("$(cat "$pg_state/bindir")/postgres" --version 2>/dev/null | awk '{print $3}' || true)
python3 bench/report.py "$out" --mode "$mode" --redis-version "$(redis-server --version)" \
  --postgres-version "$pg_version" --command "bench/run.sh${*:+ $*}"
# report.py reads the Google Benchmark JSON; the RabbitMQ program prints its RATIO lines itself.
[ -z "$only" ] && cat "$out/rabbitmq.txt"
[ -f "$out/redis-cluster.txt" ] && grep '^SPREAD' "$out/redis-cluster.txt"
if ((publish)); then
  mkdir -p bench/results
  cp "$out/results.md" "$out/throughput.png" bench/results/
  echo "run.sh: published to bench/results/"
fi
