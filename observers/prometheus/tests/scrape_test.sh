#!/usr/bin/env bash
# Starts idem_metrics_server, scrapes /metrics over HTTP with curl, and checks each metric against
# what the program says it sent (tallied from the Processor's results, not from the metrics).
set -euo pipefail
server=$1 work=$2
rm -rf "$work" && mkdir -p "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }

mkfifo "$work/stdin"
"$server" 0 <"$work/stdin" >"$work/out" 2>"$work/err" &
pid=$!
exec 3>"$work/stdin"  # the server serves until this closes
cleanup() { exec 3>&-; kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 100); do grep -q '^listening ' "$work/out" && break; sleep 0.1; done
port=$(sed -n 's/^listening 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$work/out")
[ -n "$port" ] || fail "no port: $(cat "$work/out" "$work/err")"
curl -fsS "http://127.0.0.1:$port/metrics" >"$work/metrics" || fail "scrape failed"

sent() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" "$work/out" | head -1; }
# The value of one series, exactly as named with its labels (0 when absent).
metric() {
  awk -v name="$1" '$1 == name { v = $2 } END { if (v == "") v = 0; printf "%d\n", v }' \
    "$work/metrics"
}
scope='scope="demo/orders"'
for outcome in processed duplicate conflict stale in_progress dead_lettered; do
  want=$(sent "$outcome")
  [ -n "$want" ] && [ "$want" -gt 0 ] || fail "the server sent no $outcome: $(cat "$work/out")"
  got=$(metric "idem_messages_total{outcome=\"$outcome\",$scope}")
  [ "$got" = "$want" ] || fail "idem_messages_total $outcome: scraped $got, sent $want"
done
[ "$(metric "idem_store_errors_total{code=\"RESOURCE_EXHAUSTED\",$scope}")" = "$(sent RESOURCE_EXHAUSTED)" ] ||
  fail "store errors: $(grep store_errors "$work/metrics")"
[ "$(metric "idem_fenced_completions_total{$scope}")" = "$(sent ABORTED)" ] || fail "fenced"
[ "$(metric "idem_handler_exceptions_total{$scope}")" = "$(sent handler_exception)" ] ||
  fail "handler exceptions"
[ "$(metric "idem_takeovers_total{$scope}")" = 1 ] || fail "takeovers"
[ "$(metric "idem_in_progress{$scope}")" = "$(sent in_progress_records)" ] || fail "in progress gauge"
# Every message's store time is observed once; the handler's once per run.
total=$(( $(sed -n 's/^sent //p' "$work/out" | tr ' ' '\n' |
            grep -v -e handler_exception -e in_progress_records | cut -d= -f2 | paste -sd+) ))
total=$((total + $(sent handler_exception)))
[ "$(metric "idem_store_duration_seconds_count{$scope}")" = "$total" ] ||
  fail "store histogram count: $(metric "idem_store_duration_seconds_count{$scope}") != $total"
runs=$(( $(sent processed) + $(sent ABORTED) + $(sent handler_exception) ))
[ "$(metric "idem_handler_duration_seconds_count{$scope}")" = "$runs" ] || fail "handler histogram count"
grep -q '^# TYPE idem_handler_duration_seconds histogram$' "$work/metrics" || fail "histogram type"
grep -q "^idem_handler_duration_seconds_bucket{$scope,le=\"+Inf\"} $runs\$" "$work/metrics" ||
  fail "+Inf bucket: $(grep handler_duration_seconds_bucket "$work/metrics" | tail -2)"
echo "prometheus scrape: all checks passed"
